"""Allreduce latency: our ZeroMQ star and ring, torch.distributed gloo, and a TCP+pickle star (TPI-LLM's).

Every rank is its own process with one torch thread; rank 0 times each call (p50/p99 over
``--iters``, after warm-up). Links: loopback, or through the project's shaping proxy at a
one-way latency L and a rate B (default 100 Mbit/s): one proxy per link (worker -> master for
the stars, rank -> next rank for the ring), so each link has its own B. Next to each measurement,
the issue's models: star ``2L + 2(N-1)S/B`` (the master's link carries every worker's bytes) and
ring ``2(N-1)L + 2((N-1)/N)S/B``; ``model_per_link_ms`` is the star with a link of its own per
worker (``2L + 2S/B``), which is what separate proxies give. gloo connects its peers directly
(addresses it learns from its store), so it runs on loopback only.

    python benchmarks/allreduce.py --json benchmarks/results/allreduce.json

The TCP+pickle star unpickles what arrives: it is a baseline between this benchmark's own processes
on 127.0.0.1, never a pattern for code that faces a network.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HOST = "127.0.0.1"
SIZES = [1024, 16 * 1024, 256 * 1024, 4 * 1024 * 1024]
ALGOS = ["star", "star-q80", "star-curve", "ring", "pickle-star", "gloo"]  # star-curve: encrypted, members only


# ---- one rank (a child process) ----

def _pickle_star(rank: int, world: int, address: str):
    """TPI-LLM's shape: length-prefixed pickles over TCP; the master sums and sends the sum back."""
    def send(conn: socket.socket, x: torch.Tensor) -> None:
        data = pickle.dumps(x.numpy())
        conn.sendall(struct.pack("<Q", len(data)) + data)

    def recv(conn: socket.socket) -> torch.Tensor:
        (size,) = struct.unpack("<Q", _read(conn, 8))
        return torch.from_numpy(pickle.loads(_read(conn, size)))  # our own processes on loopback only

    if rank == 0:
        server = socket.create_server((HOST, 0))
        print(f"{HOST}:{server.getsockname()[1]}", flush=True)
        peers = []
        for _ in range(world - 1):
            conn, _ = server.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            peers.append(conn)

        def allreduce(x: torch.Tensor) -> torch.Tensor:
            total = x.clone()
            for conn in peers:
                total += recv(conn)
            for conn in peers:
                send(conn, total)
            return total
        return allreduce
    host, port = address.rsplit(":", 1)
    conn = socket.create_connection((host, int(port)))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def allreduce(x: torch.Tensor) -> torch.Tensor:
        send(conn, x)
        return recv(conn)
    return allreduce


def _read(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("peer closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def rank_main(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    rank, world = args.rank, args.world
    if args.algo == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{args.address}", rank=rank, world_size=world)

        def allreduce(x: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(x)
            return x
    elif args.algo == "pickle-star":
        allreduce = _pickle_star(rank, world, args.address)
    else:
        from edgecloud.kernels.collectives import RingAllreduce, StarAllreduce

        if args.algo == "ring":
            peer = RingAllreduce(rank, world, f"tcp://{HOST}:*", timeout_s=120)
            print(peer.address, flush=True)
            peer.connect(sys.stdin.readline().strip())
        else:
            from edgecloud.kernels.curve import GroupKeys

            compress = args.algo == "star-q80"
            keys = GroupKeys.load(args.keys, master=rank == 0) if args.algo == "star-curve" else None
            if rank == 0:
                peer = StarAllreduce.master(f"tcp://{HOST}:*", world, timeout_s=120, compress=compress, keys=keys)
                print(peer.address, flush=True)
            else:
                peer = StarAllreduce.worker(args.address, rank, world, timeout_s=120, compress=compress, keys=keys)
            peer.connect(timeout_s=120)
        allreduce = peer.allreduce
    timings = {}
    for size, iters in zip(args.sizes, args.iters, strict=True):
        x = torch.randn(size // 4)
        for _ in range(max(2, iters // 10)):  # warm-up
            allreduce(x)
        times = []
        for _ in range(iters):
            started = time.perf_counter()
            allreduce(x)
            times.append(time.perf_counter() - started)
        timings[size] = times
    if rank == 0:
        print("RESULT " + json.dumps(timings), flush=True)
    if args.algo == "gloo":  # leave together: a rank gone early resets the others' connections (SIGABRT)
        dist.barrier()
        dist.destroy_process_group()


# ---- the driver ----

class Proxies:
    """Shaping proxies on an event loop in a thread of this process (``LoopThread``)."""

    def __init__(self, latency_ms: float, rate_mbps: float) -> None:
        from edgecloud.loop_thread import LoopThread
        from edgecloud.simulator.profiles import LinkProfile

        self.profile = LinkProfile.symmetric(latency_ms=latency_ms, rate_mbps=rate_mbps)
        self.loop_thread = LoopThread("proxies").__enter__()
        self.links = []

    def link_to(self, address: str) -> str:
        """A proxy in front of ``host:port``; its own ``host:port``."""
        from edgecloud.simulator.proxy import ShapingProxy

        host, port = address.replace("tcp://", "").rsplit(":", 1)
        link = self.loop_thread.run(ShapingProxy.create(upstream=(host, int(port)), profile=self.profile))
        self.links.append(link)
        return link.address

    def close(self) -> None:
        for link in self.links:
            self.loop_thread.run(link.close())
        self.loop_thread.close()


def run_group(algo: str, world: int, sizes: list[int], iters: list[int], latency_ms: float | None,
              rate_mbps: float, workdir: Path) -> dict[int, list[float]]:
    """One group of ``world`` rank processes; rank 0's call times per size."""
    proxies = Proxies(latency_ms, rate_mbps) if latency_ms is not None else None

    def spawn(rank: int, address: str = "") -> subprocess.Popen:
        command = [sys.executable, __file__, "--rank", str(rank), "--world", str(world), "--algo", algo,
                   "--address", address, "--sizes", *map(str, sizes), "--iters", *map(str, iters),
                   "--keys", str(workdir / "tp-keys")]
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def shaped(address: str) -> str:
        if proxies is None:
            return address
        prefix = "tcp://" if address.startswith("tcp://") else ""
        return prefix + proxies.link_to(address)

    procs: list[subprocess.Popen] = []
    try:
        if algo == "gloo":
            rendezvous = workdir / f"gloo-{world}-{time.monotonic_ns()}"
            procs = [spawn(r, str(rendezvous)) for r in range(world)]
        elif algo == "ring":
            procs = [spawn(r) for r in range(world)]
            addresses = [p.stdout.readline().strip() for p in procs]
            for r, proc in enumerate(procs):
                proc.stdin.write(shaped(addresses[(r + 1) % world]) + "\n")
                proc.stdin.flush()
        else:
            procs = [spawn(0)]
            master = procs[0].stdout.readline().strip()
            procs += [spawn(r, shaped(master)) for r in range(1, world)]
        result = None
        for line in procs[0].stdout:
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
        for proc in procs:
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"{algo} rank exited with {proc.returncode}")
        return {int(size): times for size, times in result.items()}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if proxies is not None:
            proxies.close()


def models_ms(algo: str, world: int, size: int, latency_ms: float, rate_mbps: float) -> dict[str, float]:
    per_byte_ms = 8e3 / (rate_mbps * 1e6)
    if algo == "ring":
        return {"model_ms": 2 * (world - 1) * latency_ms + 2 * (world - 1) / world * size * per_byte_ms}
    wire = size * 34 / 128 if algo == "star-q80" else size
    return {"model_ms": 2 * latency_ms + 2 * (world - 1) * wire * per_byte_ms,
            "model_per_link_ms": 2 * latency_ms + 2 * wire * per_byte_ms}


def iterations(size: int, latency_ms: float | None, rate_mbps: float, world: int, budget_s: float) -> int:
    """As many calls as fit ``budget_s`` by the model (at least 5, at most 300)."""
    estimate_ms = models_ms("star", world, size, latency_ms or 0.0, rate_mbps if latency_ms else 8000.0)["model_ms"]
    return int(min(300, max(5, budget_s * 1e3 / max(estimate_ms, 0.2))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--latencies-ms", type=float, nargs="*", default=[1.0, 2.0, 5.0],
                        help="one-way latencies through the proxy (loopback is always measured)")
    parser.add_argument("--rate-mbps", type=float, default=100.0)
    parser.add_argument("--algos", nargs="+", default=ALGOS, choices=ALGOS)
    parser.add_argument("--budget-s", type=float, default=1.5, help="time per (size, group) by the model")
    # a rank's own arguments (the driver starts the ranks with these)
    parser.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--world", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--algo", help=argparse.SUPPRESS)
    parser.add_argument("--address", default="", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--iters", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--keys", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank is not None:
        rank_main(args)
        return
    if args.json is None:
        parser.error("--json is required")
    workdir = Path(tempfile.mkdtemp(prefix="allreduce-"))
    if "star-curve" in args.algos:
        from edgecloud.kernels.curve import write_group_keys

        write_group_keys(workdir / "tp-keys")
    result = {"benchmark": "allreduce", "machine": {"cpu": platform.processor(), "cores": os.cpu_count(),
                                                    "load_average_1m": os.getloadavg()[0]},
              "threads_per_rank": 1, "rate_mbps": args.rate_mbps, "dtype": "float32", "rows": []}
    for latency_ms in [None, *args.latencies_ms]:
        for world in args.worlds:
            for algo in args.algos:
                if algo == "gloo" and latency_ms is not None:
                    continue  # gloo's peers connect directly: no proxy in between
                iters = [iterations(s, latency_ms, args.rate_mbps, world, args.budget_s) for s in args.sizes]
                timings = run_group(algo, world, args.sizes, iters, latency_ms, args.rate_mbps, workdir)
                for size in args.sizes:
                    times = sorted(timings[size])
                    row = {"algo": algo, "world": world, "link": "loopback" if latency_ms is None else "proxy",
                           "one_way_ms": latency_ms or 0.0, "bytes": size, "iters": len(times),
                           "p50_ms": statistics.median(times) * 1e3,
                           "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1e3}
                    if latency_ms is not None:
                        row.update(models_ms(algo, world, size, latency_ms, args.rate_mbps))
                        row["p50_over_model"] = row["p50_ms"] / row["model_ms"]
                    result["rows"].append(row)
                    print(f"{row['link']:8s} L={row['one_way_ms']:.0f}ms N={world} {algo:11s} {size:>8d} B  "
                          f"p50 {row['p50_ms']:8.3f} ms  p99 {row['p99_ms']:8.3f} ms"
                          + (f"  model {row['model_ms']:8.3f} ms" if "model_ms" in row else ""), flush=True)
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
