"""Tensor-parallel decode speed: ms/token for N devices, split into compute and communication.

Rank 0 runs in this process, every other rank as a worker process (``local_group``), one torch
thread each. Links: loopback, or each worker's link to the master through the shaping proxy
(run in a process of its own) at a one-way latency. Per token the group makes 2 allreduces per
layer and one broadcast (the layer input); "communication" is the master's time inside those calls
(waiting for the slowest worker included), "compute" the rest.

    python benchmarks/tp_decode.py --json benchmarks/results/tp_decode_random.json
    python benchmarks/tp_decode.py --model qwen2.5-coder-1.5b-instruct --ways 1 2 3 --latencies-ms 0 \\
        --tokens 16 --json benchmarks/results/tp_decode_1.5b.json

``--model random`` is the issue's reference shape: a random Llama with dim 1024, hidden 3072, 8
layers, 16 heads, 8 KV heads, vocab 4096.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HOST = "127.0.0.1"
PROMPT = [3, 14, 15, 9, 2, 6, 40, 11, 7, 1, 30, 22, 5, 8, 13, 21]


class Timed:
    """A collective whose calls' wall time is summed (the master's communication time)."""

    def __init__(self, inner) -> None:
        self.inner, self.seconds, self.calls = inner, 0.0, 0

    def _timed(self, fn, *args):
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1

    def allreduce(self, tensor):
        return self._timed(self.inner.allreduce, tensor)

    def broadcast(self, tensor):
        return self._timed(self.inner.broadcast, tensor)


def random_model_folder(root: Path) -> Path:
    from edgecloud.models.config import ModelConfig
    from edgecloud.models.llama import LlamaModel
    from edgecloud.models.loader import save_model

    config = ModelConfig(model_type="llama", vocab_size=4096, hidden_size=1024, intermediate_size=3072, num_layers=8,
                         num_heads=16, num_kv_heads=8, head_dim=64, tie_word_embeddings=False, rope_theta=10000.0)
    torch.manual_seed(0)
    model = LlamaModel(config)
    for name, p in model.named_parameters():
        p.data.fill_(1.0) if "norm" in name else p.data.normal_(0, 0.02)
    return save_model(model, root / "random")


def proxy_main(upstream: str, latency_ms: float) -> None:
    """A shaping proxy in front of ``upstream``: prints its HOST:PORT, then serves until killed."""
    from edgecloud.simulator.profiles import LinkProfile
    from edgecloud.simulator.proxy import ShapingProxy

    async def serve() -> None:
        host, port = upstream.rsplit(":", 1)
        async with ShapingProxy.create(upstream=(host, int(port)),
                                       profile=LinkProfile.symmetric(latency_ms=latency_ms)) as link:
            print(link.address, flush=True)
            await asyncio.Event().wait()

    asyncio.run(serve())


def measure(shards: Path, dtype: str, tokens: int, latency_ms: float, timeout_s: float) -> dict:
    from edgecloud.models.tp_worker import local_group

    proxies: list[subprocess.Popen] = []

    def through_proxy(address: str, rank: int) -> str:
        if not latency_ms:
            return address
        proxy = subprocess.Popen([sys.executable, __file__, "--proxy-for", address.replace("tcp://", ""),
                                  "--proxy-latency-ms", str(latency_ms)], stdout=subprocess.PIPE, text=True)
        proxies.append(proxy)
        return "tcp://" + proxy.stdout.readline().strip()

    try:
        with local_group(shards, dtype=dtype, threads=1, timeout_s=timeout_s, worker_address=through_proxy) as group, \
                torch.inference_mode():
            if group.collective is not None:
                group.collective = Timed(group.collective)
            group.forward(torch.tensor([PROMPT]), last_n=1)  # prefill (not timed)
            token, times, comm = PROMPT[-1], [], []
            for _ in range(tokens):
                before = group.collective.seconds if group.collective is not None else 0.0
                started = time.perf_counter()
                logits = group.forward(torch.tensor([[token]]), last_n=1)
                times.append(time.perf_counter() - started)
                comm.append((group.collective.seconds if group.collective is not None else 0.0) - before)
                token = int(logits[0, -1].argmax())
            ways = group.model.plan.ways
    finally:
        for proxy in proxies:
            proxy.kill()
    p50 = statistics.median(times) * 1e3
    comm_ms = statistics.median(comm) * 1e3
    return {"ways": ways, "one_way_ms": latency_ms, "tokens": tokens, "ms_per_token_p50": p50,
            "ms_per_token_mean": statistics.mean(times) * 1e3, "communication_ms_p50": comm_ms,
            "compute_ms_p50": p50 - comm_ms, "collective_calls_per_token": (2 * group.model.config.num_layers + 1)
            if ways > 1 else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="random", help="'random' (the issue's shape) or a model name/folder")
    parser.add_argument("--ways", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--latencies-ms", type=float, nargs="+", default=[0.0, 1.0], help="one-way; 0 = loopback")
    parser.add_argument("--dtype", default="fp32", help="weights and activations: fp32 | bf16")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--timeout-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--proxy-for", help=argparse.SUPPRESS)
    parser.add_argument("--proxy-latency-ms", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy_for:
        proxy_main(args.proxy_for, args.proxy_latency_ms)
        return
    if args.json is None:
        parser.error("--json is required")
    from edgecloud.models.loader import resolve_source
    from edgecloud.models.sharded import write_shards

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="tp-decode-"))
    source = random_model_folder(root) if args.model == "random" else resolve_source(args.model)
    result = {"benchmark": "tp_decode", "model": args.model, "dtype": args.dtype, "threads_per_rank": 1,
              "machine": {"cpu": platform.processor(), "cores": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
              "rows": []}
    for ways in args.ways:
        shards = root / f"shards-{ways}"
        write_shards(source, shards, ways)
        for latency_ms in args.latencies_ms if ways > 1 else [0.0]:
            row = measure(shards, args.dtype, args.tokens, latency_ms, args.timeout_s)
            result["rows"].append(row)
            print(f"N={ways} one-way {latency_ms:.1f} ms: {row['ms_per_token_p50']:.1f} ms/token "
                  f"(compute {row['compute_ms_p50']:.1f}, communication {row['communication_ms_p50']:.1f})", flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
