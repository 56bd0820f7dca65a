"""The ``edgecloud`` command line. The roof of the package: every part is imported lazily."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Column, Table

from edgecloud.split.cli import app as split_app  # typer and rich only: torch is imported in the commands

app = typer.Typer(help="edgecloud: distributed edge-cloud collaborative inference.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
models_app = typer.Typer(help="Pull and list models of the model zoo.", no_args_is_help=True)
app.add_typer(models_app, name="models")
reward_app = typer.Typer(help="Collect data for and train the learned reward head (the router's score).",
                         no_args_is_help=True)
app.add_typer(reward_app, name="reward")
app.add_typer(split_app, name="split")
certs_app = typer.Typer(help="Certificates for TLS and mutual TLS between the daemons.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")

err = Console(stderr=True)
DEMO_PROMPT = "Write a Python function that returns the n-th Fibonacci number iteratively."
# Defaults that show routing on DEMO_PROMPT: with the real 0.5B SLM, entropy at a 10% target share flagged
# 0 of 128 tokens (no cloud call at all); max-prob at 20% flags 8.
DEMO_POLICY = "max-prob"
DEMO_CLOUD_SHARE = 0.2



def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code=2)


@models_app.command("list")
def models_list() -> None:
    """List the zoo's models and whether each is pulled."""
    from edgecloud.models import zoo

    console = Console()
    rows = [(spec.name, spec.params, spec.source, "yes" if zoo.is_pulled(spec.name) else "no", spec.description)
            for spec in zoo.known_models()]
    if console.is_terminal and console.width >= 120:
        table = Table(Column("name", no_wrap=True), "parameters", "source", "pulled", "description")
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    # Narrow or piped: one line per model, never cut (names are what users type), details below it.
    for name, params, source, pulled, description in rows:
        console.print(f"{name}  {params}, {source}, pulled: {pulled}", soft_wrap=True, highlight=False)
        console.print(f"    {description}", soft_wrap=True, highlight=False)


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
def shard(
    model: Annotated[str, typer.Argument(help="zoo name or HF model folder")],
    ways: Annotated[int, typer.Option(min=1, help="devices in the tensor-parallel group")],
    out: Annotated[Path, typer.Option(help="folder for plan.json, config.json and rank-<r>.safetensors")],
    weights: Annotated[str | None, typer.Option(help="each device's share, e.g. 2,1,1 (default: even)")] = None,
) -> None:
    """Split a model for tensor parallelism: each device then reads only its own file."""
    from edgecloud.models.loader import resolve_source
    from edgecloud.models.sharded import write_shards

    try:
        shares = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise _fail(f"--weights takes one number per device, separated by commas (e.g. 2,1,1), not {weights[:80]!r}") from None
    try:
        plan = write_shards(resolve_source(model), out, ways, shares)
    except (ValueError, FileNotFoundError) as exc:
        raise _fail(str(exc)) from exc
    for s in plan.shards:
        err.print(f"rank {s.rank}: query heads {s.heads[0]}-{s.heads[1] - 1 if s.num_heads else '-'} "
                  f"({s.num_heads}), KV heads {s.num_kv_heads}, MLP columns {s.mlp[1] - s.mlp[0]}")
    if plan.replicated_kv_heads:
        err.print(f"{plan.replicated_kv_heads} KV head(s) per layer computed on two devices "
                  "(a KV group split between them)")
    err.print(f"[green]written:[/] {out}")


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

    from edgecloud.models.dtypes import parse_dtype
    from edgecloud.models.generate import SamplingParams, generate_ids
    from edgecloud.models.loader import load_model, resolve_source
    from edgecloud.models.tokenizer import Tokenizer

    if not prompt.strip():
        raise _fail("the prompt is empty")
    try:
        sampling = SamplingParams(temperature=temperature, top_p=top_p or 1.0, seed=seed)
        folder = resolve_source(model)
        started = time.perf_counter()
        llm = load_model(folder, dtype=parse_dtype(dtype))
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


@app.command()
def status(
    coordinator: Annotated[str, typer.Option(help="coordinator host:port")] = "127.0.0.1:50051",
    stale: Annotated[bool, typer.Option(help="list nodes that stopped reporting too")] = False,
    details: Annotated[bool, typer.Option(help="ask each live edge node for the clouds it considers down "
                                               "and its split plan")] = True,
    tls_ca: Annotated[Path | None, typer.Option(help="CA bundle (PEM): connect with TLS")] = None,
    tls_client_cert: Annotated[Path | None, typer.Option(help="mutual TLS: client certificate (PEM)")] = None,
    tls_client_key: Annotated[Path | None, typer.Option(help="mutual TLS: its private key (PEM)")] = None,
    auth_token: Annotated[str | None, typer.Option(envvar="EDGECLOUD_AUTH_TOKEN", help="client token")] = None,
) -> None:
    """The cluster's nodes as the coordinator sees them, and what each edge node reports of itself."""
    from rich.markup import escape

    from edgecloud.client import Client, EdgecloudError
    from edgecloud.rpc import SecurityConfig

    try:
        paths = [str(p) if p else None for p in (tls_ca, tls_client_cert, tls_client_key)]
        security = SecurityConfig(tls_ca_path=paths[0], tls_client_cert_path=paths[1], tls_client_key_path=paths[2],
                                  auth_token=auth_token)
        with Client(coordinator, security=security, timeout_s=30, target="coordinator") as client:
            nodes = client.status(include_stale=stale)
    except (EdgecloudError, ValueError, OSError) as exc:
        raise _fail(f"coordinator {coordinator}: {exc}") from exc
    table = Table("node", "role", "state", "address", "models", "requests", title=f"cluster at {coordinator}")
    for node in nodes:
        state = "suspect" if node.suspect else ("live" if node.live else "stale")
        table.add_row(*(escape(cell) for cell in (node.node_id, node.role, state, node.address, ", ".join(node.models),
                                                  str(node.active_requests))))
    console = Console()
    console.print(table)
    if not nodes:
        console.print("no nodes registered")
    for node in nodes if details else ():
        if node.role != "edge" or not node.live:
            continue
        try:
            with Client(node.address, security=security, timeout_s=10, target="edge") as edge:
                own = edge.edge_status()
        except (EdgecloudError, ValueError, OSError) as exc:
            console.print(f"{node.node_id}: no status ({exc})", markup=False, highlight=False)
            continue
        down = ", ".join(own.clouds_down) or "none"
        line = f"{node.node_id}: clouds down: {down}"
        if own.split_plan:
            line += f"; split plan: {own.split_plan}"
        console.print(line, markup=False, highlight=False)


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
    policy: Annotated[str, typer.Option(help="routing policy of the hybrid run")] = DEMO_POLICY,
    target_cloud_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = DEMO_CLOUD_SHARE,
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


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@reward_app.command("collect")
def reward_collect(
    out: Annotated[Path, typer.Option(help="data directory (shards + manifest.json); a re-run resumes")],
    slm: Annotated[str, typer.Option(help="edge model")] = "qwen2.5-coder-0.5b-instruct",
    llm: Annotated[str, typer.Option(help="cloud model (same tokenizer)")] = "qwen2.5-coder-1.5b-instruct",
    splits: Annotated[str, typer.Option(help="comma-separated: train, calibration, held-out")] =
        "train,calibration,held-out",
    source: Annotated[str, typer.Option(help="teacher-forced | generated | both")] = "both",
    max_files: Annotated[int, typer.Option(min=0, help="teacher-forced: files per split")] = 50,
    max_windows_per_file: Annotated[int, typer.Option(min=1, help="teacher-forced: windows per file")] = 4,
    window_tokens: Annotated[int, typer.Option(min=2, help="teacher-forced: tokens per window")] = 512,
    tasks: Annotated[int, typer.Option(min=0, help="generated: code-completion tasks per split")] = 64,
    tasks_per_file: Annotated[int, typer.Option(min=1, help="generated: functions per file at most")] = 4,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="generated: answer tokens at most")] = 128,
    sequences_per_shard: Annotated[int, typer.Option(min=1, help="sequences per shard file")] = 16,
    dtype: Annotated[str, typer.Option(help="bf16 | fp32")] = "bf16",
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = torch's default); 1 is far faster "
                                                     "when other jobs share the cores")] = 0,
) -> None:
    """Record per-token SLM features and LLM agreement on standard-library code, into shards."""
    import torch

    from edgecloud.evaluation.reward_data import (
        SOURCES,
        CollectConfig,
        RewardDataError,
        collect,
        read_manifest,
    )
    from edgecloud.models.dtypes import parse_dtype
    from edgecloud.models.loader import load_model, model_display_name, resolve_source
    from edgecloud.models.tokenizer import Tokenizer

    if source not in (*SOURCES, "both"):
        raise _fail(f"unknown source {source!r}; choose teacher-forced, generated or both")
    if threads:
        torch.set_num_threads(threads)
    try:
        config = CollectConfig(
            slm=model_display_name(slm), llm=model_display_name(llm), splits=_csv(splits),
            sources=SOURCES if source == "both" else (source,), max_files=max_files,
            max_windows_per_file=max_windows_per_file, window_tokens=window_tokens, tasks=tasks,
            tasks_per_file=tasks_per_file, max_new_tokens=max_new_tokens, sequences_per_shard=sequences_per_shard,
            dtype=dtype)
        read_manifest(out, config)  # refuse another model pair or other settings before loading anything
        slm_folder, llm_folder = resolve_source(slm), resolve_source(llm)
        tokenizer = Tokenizer.from_folder(slm_folder)
        if (llm_folder / "tokenizer.json").is_file() and (
                (llm_folder / "tokenizer.json").read_bytes() != (slm_folder / "tokenizer.json").read_bytes()):
            raise RewardDataError(f"{slm} and {llm} have different tokenizers: agreement needs one")
        started = time.perf_counter()
        models = [load_model(folder, dtype=parse_dtype(dtype)) for folder in (slm_folder, llm_folder)]
    except Exception as exc:  # report any input or load problem as one clear line
        raise _fail(str(exc)) from exc
    err.print(f"[dim]loaded {slm_folder.name} and {llm_folder.name} in {time.perf_counter() - started:.1f} s[/]")
    try:
        stats = collect(*models, tokenizer, config, out)
    except RewardDataError as exc:
        raise _fail(str(exc)) from exc
    if not any(s.items for s in stats.by_source.values()):
        err.print(f"[green]nothing to do:[/] all {stats.skipped_items} items are already in {out}")
        return
    table = Table("source", "items", "recorded", "forwarded", "generated", "gen/SLM/LLM s", "recorded tok/s",
                  title=f"{out}: {stats.shards_written} shards written, {stats.skipped_items} items already done")
    for name, s in stats.by_source.items():
        if s.items:
            table.add_row(name, str(s.items), str(s.positions), str(s.sequence_tokens), str(s.generated_tokens),
                          f"{s.generate_s:.0f}/{s.slm_s:.0f}/{s.llm_s:.0f}", f"{s.positions / max(s.seconds, 1e-9):.1f}")
    Console(stderr=True).print(table)


@reward_app.command("train")
def reward_train(
    data: Annotated[Path, typer.Option(help="data directory written by `edgecloud reward collect`")],
    out: Annotated[Path, typer.Option(help="the head to write (.safetensors)")],
    features: Annotated[str, typer.Option(help="comma-separated: hidden, entropy, max_prob, margin, "
                                               "log_position")] = "hidden,entropy,max_prob,margin,log_position",
    hidden_units: Annotated[int, typer.Option(min=0, help="0 = linear head, else a 2-layer MLP this wide")] = 0,
    train_sources: Annotated[str, typer.Option(help="sources to fit on: teacher-forced, generated (comma-separated)")]
        = "teacher-forced,generated",
    report: Annotated[Path | None, typer.Option(help="JSON report (default: next to the head)")] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="epochs at most (early stopping on calibration)")] = 40,
    learning_rate: Annotated[float, typer.Option(min=0.0)] = 1e-3,
    weight_decay: Annotated[float, typer.Option(min=0.0)] = 0.05,
    balance: Annotated[bool, typer.Option(help="weigh both classes equally (bias corrected after)")] = True,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Fit the reward head on the train split; report held-out AUROC of predicting disagreement."""
    from edgecloud.evaluation.reward_data import RewardDataError
    from edgecloud.evaluation.reward_train import TrainConfig, train_and_report
    from edgecloud.routing.reward import RewardHeadError

    if not data.is_dir():
        raise _fail(f"data directory {data} not found")
    report = report or out.with_suffix(".report.json")
    try:
        config = TrainConfig(features=_csv(features), hidden_units=hidden_units, train_sources=_csv(train_sources),
                             max_epochs=max_epochs, learning_rate=learning_rate, weight_decay=weight_decay,
                             balance_classes=balance, seed=seed)
        result = train_and_report(data, out, report, config)
    except (RewardDataError, RewardHeadError) as exc:
        raise _fail(str(exc)) from exc
    table = Table("split", "source", "tokens", "disagree rate", "head", "entropy", "1-max_prob", "1-margin",
                  title="AUROC of predicting disagreement")
    for split, summary in result["splits"].items():
        if summary is None:
            continue
        for name, part in [("all", summary), *summary["by_source"].items()]:
            au = part["auroc_disagreement"]
            table.add_row(split, name, str(part["tokens"]), f"{part['disagree_rate']}",
                          *(f"{au[k]}" for k in ("head", "entropy", "1-max_prob", "1-margin")))
    Console(stderr=True).print(table)
    err.print(f"[green]head:[/] {out} ({result['head_bytes']} bytes, {result['epochs']} epochs, best "
              f"{result['best_epoch']}, {result['train_seconds']} s); report: {report}")


@certs_app.command("dev")
def certs_dev(
    out: Annotated[Path, typer.Option(help="folder to write the PEM files to")] = Path("edgecloud-certs"),
    hosts: Annotated[str, typer.Option(help="comma-separated host names and IP addresses the node "
                                            "certificate is valid for (its SANs)")] = "localhost,127.0.0.1,::1",
) -> None:
    """A development CA, node and client certificates (ECDSA P-256, PEM, keys 0600) for trying TLS out."""
    from edgecloud.certs import usage, write_dev_certificates

    try:
        paths = write_dev_certificates(out, hosts.split(","))
    except (RuntimeError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    print(usage(paths))


@certs_app.command("tp-keys")
def certs_tp_keys(
    out: Annotated[Path, typer.Option(help="folder to write the key files to")] = Path("edgecloud-tp-keys"),
) -> None:
    """ZeroMQ CURVE keys of a tensor-parallel group: the master's pair and the members' pair (secrets 0600)."""
    from edgecloud.kernels.curve import write_group_keys

    try:
        written = write_group_keys(out)
    except OSError as exc:
        raise _fail(str(exc)) from exc
    print("\n".join(str(p) for p in written))
    print(f"the master needs {out}/master.key_secret and {out}/member.key; every worker needs "
          f"{out}/master.key and {out}/member.key_secret (pass --curve-keys FOLDER)")


@app.command(**PASS_THROUGH)
def netem(ctx: typer.Context) -> None:
    """Network emulation: shaping TCP proxies with a control API (`edgecloud netem --help`)."""
    from edgecloud.simulator.cli import app as netem_app

    netem_app(ctx.args, prog_name="edgecloud netem")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
