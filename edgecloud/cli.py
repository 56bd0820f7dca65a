"""The ``edgecloud`` command line. The roof of the package: every part is imported lazily."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from edgecloud.simulator.cli import app as netem_app

app = typer.Typer(help="edgecloud: distributed edge-cloud collaborative inference.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
models_app = typer.Typer(help="Pull and list models of the model zoo.", no_args_is_help=True)
app.add_typer(models_app, name="models")

err = Console(stderr=True)
DEMO_PROMPT = "Write a Python function that returns the n-th Fibonacci number iteratively."

DTYPES = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@models_app.command("list")
def models_list() -> None:
    """List the zoo's models and whether each is pulled."""
    from edgecloud.models import zoo

    table = Table("name", "parameters", "source", "pulled", "description")
    for spec in zoo.known_models():
        table.add_row(spec.name, spec.params, spec.source, "yes" if zoo.is_pulled(spec.name) else "no",
                      spec.description)
    Console().print(table)


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="zoo name, e.g. qwen2.5-coder-0.5b-instruct")]) -> None:
    """Download, verify (sha256) and convert a model once into the cache (EDGECLOUD_HOME)."""
    from edgecloud.models import zoo

    try:
        path = zoo.pull(name, progress=True)
    except (zoo.UnknownModelError, zoo.ModelIntegrityError) as exc:
        raise _fail(str(exc)) from exc
    err.print(f"[green]ready:[/] {path}")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="the prompt (a user message for chat models)")],
    model: Annotated[str, typer.Option(help="zoo name, HF folder or .gguf file")] = "qwen2.5-coder-0.5b-instruct",
    max_tokens: Annotated[int, typer.Option(min=1, help="new tokens at most")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    seed: Annotated[int | None, typer.Option(help="seed for sampling")] = None,
    raw: Annotated[bool, typer.Option(help="continue the prompt as raw text, no chat template")] = False,
    system: Annotated[str | None, typer.Option(help="system message for chat models")] = None,
    dtype: Annotated[str, typer.Option(help="bf16 | fp32 | fp16")] = "bf16",
) -> None:
    """Generate locally with one model, streaming the text, then print tokens/s."""
    import torch

    from edgecloud.models.generate import SamplingParams, generate_ids
    from edgecloud.models.loader import load_model, resolve_source
    from edgecloud.models.tokenizer import Tokenizer

    if dtype not in DTYPES:
        raise _fail(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not prompt.strip():
        raise _fail("the prompt is empty")
    try:
        sampling = SamplingParams(temperature=temperature, top_p=top_p or 1.0, seed=seed)
        folder = resolve_source(model)
        started = time.perf_counter()
        llm = load_model(folder, dtype=getattr(torch, DTYPES[dtype]))
        tokenizer = Tokenizer.from_folder(folder)
    except Exception as exc:  # report any load problem as one clear line
        raise _fail(str(exc)) from exc
    err.print(f"[dim]loaded {folder.name} in {time.perf_counter() - started:.1f} s[/]")
    ids = tokenizer.prompt_ids(prompt, chat=not raw, system=system)
    decoder = tokenizer.stream_decoder()
    count, started, first_at = 0, time.perf_counter(), None
    for token in generate_ids(llm, ids, max_new_tokens=max_tokens, sampling=sampling,
                              stop_ids=tokenizer.eos_token_ids):
        first_at = first_at or time.perf_counter()
        count += 1
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    ended = time.perf_counter()
    sys.stdout.write("\n")
    if count:
        decode_rate = (count - 1) / (ended - first_at) if count > 1 else float("nan")
        err.print(f"[bold]{count} tokens[/] in {ended - started:.2f} s: prefill {len(ids)} tokens "
                  f"in {first_at - started:.2f} s, decode {decode_rate:.2f} tokens/s")


PASS_THROUGH = {"context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
                "add_help_option": False}


@app.command(**PASS_THROUGH)
def cloud(ctx: typer.Context) -> None:
    """Run a cloud node (the LLM): `edgecloud cloud --model NAME --listen HOST:PORT` (--help for all)."""
    from edgecloud.cloud_node.__main__ import main as run

    run(ctx.args)


@app.command(**PASS_THROUGH)
def edge(ctx: typer.Context) -> None:
    """Run an edge node (the SLM and router): `edgecloud edge --model NAME --coordinator ADDR` (--help)."""
    from edgecloud.edge_node.__main__ import main as run

    run(ctx.args)


@app.command(**PASS_THROUGH)
def coordinator(ctx: typer.Context) -> None:
    """Run the coordinator: `edgecloud coordinator --listen HOST:PORT` (--help for all)."""
    from edgecloud.coordinator.__main__ import main as run

    run(ctx.args)


@app.command()
def demo(
    prompt: Annotated[str, typer.Option(help="the coding prompt")] = DEMO_PROMPT,
    max_tokens: Annotated[int, typer.Option(min=1, max=1024)] = 128,
    policy: Annotated[str, typer.Option(help="routing policy of the hybrid run")] = "entropy",
    target_cloud_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.1,
    slm: Annotated[str, typer.Option(help="edge model")] = "qwen2.5-coder-0.5b-instruct",
    llm: Annotated[str, typer.Option(help="cloud model")] = "qwen2.5-coder-1.5b-instruct",
    compare: Annotated[bool, typer.Option(help="also run SLM-only and LLM-only for the table")] = True,
) -> None:
    """Start coordinator, cloud and edge on this machine and run one prompt with hybrid routing."""
    from edgecloud.demo import run_demo

    try:
        run_demo(prompt=prompt, max_tokens=max_tokens, policy=policy, target_cloud_share=target_cloud_share,
                 slm=slm, llm=llm, compare=compare)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted; daemons stopped[/]")
        raise typer.Exit(code=130) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def simulate(
    ctx: typer.Context,
    experiment: Annotated[Path, typer.Argument(help="experiment .toml (see simulator/experiments/)")],
    des: Annotated[bool, typer.Option("--des", help="fleet mode: discrete-event simulation (further options: "
                                                     "--devices N --requests M --json OUT, see --des --help)")] = False,
    out: Annotated[Path | None, typer.Option(help="output folder (default runs/<experiment>-<time>)")] = None,
    model: Annotated[list[str] | None, typer.Option(help="NODE_OR_MODEL=SOURCE model override (repeatable)")] = None,
    dtype: Annotated[str, typer.Option(help="dtype of every node: bf16 | fp32")] = "bf16",
) -> None:
    """Run an experiment: real daemons wired through shaping proxies (or, with --des, a fleet simulation)."""
    if des:
        from edgecloud.simulator.des.__main__ import main as des_main

        raise typer.Exit(code=des_main([str(experiment), *ctx.args]) or 0)
    if ctx.args:
        raise _fail(f"unexpected arguments {' '.join(ctx.args)} (they are for --des)")
    from edgecloud.simulator.errors import ConfigError
    from edgecloud.simulator.experiment import load_experiment
    from edgecloud.simulator.runner import default_out_dir, parse_model_overrides, run_experiment

    try:
        loaded = load_experiment(experiment)
        overrides = parse_model_overrides(model or [])
    except (ConfigError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    summary = run_experiment(loaded, out_dir=out or default_out_dir(loaded), models_override=overrides, dtype=dtype)
    err.print(f"[green]summary:[/] {summary}")


app.add_typer(netem_app, name="netem")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
