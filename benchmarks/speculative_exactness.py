"""Is speculative decoding lossless in bf16 on the real pair? Speculative vs LLM-only greedy, token by token.

In exact arithmetic verifying a window in one forward pass gives the LLM's greedy tokens; in
bf16 a multi-token pass can round differently from single-token decoding and flip a near tie.

    python benchmarks/speculative_exactness.py --json benchmarks/results/speculative_exactness.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import torch

from edgecloud.cloud_node.local_link import InProcessCloudLink
from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model, resolve_source
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.policies import make_policy
from edgecloud.routing.router import HybridRouter

PROMPTS = ["Write a Python function that checks whether a number is prime.", "def fib(n):",
           "Explain recursion in one sentence."]


def speculative_ids(slm, llm, prompt_ids: list[int], window: int, max_new: int, stop_ids) -> tuple[list[int], int]:
    router = HybridRouter(make_policy("speculative", window=window), InProcessCloudLink(SessionStore(llm)),
                          prompt_ids, drafter=ThreadedDrafter(Drafter(slm, prompt_ids)), max_new_tokens=max_new,
                          stop_ids=stop_ids)

    async def collect() -> list[int]:
        return [event.token_id async for event in router.run()]

    return asyncio.run(collect()), router.accounting.round_trips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    slm_dir = resolve_source("qwen2.5-coder-0.5b-instruct")
    llm_dir = resolve_source("qwen2.5-coder-1.5b-instruct")
    tokenizer = Tokenizer.from_folder(slm_dir)
    slm, llm = load_model(slm_dir), load_model(llm_dir)
    result = {"benchmark": "speculative_exactness", "dtype": "bfloat16", "threads": 1, "rows": []}
    for prompt in PROMPTS:
        ids = tokenizer.prompt_ids(prompt)
        started = time.perf_counter()
        reference = list(generate_ids(llm, ids, max_new_tokens=args.tokens, stop_ids=tokenizer.eos_token_ids))
        llm_s = time.perf_counter() - started
        for window in args.windows:
            started = time.perf_counter()
            got, trips = speculative_ids(slm, llm, ids, window, args.tokens, tokenizer.eos_token_ids)
            row = {"prompt": prompt, "window": window, "equal": got == reference, "tokens": len(reference),
                   "first_difference": next((i for i, (a, b) in enumerate(zip(reference, got, strict=False)) if a != b), None),
                   "llm_only_s": llm_s, "speculative_s": time.perf_counter() - started, "round_trips": trips}
            result["rows"].append(row)
            print(row, flush=True)
    result["equal"] = sum(r["equal"] for r in result["rows"])
    result["runs"] = len(result["rows"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
