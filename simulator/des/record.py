"""Record DES traces from the real model pair (slow: minutes on a CPU; never run in tests).

For each HumanEval problem (the chat request the hybrid-latency benchmark sends: the function
to complete, the answer opened with a Python code fence), the cloud LLM writes its greedy
continuation; the edge SLM then reads prompt + continuation teacher-forced, and at every
position its greedy token and uncertainty features are kept::

    python -m edgecloud.simulator.des.record --out traces.json.gz --problems 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import torch

from edgecloud.humaneval import chat_request, load_problems
from edgecloud.routing.features import uncertainty
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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgecloud.simulator.des.record", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="trace file to write (.json or .json.gz)")
    p.add_argument("--edge-model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--cloud-model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--problems", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    args = p.parse_args(argv)
    if args.problems < 1 or args.max_new_tokens < 1:
        p.error("--problems and --max-new-tokens must be >= 1")
    traces = record_traces(args.edge_model, args.cloud_model, problems=args.problems,
                           max_new_tokens=args.max_new_tokens)
    path = save_traces(traces, args.out)
    print(f"wrote {len(traces.traces)} traces to {path}: {traces.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
