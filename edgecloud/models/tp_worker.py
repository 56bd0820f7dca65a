"""A tensor-parallel worker process: load this rank's shard, join the master's star, serve until told to stop.

    python -m edgecloud.models.tp_worker --shards DIR --rank R --master tcp://HOST:PORT [--timeout-s S]
"""

from __future__ import annotations

import argparse
import sys

import torch

from edgecloud.kernels.collectives import StarAllreduce
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.sharded import load_shard, serve_worker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, help="a folder written by `edgecloud shard`")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--master", required=True, help="the master's allreduce address, tcp://HOST:PORT")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="for each allreduce step")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_shard(args.shards, args.rank, dtype=parse_dtype(args.dtype))
    with StarAllreduce.worker(args.master, args.rank, model.plan.ways, timeout_s=args.timeout_s) as collective:
        collective.connect(timeout_s=max(args.timeout_s, 60.0))
        serve_worker(model, collective)
    return 0


if __name__ == "__main__":
    sys.exit(main())
