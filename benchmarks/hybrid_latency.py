"""Hybrid token routing with the real Qwen2.5-Coder pair through the real daemons.

Coordinator, cloud node (1.5B) and edge node (0.5B) run as processes on loopback, edge and
cloud pinned to different cores (one machine standing in for two devices). For HumanEval
prompts and each configuration it records cloud share of tokens, round trips per generated
token, bytes per token each way and tokens/s, then applies the latency model
``wall(RTT) = wall(loopback) + round_trips × RTT`` for RTT 20/50/100 ms. With ``--proxy-check``
one configuration also runs through the shaping proxy at a real 50 ms RTT, to check the model.

    python benchmarks/hybrid_latency.py --problems 5 --json benchmarks/results/hybrid_latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from edgecloud.client import Client, Summary
from edgecloud.demo import start_cluster
from edgecloud.humaneval import Problem, chat_request, load_problems
from edgecloud.models.loader import resolve_source
from edgecloud.processes import DaemonGroup, free_port
from edgecloud.routing.prompts import CLOSING_FENCE

SLM = "qwen2.5-coder-0.5b-instruct"
LLM = "qwen2.5-coder-1.5b-instruct"
RTTS_MS = (20, 50, 100)
# (label, policy, target cloud share or None, cloud prefetch); the share is turned into a threshold
# from the SLM's own features on the benchmark prompts (see thresholds_for_prompts).
CONFIGS = [
    ("slm-only", "slm-only", None, False),
    ("llm-only", "llm-only", None, False),
    ("speculative", "speculative", None, False),
    ("random@5%", "random", 0.05, False),
    ("random@20%", "random", 0.20, False),
    ("entropy@5%", "entropy", 0.05, False),
    ("entropy@20%", "entropy", 0.20, False),
    ("max-prob@5%", "max-prob", 0.05, False),
    ("max-prob@20%", "max-prob", 0.20, False),
    ("entropy@5%+prefetch", "entropy", 0.05, True),
    ("entropy@20%+prefetch", "entropy", 0.20, True),
    ("max-prob@5%+prefetch", "max-prob", 0.05, True),
]


def thresholds_for_prompts(problems: list[Problem], slm_path: Path, max_tokens: int) -> dict[tuple[str, float], float]:
    """Thresholds giving the target shares on these prompts, from the SLM's features alone.

    The edge's own calibration (standard-library tasks) is more uncertain than HumanEval
    answers and flags almost nothing here; a latency benchmark needs the stated shares, so the
    quantiles come from the SLM's greedy answers to the benchmark prompts (no LLM output used).
    """
    from edgecloud.edge_node.engine import EdgeEngine
    from edgecloud.models.loader import load_model
    from edgecloud.models.tokenizer import Tokenizer
    from edgecloud.routing.policies import make_policy

    engine = EdgeEngine(load_model(slm_path), Tokenizer.from_folder(slm_path))
    features = [f for p in problems for f in engine.generation_features(*chat_request(p), max_tokens=max_tokens)]
    return {(policy, share): make_policy(policy).calibrate(features, share)
            for _, policy, share, _ in CONFIGS if share is not None}


def warm_up(client: Client) -> None:
    """Page in both models' weights and warm the kernels (not recorded)."""
    client.text("Say hello.", max_tokens=8, policy="speculative")


def run_config(client: Client, problems: list[Problem], policy: str, threshold: float | None,
               prefetch: bool, max_tokens: int) -> list[Summary]:
    summaries = []
    for problem in problems:
        user, prefix = chat_request(problem)
        list(client.generate(user, max_tokens=max_tokens, policy=policy, threshold=threshold,
                             cloud_prefetch=prefetch, assistant_prefix=prefix, stop=(CLOSING_FENCE,)))
        summaries.append(client.last_summary)
    return summaries


def aggregate(label: str, summaries: list[Summary], slm_wall_per_token: float | None) -> dict:
    tokens = sum(s.output_tokens for s in summaries)
    wall = sum(s.wall_s for s in summaries) or float("nan")
    trips = sum(s.cloud_round_trips for s in summaries)
    row = {
        "config": label, "policy": summaries[0].policy, "threshold": summaries[0].threshold,
        "requests": len(summaries), "output_tokens": tokens,
        "cloud_share": sum(s.cloud_tokens + s.checked_tokens for s in summaries) / tokens,
        "round_trips_per_token": trips / tokens,
        "bytes_up_per_token": sum(s.bytes_up for s in summaries) / tokens,
        "bytes_down_per_token": sum(s.bytes_down for s in summaries) / tokens,
        "edge_compute_s": sum(s.edge_compute_s for s in summaries),
        "cloud_compute_s": sum(s.cloud_compute_s for s in summaries),
        "wall_s": wall, "tokens_per_s_loopback": tokens / wall,
        # Clocks run from request arrival: time to first token (prompt prefill, and for cloud configurations
        # the cloud's prefill too) apart from the decode rate of the tokens after the first.
        "time_to_first_token_s_mean": statistics.mean(s.time_to_first_token_s for s in summaries),
        "decode_tokens_per_s": (tokens - len(summaries)) / (wall - sum(s.time_to_first_token_s for s in summaries)),
        "mean_window": statistics.mean([w for s in summaries for w in s.window_sizes] or [0]),
        "background_calls_per_token": sum(s.cloud_background_calls for s in summaries) / tokens,
    }
    for rtt in RTTS_MS:
        modeled = wall + trips * rtt / 1000
        row[f"tokens_per_s_rtt{rtt}ms"] = tokens / modeled
        if slm_wall_per_token:
            row[f"vs_slm_only_rtt{rtt}ms"] = (tokens / modeled) * slm_wall_per_token
    return row



def proxy_check(problems: list[Problem], slm_path: Path, llm_path: Path, max_tokens: int, one_way_ms: float,
                label: str, policy: str, threshold: float | None, prefetch: bool, loopback_row: dict) -> dict:
    """Run one configuration with the cloud behind the shaping proxy; compare with the latency model."""
    from edgecloud.loop_thread import LoopThread
    from edgecloud.simulator.profiles import LinkProfile
    from edgecloud.simulator.proxy import ShapingProxy

    cloud_port = free_port()
    with LoopThread() as loop, DaemonGroup(log_dir=Path(tempfile.mkdtemp(prefix="hybrid-proxy-"))) as group:
        link = loop.run(ShapingProxy.create(upstream=f"127.0.0.1:{cloud_port}",
                                            profile=LinkProfile.symmetric(latency_ms=one_way_ms)))
        client = start_cluster(group, slm_path, llm_path,
                               cloud_args=["--listen", f"127.0.0.1:{cloud_port}", "--advertise", link.address])
        warm_up(client)
        summaries = run_config(client, problems, policy, threshold, prefetch, max_tokens)
        client.close()
        loop.run(link.close())
    measured = aggregate(label, summaries, None)
    rtt_ms = 2 * one_way_ms
    trips = measured["round_trips_per_token"] * measured["output_tokens"]
    predicted_wall = loopback_row["wall_s"] / loopback_row["output_tokens"] * measured["output_tokens"] \
        + trips * rtt_ms / 1000
    return {"config": label, "rtt_ms": rtt_ms, "measured_wall_s": measured["wall_s"],
            "measured_tokens_per_s": measured["tokens_per_s_loopback"], "predicted_wall_s": predicted_wall,
            "predicted_over_measured": predicted_wall / measured["wall_s"], "round_trips": trips,
            "network_s": sum(s.network_s for s in summaries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--configs", nargs="+", default=[c[0] for c in CONFIGS])
    parser.add_argument("--proxy-check", default="entropy@20%", help="config to rerun at 50 ms RTT ('' = skip)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()

    problems = load_problems(args.problems)
    slm_path, llm_path = resolve_source(SLM), resolve_source(LLM)
    result = {"benchmark": "hybrid_latency", "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
              "slm": SLM, "llm": LLM, "dtype": "bfloat16", "link": "loopback; edge and cloud pinned to separate cores",
              "problems": [p.task_id for p in problems], "max_tokens": args.max_tokens,
              "latency_model": "wall(RTT) = wall(loopback) + round_trips * RTT", "rows": [], "proxy_check": None}
    configs = [c for c in CONFIGS if c[0] in args.configs]
    started = time.perf_counter()
    thresholds = thresholds_for_prompts(problems, slm_path, args.max_tokens)
    result["thresholds"] = {f"{policy}@{share:.0%}": t for (policy, share), t in thresholds.items()}
    with DaemonGroup(log_dir=Path(tempfile.mkdtemp(prefix="hybrid-"))) as group:
        client = start_cluster(group, slm_path, llm_path)
        warm_up(client)
        slm_wall_per_token = None
        for label, policy, share, prefetch in configs:
            threshold = thresholds.get((policy, share))
            summaries = run_config(client, problems, policy, threshold, prefetch, args.max_tokens)
            row = aggregate(label, summaries, slm_wall_per_token)
            if label == "slm-only":
                slm_wall_per_token = row["wall_s"] / row["output_tokens"]
                row = aggregate(label, summaries, slm_wall_per_token)
            result["rows"].append(row)
            print(f"{label:14s} share {row['cloud_share']:.3f}  trips/token {row['round_trips_per_token']:.3f}  "
                  f"tok/s {row['tokens_per_s_loopback']:.2f}  @50ms {row['tokens_per_s_rtt50ms']:.2f}", flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2))
        client.close()
    by_label = {r["config"]: r for r in result["rows"]}
    if args.proxy_check and args.proxy_check in by_label:
        label, policy, share, prefetch = next(c for c in CONFIGS if c[0] == args.proxy_check)
        result["proxy_check"] = proxy_check(problems, slm_path, llm_path, args.max_tokens, 25.0, label, policy,
                                            thresholds.get((policy, share)), prefetch, by_label[label])
        print("proxy check:", result["proxy_check"], flush=True)
    result["wall_s"] = time.perf_counter() - started
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
