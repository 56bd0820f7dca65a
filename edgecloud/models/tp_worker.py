"""A tensor-parallel worker process: load this rank's shard, join the master's star, serve until told to stop.

    python -m edgecloud.models.tp_worker --shards DIR --rank R --master tcp://HOST:PORT [--timeout-s S]
        [--curve-keys DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from edgecloud.kernels.collectives import StarAllreduce
from edgecloud.kernels.curve import GroupKeys
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.sharded import TensorParallelGroup, load_shard, serve_worker


@contextlib.contextmanager
def local_group(shards: str | Path, *, dtype: str = "fp32", threads: int | None = None, timeout_s: float = 30.0,
                bind: str = "tcp://127.0.0.1:*", worker_address: Callable[[str, int], str] | None = None,
                memory_window: int | None = None, curve_keys: str | Path | None = None
                ) -> Iterator[TensorParallelGroup]:
    """A whole group on this machine: rank 0 here, every other rank a worker process of its own.

    ``curve_keys``: a folder from ``edgecloud certs tp-keys``; the links are then encrypted (CURVE)
    and only members join.

    ``worker_address(address, rank)`` may give a worker another way to the master (a shaping proxy).
    On exit the workers are told to stop and waited for (killed if they do not); a worker that
    failed makes this raise, with its exit code.
    """
    rank0 = load_shard(shards, 0, dtype=parse_dtype(dtype), memory_window=memory_window)
    ways = rank0.plan.ways
    keys = GroupKeys.load(curve_keys, master=True) if curve_keys else None
    with StarAllreduce.master(bind, ways, timeout_s=timeout_s, keys=keys) as collective:
        extra = (["--threads", str(threads)] if threads else []) + \
            (["--memory-window", str(memory_window)] if memory_window else []) + \
            (["--curve-keys", str(curve_keys)] if curve_keys else [])
        workers = [subprocess.Popen([sys.executable, "-m", "edgecloud.models.tp_worker", "--shards", str(shards),
                                     "--rank", str(r), "--master",
                                     worker_address(collective.address, r) if worker_address else collective.address,
                                     "--dtype", dtype,
                                     "--timeout-s", str(timeout_s), *extra]) for r in range(1, ways)]
        try:
            if ways > 1:
                collective.connect(timeout_s=max(timeout_s, 120.0))
            group = TensorParallelGroup(rank0, collective if ways > 1 else None)
            yield group
            group.close()
            codes = [w.wait(timeout=60) for w in workers]
            if any(codes):
                raise RuntimeError(f"tensor-parallel workers exited with {codes}")
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="a folder written by `edgecloud shard`")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--master", required=True, help="the master's allreduce address, tcp://HOST:PORT")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="for each allreduce step")
    parser.add_argument("--memory-window", type=int, default=None,
                        help="keep only this many layers' weights in RAM, reading the next ones in the background")
    parser.add_argument("--curve-keys", default=None,
                        help="folder with the group's CURVE keys (master.key, member.key_secret): encrypted "
                             "links, members only (`edgecloud certs tp-keys`)")
    args = parser.parse_args(argv)
    try:
        keys = GroupKeys.load(args.curve_keys, master=False) if args.curve_keys else None
    except ValueError as exc:
        parser.error(str(exc))
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_shard(args.shards, args.rank, dtype=parse_dtype(args.dtype), memory_window=args.memory_window)
    with StarAllreduce.worker(args.master, args.rank, model.plan.ways, timeout_s=args.timeout_s,
                              keys=keys) as collective:
        collective.connect(timeout_s=max(args.timeout_s, 600.0))  # the others may still be loading their shards
        serve_worker(model, collective)
    return 0


if __name__ == "__main__":
    sys.exit(main())
