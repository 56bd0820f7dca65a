"""Claim: the discrete-event fleet mode simulates 10,000 devices × 100,000 requests in under 60 s.

Runs ``run_fleet`` on shipped experiments scaled to the fleet and records wall time (whole
call: trace replay through the real router, fleet setup, event loop, report), events and
events/s, with the simulated outcome (cloud load, queueing, tokens/s, cloud share). States
machine, experiment (links, policies), compute profile, traces and seed::

    python benchmarks/simulator_des_scale.py --json benchmarks/results/simulator_des_scale.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

from edgecloud.simulator.des.config import load_fleet_experiment
from edgecloud.simulator.des.fleet import default_traces, run_fleet

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ("simulator/des/examples/city-fleet.toml", "simulator/experiments/mixed-fleet.toml")
GOAL_S = 60.0


def machine() -> dict:
    cpu = ""
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def run_one(path: Path, args: argparse.Namespace) -> dict:
    setup = load_fleet_experiment(path)
    traces = default_traces(args.traces, max_tokens=setup.experiment.workload.max_new_tokens, seed=args.seed)
    report = run_fleet(setup, devices=args.devices, requests=args.requests, seed=args.seed, traces=traces,
                       request_rate_per_s=args.rate, cloud_replicas=args.cloud_replicas,
                       cloud_max_batch=args.cloud_max_batch)
    print(report.summary(), flush=True)
    exp = setup.experiment
    return {
        "experiment": exp.name, "file": str(path.relative_to(ROOT)),
        "edges": [{"name": e.name, "policy": e.policy, "threshold": e.threshold, "cloud_share": e.cloud_share}
                  for e in exp.edges],
        "links": {link.name: {"from": link.source, "to": link.target,
                              "uplink": {"latency_ms": link.profile.uplink.latency_ms,
                                         "rate_mbps": link.profile.uplink.rate_mbps},
                              "downlink": {"latency_ms": link.profile.downlink.latency_ms,
                                           "rate_mbps": link.profile.downlink.rate_mbps}}
                  for link in exp.links},
        "cloud": {"replicas": report.cloud.replicas, "max_batch": report.cloud.max_batch},
        "devices": report.devices, "requests": report.requests, "wall_s": report.wall_s,
        "event_loop_s": report.config["event_loop_s"], "events": report.events, "events_per_s": report.events_per_s,
        "round_trips": report.round_trips, "tokens": report.tokens, "simulated_s": report.simulated_s,
        "goal_met": report.wall_s < GOAL_S, "report": report.to_dict(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", dest="json_out", default=str(ROOT / "benchmarks/results/simulator_des_scale.json"))
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--requests", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=None, help="fleet arrivals/s (default: the experiment's per edge)")
    p.add_argument("--cloud-replicas", type=int, default=None, help="default: the file's [fleet] table")
    p.add_argument("--cloud-max-batch", type=int, default=None, help="default: the file's [fleet] table")
    p.add_argument("--traces", help="trace file or 'synthetic' (default: the shipped recording)")
    p.add_argument("--experiments", nargs="*", default=list(EXPERIMENTS),
                   help="experiment files, relative to the repository root")
    args = p.parse_args()
    started = time.perf_counter()
    runs = [run_one(ROOT / name, args) for name in args.experiments]
    result = {
        "benchmark": "simulator_des_scale", "claim": f"{args.devices} devices × {args.requests} requests "
        f"in under {GOAL_S:.0f} s", "machine": machine(), "seed": args.seed,
        "total_s": time.perf_counter() - started, "runs": runs,
    }
    Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    for run in runs:
        print(f"{run['experiment']}: {run['devices']} devices × {run['requests']} requests: {run['wall_s']:.1f} s wall "
              f"({run['events_per_s']:,.0f} events/s), goal {'met' if run['goal_met'] else 'MISSED'}")


if __name__ == "__main__":
    main()
