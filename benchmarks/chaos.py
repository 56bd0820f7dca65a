"""Generations while the cloud node is killed (SIGKILL) and restarted at random moments.

Real processes on loopback: a coordinator, an edge node (the SLM) and a cloud node (the LLM)
behind the simulator's shaping proxy (a stable address, ``--latency-ms`` each way), so that the
cloud can crash and come back on a new port while edge and coordinator keep dialling one address.
A chaos thread alternates uptimes and downtimes drawn at random (seeded); the main thread runs
``--generations`` streaming requests back to back (HumanEval prompts, ``--policy``). Reported:

- requests completed (a summary arrived and its token counts match the stream) vs. errors;
- the share of tokens written in degraded mode (the cloud was down: SLM-only);
- per kill, the time to degrade (kill → first degraded token) and, per restart, the time to
  resume hybrid routing: from the cloud's READY line to the first token the cloud produced or
  checked (the goal is ≤ 2 s).

    python benchmarks/chaos.py --generations 100 --json benchmarks/results/chaos.json

The JSON is rewritten after every generation, so a cut-off run still leaves data.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edgecloud.client import Client, EdgecloudError, Summary, TokenEvent
from edgecloud.humaneval import chat_request, load_problems
from edgecloud.loop_thread import LoopThread
from edgecloud.models.loader import resolve_source
from edgecloud.processes import DaemonGroup
from edgecloud.simulator.chaos import RestartableDaemon
from edgecloud.simulator.profiles import LinkProfile

SLM = "qwen2.5-coder-0.5b-instruct"
LLM = "qwen2.5-coder-1.5b-instruct"


@dataclass
class Generation:
    index: int
    started_s: float  # on the run's clock
    ok: bool
    error: str = ""
    tokens: int = 0
    degraded_tokens: int = 0
    cloud_tokens: int = 0  # produced or checked by the cloud
    cloud_failures: int = 0
    cloud_switches: int = 0
    wall_s: float = 0.0
    first_cloud_token_s: float | None = None  # request start to the first token the cloud produced or checked
    counts_match: bool = True  # the summary's counts equal what streamed


@dataclass
class ChaosLog:
    """What the chaos thread did, on the run's clock; tokens are stamped on the same clock."""

    kills_s: list[float] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)  # READY of each restart
    restart_errors: list[str] = field(default_factory=list)


def chaos_loop(cloud: RestartableDaemon, log: ChaosLog, clock, stop: threading.Event, rng: random.Random,
               uptime_s: tuple[float, float], downtime_s: tuple[float, float]) -> None:
    """Kill the cloud after a random uptime, start it again after a random downtime, until ``stop``."""
    while not stop.wait(rng.uniform(*uptime_s)):
        cloud.kill()
        log.kills_s.append(clock())
        if stop.wait(rng.uniform(*downtime_s)):
            break
        try:
            cloud.restart()
            log.ready_s.append(clock())
        except Exception as exc:  # a restart that failed is data, not a crash of the run
            log.restart_errors.append(repr(exc))
    if not cloud.alive:  # leave it up for the final summary
        cloud.restart()
        log.ready_s.append(clock())


def first_after(times: list[float], after: float) -> float | None:
    later = [t for t in times if t >= after]
    return min(later) - after if later else None


def summarize(generations: list[Generation], log: ChaosLog, degraded_at: list[float], cloud_at: list[float]) -> dict:
    tokens = sum(g.tokens for g in generations)
    resume = [first_after(cloud_at, ready) for ready in log.ready_s]
    degrade = [first_after(degraded_at, kill) for kill in log.kills_s]
    measured = [r for r in resume if r is not None]
    return {
        "generations": len(generations),
        "completed": sum(g.ok for g in generations),
        "errors": [g.error for g in generations if not g.ok],
        "counts_match": all(g.counts_match for g in generations),
        "tokens": tokens,
        "degraded_tokens": sum(g.degraded_tokens for g in generations),
        "degraded_share": sum(g.degraded_tokens for g in generations) / tokens if tokens else 0.0,
        "cloud_failures": sum(g.cloud_failures for g in generations),
        "kills": len(log.kills_s),
        "restarts": len(log.ready_s),
        "restart_errors": log.restart_errors,
        "resume_s": resume,
        "resume_s_median": statistics.median(measured) if measured else None,
        "resume_s_max": max(measured) if measured else None,
        "resumed_within_2s": sum(r <= 2.0 for r in measured),
        "degrade_s": degrade,
        "degrade_s_median": statistics.median([d for d in degrade if d is not None]) if any(
            d is not None for d in degrade) else None,
    }



def generate(client: Client, problem, args: argparse.Namespace, generation: Generation, clock,
             degraded_at: list[float], cloud_at: list[float]) -> Generation:
    """One streamed request; token times go to ``degraded_at`` / ``cloud_at`` (produced or checked by the cloud)."""
    user, prefix = chat_request(problem)
    started = time.monotonic()
    streamed = degraded = 0
    try:
        for event in client.generate(user, assistant_prefix=prefix, max_tokens=args.max_tokens, policy=args.policy):
            if isinstance(event, Summary):
                generation.ok = True
                generation.degraded_tokens = event.degraded_tokens
                generation.cloud_tokens = event.cloud_tokens + event.checked_tokens
                generation.cloud_failures = event.cloud_failures
                generation.cloud_switches = event.cloud_switches
                generation.counts_match = event.total_tokens == streamed and event.degraded_tokens == degraded
            elif isinstance(event, TokenEvent) and event.token_id >= 0:
                streamed += 1
                now = clock()
                if event.source == "degraded":
                    degraded += 1
                    degraded_at.append(now)
                elif event.source == "cloud" or event.checked:
                    if generation.first_cloud_token_s is None:
                        generation.first_cloud_token_s = time.monotonic() - started
                    cloud_at.append(now)
    except EdgecloudError as exc:
        generation.error = str(exc)
    generation.tokens = streamed
    generation.wall_s = time.monotonic() - started
    return generation


def recovery_metrics(url: str) -> dict:
    """The edge's recovery histogram: cloud found up again → first verification on the rebuilt session."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples
              if s.name.startswith("edgecloud_cloud_recovery_seconds_") and not s.labels}
    count = values.get("edgecloud_cloud_recovery_seconds_count", 0.0)
    total = values.get("edgecloud_cloud_recovery_seconds_sum", 0.0)
    return {"recoveries": int(count), "recovery_s_mean": total / count if count else None}


def run(args: argparse.Namespace) -> dict:
    slm, llm = resolve_source(args.slm), resolve_source(args.llm)
    problems = load_problems(limit=args.problems)
    rng = random.Random(args.seed)
    t0 = time.monotonic()
    clock = lambda: time.monotonic() - t0  # noqa: E731
    generations: list[Generation] = []
    log = ChaosLog()
    degraded_at: list[float] = []
    cloud_at: list[float] = []
    result: dict = {"config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                               "slm": str(slm), "llm": str(llm)},
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}

    def save() -> None:
        result["summary"] = summarize(generations, log, degraded_at, cloud_at)
        result["generations"] = [asdict(g) for g in generations]
        result["chaos"] = asdict(log)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=1) + "\n")

    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp, LoopThread("chaos-proxy") as loop, \
            DaemonGroup(log_dir=args.log_dir or Path(tmp) / "logs") as group:
        coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                                  "--heartbeat-interval-s", "1", "--mqtt-listen", "none"])
        cloud = RestartableDaemon("cloud", ["-m", "edgecloud.cloud_node", "--model", str(llm),
                                            "--coordinator", coordinator.address, "--threads", str(args.threads)],
                                  loop, profile=LinkProfile.symmetric(latency_ms=args.latency_ms),
                                  log_dir=args.log_dir or Path(tmp) / "logs")
        cloud.start()
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(slm), "--listen", "127.0.0.1:0",
                                    "--coordinator", coordinator.address, "--threads", str(args.threads),
                                    "--metrics-listen", "127.0.0.1:0"])
        client = Client(coordinator.address, timeout_s=600)
        stop = threading.Event()
        chaos = threading.Thread(target=chaos_loop, name="chaos", daemon=True,
                                 args=(cloud, log, clock, stop, rng, tuple(args.uptime_s), tuple(args.downtime_s)))
        try:
            client.wait_for_nodes(2, timeout_s=120)
            baseline = generate(client, problems[0], args, Generation(-1, clock(), ok=False), clock, [], [])
            result["baseline"] = asdict(baseline)  # fault-free, before the chaos starts
            chaos.start()
            for index in range(args.generations):
                generation = generate(client, problems[index % len(problems)], args,
                                      Generation(index, clock(), ok=False), clock, degraded_at, cloud_at)
                generations.append(generation)
                save()
                print(f"[{index + 1}/{args.generations}] {'ok' if generation.ok else generation.error} "
                      f"{generation.tokens} tokens, {generation.degraded_tokens} degraded, "
                      f"kills so far {len(log.kills_s)}", file=sys.stderr, flush=True)
            result["edge_metrics"] = recovery_metrics(edge.endpoints["metrics"])
        finally:
            stop.set()
            chaos.join(timeout=300)
            client.close()
            cloud.close()
    save()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generations", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--policy", default="speculative")
    p.add_argument("--problems", type=int, default=20, help="HumanEval prompts, used in turn")
    p.add_argument("--slm", default=SLM)
    p.add_argument("--llm", default=LLM)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each daemon")
    p.add_argument("--latency-ms", type=float, default=10.0, help="one-way delay of the proxy to the cloud")
    p.add_argument("--uptime-s", type=float, nargs=2, default=(20.0, 40.0),
                   help="cloud uptime range after READY (uniform; on this CPU a request needs ~10 s for its first cloud token)")
    p.add_argument("--downtime-s", type=float, nargs=2, default=(0.5, 3.0), help="downtime before the restart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--log-dir", type=Path, help="keep the daemons' logs here (default: a temporary folder)")
    args = p.parse_args()
    summary = run(args)["summary"]
    print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    main()
