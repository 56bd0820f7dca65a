"""Record DES traces from the real model pair (slow: minutes on a CPU; never run in tests).

For each HumanEval problem (the chat request the hybrid-latency benchmark sends: the function
to complete, the answer opened with a Python code fence), the cloud LLM writes its greedy
continuation; the edge SLM then reads prompt + continuation teacher-forced, and at every
position its greedy token and uncertainty features are kept::

    python -m edgecloud.simulator.des.record --out traces.json.gz --problems 8 --max-new-tokens 128

It also writes the fleet mode's compute profile (seconds per forward by batch size and tokens,
edge and cloud; see ``edgecloud.simulator.des.compute``), measured on this machine::

    python -m edgecloud.simulator.des.record --compute-profile profile.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

import torch

from edgecloud.humaneval import chat_request, load_problems
from edgecloud.routing.features import uncertainty
from edgecloud.simulator.des.compute import FORMAT, measure_forward_cost, profile_grid
from edgecloud.simulator.des.traces import TokenTrace, TraceSet, save_traces


def humaneval_requests(count: int) -> list[tuple[str, str]]:
    """(user message, assistant prefix) for the first ``count`` HumanEval problems."""
    return [chat_request(problem) for problem in load_problems(count)]


@torch.inference_mode()
def teacher_forced_trace(slm, prompt_ids: list[int], llm_ids: list[int]) -> TokenTrace:
    """The SLM's greedy token and features at each position of ``llm_ids`` after ``prompt_ids``."""
    ids = torch.tensor([prompt_ids + llm_ids], device=slm.device)
    hidden = slm.forward_layers(slm.embed(ids), 0, slm.config.num_layers)  # (1, T, C)
    p, n = len(prompt_ids), len(llm_ids)
    logits = slm.head(hidden[:, p - 1:p - 1 + n])[0]  # (n, V): predictions of llm_ids
    entropy, max_prob, margin = uncertainty(logits)
    return TokenTrace(p, tuple(logits.argmax(-1).tolist()), tuple(llm_ids), tuple(entropy.tolist()),
                      tuple(max_prob.tolist()), tuple(margin.tolist()))


def record_traces(edge_model: str, cloud_model: str, *, problems: int, max_new_tokens: int,
                  log=print) -> TraceSet:
    from edgecloud.models.generate import generate_ids
    from edgecloud.models.loader import load_model, resolve_source
    from edgecloud.models.tokenizer import Tokenizer

    cloud_folder = resolve_source(cloud_model)
    tokenizer = Tokenizer.from_folder(cloud_folder)
    slm = load_model(resolve_source(edge_model))
    llm = load_model(cloud_folder)
    traces = []
    for index, (user, prefix) in enumerate(humaneval_requests(problems)):
        started = time.perf_counter()
        prompt_ids = tokenizer.prompt_ids(user, chat=True, assistant_prefix=prefix)
        llm_ids = list(generate_ids(llm, prompt_ids, max_new_tokens=max_new_tokens,
                                    stop_ids=tokenizer.eos_token_ids))
        if not llm_ids:
            log(f"problem {index}: the LLM stopped at once; skipped")
            continue
        trace = teacher_forced_trace(slm, prompt_ids, llm_ids)
        traces.append(trace)
        log(f"problem {index}: {len(prompt_ids)} prompt + {len(llm_ids)} tokens, agreement "
            f"{trace.agreement:.3f}, {time.perf_counter() - started:.1f} s")
    return TraceSet(tuple(traces), synthetic=False, source={
        "edge_model": edge_model, "cloud_model": cloud_model, "dataset": "humaneval", "problems": problems,
        "max_new_tokens": max_new_tokens, "decoding": "greedy, bf16", "prompt": "chat template + code fence",
        "machine": platform.machine(), "torch": torch.__version__})


# The shapes of the Qwen pair (their config.json), for random-weight models when the real ones are not pulled.
REAL_SHAPES = {
    "qwen2.5-coder-0.5b-instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=896,
                                        intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                                        head_dim=64, tie_word_embeddings=True, attention_bias=True),
    "qwen2.5-coder-1.5b-instruct": dict(model_type="qwen2", vocab_size=151936, hidden_size=1536,
                                        intermediate_size=8960, num_layers=28, num_heads=12, num_kv_heads=2,
                                        head_dim=128, tie_word_embeddings=False, attention_bias=True),
}
PROFILE_BATCHES = (1, 2, 4)
PROFILE_TOKENS = (1, 2, 4, 8, 16, 32, 64, 128)
PROFILE_MAX_BATCH_TOKENS = 64
PROFILE_CONTEXT = 64
EDGE_HEAD_ROWS = 1  # the edge decodes: one row of logits per forward
CLOUD_HEAD_ROWS = 9  # the cloud verifies: the drafts (the policy's window, at most 8) + 1


def _profile_model(name: str, log=print):
    """The zoo model if pulled, else random weights of its real shapes: (model, weights description)."""
    from edgecloud.models import zoo
    from edgecloud.models.config import ModelConfig
    from edgecloud.models.llama import LlamaModel
    from edgecloud.models.loader import load_model

    if zoo.is_pulled(name):
        return load_model(name), "pulled weights"
    if name not in REAL_SHAPES:
        raise SystemExit(f"model {name!r} is not pulled and its shapes are not known here")
    log(f"{name} is not pulled: random weights of its shapes")
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaModel(ModelConfig(**REAL_SHAPES[name]))
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
    model.rotary = type(model.rotary)(model.config.head_dim, model.config.rope_theta)
    return model.eval(), "random weights, real shapes"


def measure_compute_profile(edge_model: str, cloud_model: str, *, repeats: int = 3, budget_s: float | None = None,
                            log=print) -> dict:
    """A compute profile file's content, measured here (bf16, this process's torch threads)."""
    grid = profile_grid(PROFILE_BATCHES, PROFILE_TOKENS, max_batch_tokens=PROFILE_MAX_BATCH_TOKENS)
    sides = {}
    started = time.perf_counter()
    for side, name, head_rows in (("edge", edge_model, EDGE_HEAD_ROWS), ("cloud", cloud_model, CLOUD_HEAD_ROWS)):
        model, weights = _profile_model(name, log)
        log(f"{side}: {name} ({weights})")
        left = None if budget_s is None else max(0.0, budget_s - (time.perf_counter() - started)) / (
            2 if side == "edge" else 1)
        points = measure_forward_cost(model, grid, context=PROFILE_CONTEXT, repeats=repeats, head_rows=head_rows,
                                      budget_s=left, log=log)
        sides[side] = {"model": f"{name} ({weights})", "head_rows": head_rows, "points": points}
        del model
    return {
        "format": FORMAT, "edge": sides["edge"], "cloud": sides["cloud"], "cloud_batching": "serial",
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(), "platform": platform.platform()},
        "dtype": "bfloat16", "context_tokens": PROFILE_CONTEXT, "repeats": repeats,
        "assumptions": [
            "seconds of one forward: `batch` sequences x `tokens` new tokens each, after a "
            f"{PROFILE_CONTEXT}-token cached context (longer contexts cost more attention; not modelled)",
            "the fastest of the repeats (this machine's 2 cores were shared with other work while measuring; other "
            "work only adds time); points above 128 tokens follow the 64-128 segment",
            "cloud_batching 'serial': the CPU cloud daemon runs one batch-1 forward per round trip, one at a time "
            "(batch > 1 points are measured for what-if runs with cloud_batching = 'batched')",
            f"LM head on {EDGE_HEAD_ROWS} row (edge) and on min(tokens, {CLOUD_HEAD_ROWS}) rows (cloud)",
        ],
    }


def _cpu() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgecloud.simulator.des.record", description=__doc__.split("\n")[0])
    p.add_argument("--out", help="trace file to write (.json or .json.gz)")
    p.add_argument("--compute-profile", help="measure forward costs and write a compute profile (.json) here")
    p.add_argument("--edge-model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--cloud-model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(argv)
    if args.problems < 1 or args.max_new_tokens < 1:
        p.error("--problems and --max-new-tokens must be >= 1")
    if not args.out and not args.compute_profile:
        p.error("give --out (traces) and/or --compute-profile")
    if args.compute_profile:
        profile = measure_compute_profile(args.edge_model, args.cloud_model)
        with open(args.compute_profile, "w") as handle:
            handle.write(json.dumps(profile, indent=2) + "\n")
        print(f"wrote compute profile to {args.compute_profile}")
        if not args.out:
            return 0
    traces = record_traces(args.edge_model, args.cloud_model, problems=args.problems,
                           max_new_tokens=args.max_new_tokens)
    path = save_traces(traces, args.out)
    print(f"wrote {len(traces.traces)} traces to {path}: {traces.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
