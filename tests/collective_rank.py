"""One rank of an allreduce group as its own process, for tests/test_collectives.py.

    python tests/collective_rank.py star|ring|gloo RANK WORLD OUT.pt [--address A] [--steps S] [--hang-after K]

Star: connects to the master at ``--address``. Ring: prints its own address, reads its successor's on
stdin. Gloo: ``torch.distributed`` with a file rendezvous at ``--address``. Step s of rank r sums
``rank_input(r, s)``; the results are saved to OUT.pt (read back with ``weights_only=True``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

NUMEL = 777


def rank_input(rank: int, step: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(NUMEL, generator=torch.Generator().manual_seed(1000 * step + rank)).to(dtype)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("star", "ring", "gloo"))
    parser.add_argument("rank", type=int)
    parser.add_argument("world", type=int)
    parser.add_argument("out")
    parser.add_argument("--address", default="")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--hang-after", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.kind == "gloo":
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{args.address}", rank=args.rank,
                                world_size=args.world)

        def allreduce(x: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(x)
            return x
    else:
        from edgecloud.kernels.collectives import RingAllreduce, StarAllreduce

        if args.kind == "star":
            peer = StarAllreduce.worker(args.address, args.rank, args.world, timeout_s=20)
            peer.connect()
        else:
            peer = RingAllreduce(args.rank, args.world, "tcp://127.0.0.1:*", timeout_s=20)
            print(peer.address, flush=True)
            peer.connect(sys.stdin.readline().strip())
        allreduce = peer.allreduce
    results = []
    for step in range(1, args.steps + 1):
        if args.hang_after is not None and step > args.hang_after:
            time.sleep(3600)  # alive but silent: the master must name this rank
        results.append(allreduce(rank_input(args.rank, step)))
    torch.save(results, args.out)
    if args.kind == "gloo":  # leave together: a rank gone early resets the others' connections (SIGABRT)
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
