"""``python -m edgecloud.simulator.des EXPERIMENT.toml --devices N --requests M --json OUT``.

Argument parsing only; mounted as ``edgecloud simulate --des``. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _pairs(text: str) -> tuple[tuple[int, float], ...]:
    """``1:0.224,8:0.4`` → ((1, 0.224), (8, 0.4))."""
    try:
        return tuple((int(b), float(s)) for b, s in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected BATCH:SECONDS[,BATCH:SECONDS...], got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecloud simulate --des",
                                description="Discrete-event fleet simulation of an experiment.")
    p.add_argument("experiment", help="experiment TOML (an optional [fleet] table sets the defaults below)")
    p.add_argument("--devices", type=int, help="edge devices in the fleet")
    p.add_argument("--requests", type=int, help="requests to simulate")
    p.add_argument("--seed", type=int, help="seed (default: the experiment's)")
    p.add_argument("--rate", type=float, dest="request_rate_per_s", help="fleet-wide arrivals per second")
    p.add_argument("--traces", help="trace file, or 'synthetic' (default: [fleet].traces, else the shipped "
                   "recording, else synthetic)")
    p.add_argument("--cloud-replicas", type=int, help="cloud batch servers")
    p.add_argument("--cloud-max-batch", type=int, help="round trips per cloud batch")
    p.add_argument("--compute-profile", help="measured compute profile file (default: [fleet].compute_profile, "
                   "else the shipped one; see python -m edgecloud.simulator.des.record --compute-profile)")
    p.add_argument("--cloud-batching", choices=("serial", "batched"), help="serial: one round trip per cloud "
                   "forward (the CPU cloud); batched: up to --cloud-max-batch in one padded forward")
    p.add_argument("--edge-s-per-token", type=float, help="edge seconds per forward (replaces the profile's edge)")
    p.add_argument("--cloud-s-per-forward", type=_pairs, help="cloud seconds per forward by batch size, "
                   "e.g. 1:0.224,8:0.4 (replaces the profile's cloud)")
    p.add_argument("--json", dest="json_out", help="write the report as JSON here")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from dataclasses import replace

    from edgecloud.simulator.des.config import (
        ComputeProfile,
        _cloud_linear,
        _edge_linear,
        default_compute,
        load_fleet_experiment,
    )
    from edgecloud.simulator.des.fleet import run_fleet
    from edgecloud.simulator.errors import ConfigError

    try:
        setup = load_fleet_experiment(args.experiment)
        compute: ComputeProfile = setup.fleet.compute
        if args.compute_profile is not None:
            compute = default_compute(args.compute_profile)
        if args.edge_s_per_token is not None:
            compute = replace(compute, edge=_edge_linear(args.edge_s_per_token, 0.0), source="command line")
        if args.cloud_s_per_forward is not None:
            cloud = _cloud_linear(args.cloud_s_per_forward, 0.0)
            compute = replace(compute, cloud=cloud, source="command line",
                              cloud_batching="batched" if any(b > 1 for b in cloud.batches) else "serial")
        if args.cloud_batching is not None:
            compute = replace(compute, cloud_batching=args.cloud_batching)
        setup = setup.with_overrides(traces=args.traces)
        report = run_fleet(setup, devices=args.devices, requests=args.requests, seed=args.seed,
                           request_rate_per_s=args.request_rate_per_s, compute=compute,
                           cloud_replicas=args.cloud_replicas, cloud_max_batch=args.cloud_max_batch)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json_out:
        report.to_json(args.json_out)
    if not args.quiet:
        print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
