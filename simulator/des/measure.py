"""Measure a ``ComputeProfile`` on this machine with the real models (slow; never run in tests).

Edge: seconds per decode step at batch 1 and per extra token in one forward (from a 64-token
chunk). Cloud: seconds per forward of B sequences × 1 token for each batch size, and per extra
token. Every forward runs after a prefilled cache of ``context`` tokens::

    python -m edgecloud.simulator.des.measure --json compute.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

EXTRA_CHUNK = 64


@torch.inference_mode()
def forward_s(model, batch: int, tokens: int, *, context: int, reps: int) -> float:
    """Median seconds of one forward of (batch, tokens) new tokens after ``context`` cached ones."""
    times = []
    for _ in range(reps + 1):  # the first run warms up
        cache = model.new_cache(batch_size=batch, initial_capacity=context + tokens)
        model(torch.ones((batch, context), dtype=torch.long), cache, last_n=1)
        ids = torch.ones((batch, tokens), dtype=torch.long)
        started = time.perf_counter()
        model(ids, cache, last_n=tokens)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def measure(edge_model: str, cloud_model: str, *, batches: Sequence[int], context: int, reps: int) -> dict:
    from edgecloud.models.loader import load_model, resolve_source

    result: dict = {"edge_model": edge_model, "cloud_model": cloud_model, "context_tokens": context,
                    "torch_threads": torch.get_num_threads(), "dtype": "bfloat16"}
    edge = load_model(resolve_source(edge_model))
    one = forward_s(edge, 1, 1, context=context, reps=reps)
    chunk = forward_s(edge, 1, EXTRA_CHUNK, context=context, reps=reps)
    result |= {"edge_s_per_token": one, "edge_s_per_extra_token": max(0.0, (chunk - one) / (EXTRA_CHUNK - 1))}
    del edge
    cloud = load_model(resolve_source(cloud_model))
    table = [[b, forward_s(cloud, b, 1, context=context, reps=reps)] for b in batches]
    chunk = forward_s(cloud, 1, EXTRA_CHUNK, context=context, reps=reps)
    result |= {"cloud_s_per_forward": table,
               "cloud_s_per_extra_token": max(0.0, (chunk - table[0][1]) / (EXTRA_CHUNK - 1))}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edgecloud.simulator.des.measure", description=__doc__.split("\n")[0])
    p.add_argument("--edge-model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--cloud-model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--batches", default="1,2,4,8", help="cloud batch sizes, comma-separated")
    p.add_argument("--context", type=int, default=128, help="cached tokens before the timed forward")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", dest="json_out", help="write the measurement here")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    result = measure(args.edge_model, args.cloud_model, batches=batches, context=args.context, reps=args.reps)
    text = json.dumps(result, indent=2)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
