"""Many clients on one edge node: the latency of each of N concurrent requests against one alone.

The edge daemon runs as a real process on loopback; every request is slm-only with ``--max-tokens``
tokens. Each round measures, side by side, requests one at a time (the median of five) and N
requests started together (a barrier); each client opens its own connection for its request, or
with ``--held`` connects first and keeps its channel. ``--model tiny`` is a random-weight model of the
tests' tiny shape: almost no compute, so what it shows is the daemon's per-request and per-token
overhead (the issue's "tiny models" case); a real model shows what batching the SLM's steps buys
when compute dominates.

    python benchmarks/edge_concurrency.py --model tiny --threads 1 --json benchmarks/results/edge_concurrency_tiny.json
    python benchmarks/edge_concurrency.py --model qwen2.5-coder-0.5b-instruct --rounds 2 \\
        --json benchmarks/results/edge_concurrency_0.5b.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from edgecloud.client import Client
from edgecloud.models.loader import resolve_source
from edgecloud.processes import DaemonGroup

PROMPT = "Write a Python function that returns the n-th Fibonacci number."


def tiny_model_folder(root: Path) -> Path:
    """A random-weight Qwen2-shaped model as small as the tests' (2 layers, hidden 32, a 300-token toy
    tokenizer): its forward costs well under a millisecond, so the daemon's overheads show."""
    import torch

    from edgecloud.models.config import ModelConfig
    from edgecloud.models.llama import LlamaModel
    from edgecloud.models.loader import save_model
    from edgecloud.models.toy_tokenizer import write_toy_tokenizer

    folder = root / "tiny"
    folder.mkdir(parents=True)
    write_toy_tokenizer(folder)
    config = ModelConfig(model_type="qwen2", vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, attention_bias=True, tie_word_embeddings=True,
                         rope_theta=10000.0)
    torch.manual_seed(0)
    save_model(LlamaModel(config), folder)
    return folder


def request(address: str, max_tokens: int, client: Client | None = None, start: threading.Barrier | None = None
            ) -> tuple[float, int]:
    """One slm-only request: (seconds from its start to its summary, tokens)."""
    if start is not None:
        start.wait()
    started = time.perf_counter()
    own = client is None
    client = client or Client(address, timeout_s=600)
    try:
        events = list(client.generate(PROMPT, max_tokens=max_tokens, policy="slm-only"))
    finally:
        if own:
            client.close()
    return time.perf_counter() - started, events[-1].output_tokens


def one_round(address: str, n: int, max_tokens: int, held: bool) -> dict:
    clients = [Client(address, timeout_s=600) for _ in range(n)] if held else [None] * n
    try:
        if held:
            for client in clients:  # connect each (not timed)
                request(address, 1, client)
        alone = sorted(request(address, max_tokens, clients[0])[0] for _ in range(5))
        start = threading.Barrier(n)
        with ThreadPoolExecutor(n) as pool:
            together = list(pool.map(lambda c: request(address, max_tokens, c, start), clients))
    finally:
        for client in clients:
            if client is not None:
                client.close()
    latencies = sorted(s for s, _ in together)
    return {"alone_s": alone[2], "concurrent_median_s": statistics.median(latencies),
            "concurrent_max_s": latencies[-1], "max_over_alone": latencies[-1] / alone[2],
            "tokens_per_request": statistics.mean(t for _, t in together)}


def step_ms(folder: Path, n: int, dtype: str, threads: int | None, steps: int = 20) -> dict:
    """In process: one SLM decode step for one session and for ``n`` sessions in one forward (ms)."""
    import torch

    from edgecloud.edge_node.drafter import Drafter
    from edgecloud.models.dtypes import parse_dtype
    from edgecloud.models.loader import load_model
    from edgecloud.models.tokenizer import Tokenizer

    if threads:
        torch.set_num_threads(threads)
    model = load_model(folder, dtype=parse_dtype(dtype))
    prompt = Tokenizer.from_folder(folder).prompt_ids(PROMPT)
    arena = model.new_arena()
    drafters = [Drafter(model, prompt, arena=arena, capacity=len(prompt) + 2 * steps) for _ in range(n)]
    timings = {}
    for label, batch in (("one_session", drafters[:1]), (f"{n}_sessions", drafters)):
        started = time.perf_counter()
        for _ in range(steps):
            if len(batch) == 1:
                batch[0].feed(batch[0].draft()[0])
            else:
                Drafter.feed_batch(batch, [d.draft()[0] for d in batch])
        timings[f"step_ms_{label}"] = (time.perf_counter() - started) / steps * 1e3
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (random weights) or a model name/folder")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="the edge's torch threads (default: its own)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="edge-concurrency-"))
    folder = tiny_model_folder(root) if args.model == "tiny" else resolve_source(args.model)
    dtype = "fp32" if args.model == "tiny" else "bf16"
    result = {"benchmark": "edge_concurrency", "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
              "model": args.model, "dtype": dtype, "clients": args.clients, "max_tokens": args.max_tokens,
              "policy": "slm-only", "edge_threads": args.threads, "rows": []}
    steps = step_ms(folder, args.clients, dtype, args.threads)
    result.update(steps)
    print(", ".join(f"{k} {v:.2f}" for k, v in steps.items()), flush=True)
    with DaemonGroup(log_dir=root / "logs") as group:
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folder), "--dtype", dtype,
                                    "--listen", "127.0.0.1:0", "--max-active-requests", str(args.clients + 4),
                                    *(["--threads", str(args.threads)] if args.threads else [])])
        request(edge.address, args.max_tokens)  # warm-up (not recorded)
        for i in range(args.rounds):
            for held in (False, True):
                row = {"round": i, "connections": "held" if held else "per request",
                       **one_round(edge.address, args.clients, args.max_tokens, held)}
                result["rows"].append(row)
                print(f"round {i} {row['connections']:11s} alone {row['alone_s']:.3f} s  {args.clients} together: "
                      f"median {row['concurrent_median_s']:.3f} s  max {row['concurrent_max_s']:.3f} s  "
                      f"({row['max_over_alone']:.1f}x)", flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=2))
    for mode in ("per request", "held"):
        ratios = [r["max_over_alone"] for r in result["rows"] if r["connections"] == mode]
        result[f"median_max_over_alone_{mode.replace(' ', '_')}"] = statistics.median(ratios)
    args.json.write_text(json.dumps(result, indent=2))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
