"""Quality of hybrid routing on HumanEval: pass@1 against cloud share for every policy.

For SLM-only, LLM-only, speculative and each routing policy at thresholds calibrated on the
standard library's calibration split, the evaluation engine (evaluation/engine.py:
the real router over memoised outputs of both models, equal to the daemons' output on every
configuration, tests/test_eval_engine.py) writes each problem's completion; each completion
runs its tests in a sandboxed subprocess. RouteLLM's PGR, APGR and CPT with paired bootstrap
95% intervals over problems. Resumable: rows are appended per problem to --results.

    python benchmarks/hybrid_eval.py --problems 164 --reward-head benchmarks/results/reward_head.safetensors \
        --json benchmarks/results/hybrid_eval.json --plot benchmarks/results/hybrid_eval.png
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from edgecloud.evaluation import metrics
from edgecloud.evaluation.sweep import (
    DEFAULT_SHARES,
    Configuration,
    ResultStore,
    calibrate,
    evaluate_problem,
)
from edgecloud.humaneval import load_problems
from edgecloud.models.loader import load_model, resolve_source
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.reward import RewardHead

SLM, LLM = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
CURVE_POLICIES = ("random", "query", "entropy", "max-prob", "margin", "reward")
MATCHED_SHARES = (0.05, 0.08, 0.1, 0.2)  # PGR read off each policy's curve at these cloud shares


def load_configs(path: Path, settings: dict, slm, tokenizer, reward_head, shares, tasks) -> list[Configuration]:
    """The sweep's configurations: calibrated once and kept beside the results, so a resumed run matches."""
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved is not None and saved["settings"] != settings:
        raise SystemExit(f"{path} was made with other settings ({saved['settings']}); use another --results")
    configs = [Configuration(**c) for c in saved["configs"]] if saved else []
    if not configs or (reward_head is not None and not any(c.policy == "reward" for c in configs)):
        fresh = calibrate(slm, tokenizer, shares=shares, tasks=tasks, reward_head=reward_head, log=log)
        have = {c.label for c in configs}
        configs += [c for c in fresh if c.label not in have]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings, "configs": [asdict(c) for c in configs]}, indent=1))
    return configs


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ci(n: int, statistic, resamples: int) -> tuple[float, float] | None:
    """Bootstrap 95% interval, or None where too many resamples have no SLM-LLM quality gap."""
    try:
        return metrics.bootstrap_ci(n, statistic, resamples=resamples)
    except ValueError:
        return None


def summarize(rows: list[dict], configs: list[Configuration], resamples: int) -> dict:
    """Per-configuration figures and per-policy RouteLLM metrics over the problems every configuration has."""
    by_task: dict[str, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        by_task[row["task_id"]][row["config"]] = row
    labels = [c.label for c in configs]
    tasks = sorted((t for t, r in by_task.items() if all(label in r for label in labels)),
                   key=lambda t: int(t.split("/")[-1]))
    if not tasks:
        raise SystemExit("no problem has results for every configuration yet")
    table = {label: [by_task[t][label] for t in tasks] for label in labels}
    measure = {label: metrics.Measurement.of([r["passed"] for r in rs],
                                             [r["cloud_tokens"] + r["checked_tokens"] for r in rs],
                                             [r["tokens"] for r in rs]) for label, rs in table.items()}
    weak, strong = measure["slm-only"], measure["llm-only"]
    n = len(tasks)

    def gap_ok(idx) -> bool:
        return strong.quality(idx) != weak.quality(idx)

    per_config = {}
    for config in configs:
        rs, m = table[config.label], measure[config.label]
        tokens = sum(r["tokens"] for r in rs)
        entry = {**asdict(config), "pass_at_1": m.quality(), "cloud_share": m.cloud_share(),
                 "round_trips_per_token": sum(r["round_trips"] for r in rs) / tokens,
                 "bytes_up_per_token": sum(r["bytes_up"] for r in rs) / tokens,
                 "bytes_down_per_token": sum(r["bytes_down"] for r in rs) / tokens,
                 "llm_agreement": float(np.mean([r["llm_agreement"] for r in rs])),
                 "tokens_per_problem": tokens / n, "truncated": sum(r["finish_reason"] == "length" for r in rs)}
        if gap_ok(None):
            entry["pgr"] = metrics.pgr(m.quality(), weak.quality(), strong.quality())
            entry["pgr_ci95"] = _ci(n, lambda idx, m=m: metrics.pgr(
                m.quality(idx), weak.quality(idx), strong.quality(idx)) if gap_ok(idx) else math.nan, resamples)
        per_config[config.label] = entry
    policies = {}
    for name in CURVE_POLICIES:
        members = [measure[c.label] for c in configs if c.policy == name]
        if not members or not gap_ok(None):
            continue

        def stat(idx, fn, members=members):
            if not gap_ok(idx):
                return math.nan  # PGR is undefined without a quality gap: the resample is dropped
            return fn(metrics.curve(members, idx), weak.quality(idx), strong.quality(idx))

        figures = {"apgr": lambda pts, w, s: metrics.apgr(pts, w, s),
                   "cpt50": lambda pts, w, s: metrics.cpt(pts, w, s, 0.5),
                   "cpt80": lambda pts, w, s: metrics.cpt(pts, w, s, 0.8)}
        policies[name] = {key: stat(None, fn) for key, fn in figures.items()}
        policies[name].update({f"{key}_ci95": _ci(n, lambda idx, fn=fn: stat(idx, fn), resamples)
                               for key, fn in figures.items()})
        policies[name]["points"] = metrics.curve(members)
        curve_pgr = metrics.pgr_curve(policies[name]["points"], weak.quality(), strong.quality())
        policies[name]["pgr_at_share"] = {f"{share:.2f}": float(np.interp(share, *zip(*curve_pgr, strict=True)))
                                          for share in MATCHED_SHARES}
    return {"problems": n, "task_ids": tasks, "slm_pass_at_1": weak.quality(), "llm_pass_at_1": strong.quality(),
            "completions": sum(len(rs) for rs in table.values()),
            "completion_tokens": sum(r["tokens"] for rs in table.values() for r in rs),
            "zero_cloud_call_rows": _zero_call_consistency(table, tasks), "configs": per_config, "policies": policies}


def _zero_call_consistency(table: dict[str, list[dict]], tasks: list[str]) -> dict[str, int]:
    """Rows of routing policies that made no cloud call, and how many differ from SLM-only's completion
    (they should not: a difference is numerical noise in how the SLM's outputs were computed)."""
    slm = {row["task_id"]: row for row in table["slm-only"]}
    rows = [r for label, rs in table.items() if label not in ("slm-only", "llm-only", "speculative")
            for r in rs if r["round_trips"] == 0]
    differ = [r for r in rows if r["completion"] != slm[r["task_id"]]["completion"]]
    return {"rows": len(rows), "differ_from_slm_only": len(differ),
            "differ_in_pass": sum(r["passed"] != slm[r["task_id"]]["passed"] for r in differ),
            "problems": len({r["task_id"] for r in differ})}


def _interval(ci) -> str:
    if ci is None:
        return "[undefined]"
    low, high = ci
    return f"[{_num(low)}, {_num(high)}]"


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isinf(value)):
        return "not reached"
    return f"{value:.{digits}f}"


def markdown(summary: dict) -> str:
    """The README's tables: one row per policy, then one per configuration."""
    lines = ["| policy | APGR [95% CI] | CPT(50%) [95% CI] | CPT(80%) [95% CI] | PGR at 5% / 8% / 10% / 20% cloud |",
             "|---|---|---|---|---|"]
    for name, e in summary["policies"].items():
        at = " / ".join(f"{v:.2f}" for v in e["pgr_at_share"].values())
        lines.append(f"| {name} | {_num(e['apgr'])} {_interval(e['apgr_ci95'])} | {_num(e['cpt50'])} "
                     f"{_interval(e['cpt50_ci95'])} | {_num(e['cpt80'])} {_interval(e['cpt80_ci95'])} | {at} |")
    lines += ["", "| config | cloud share | pass@1 | PGR [95% CI] | round trips / token | bytes up / down per token "
              "| LLM agreement |", "|---|---|---|---|---|---|---|"]
    for label, e in summary["configs"].items():
        pgr_text = f"{e['pgr']:.2f} {_interval(e['pgr_ci95'])}" if "pgr" in e else "—"
        lines.append(f"| {label} | {100 * e['cloud_share']:.1f}% | {100 * e['pass_at_1']:.1f}% | {pgr_text} | "
                     f"{e['round_trips_per_token']:.3f} | {e['bytes_up_per_token']:.1f} / "
                     f"{e['bytes_down_per_token']:.1f} | {e['llm_agreement']:.3f} |")
    return "\n".join(lines) + "\n"


def _finite(value):
    """JSON-safe: an infinite bound (a CPT target missed in too many resamples) becomes null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    w, s = summary["slm_pass_at_1"], summary["llm_pass_at_1"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, right in zip(axes, (1.0, 0.3), strict=True):
        for name, entry in summary["policies"].items():
            pts = metrics.pgr_curve(entry["points"], w, s)
            ax.plot([100 * x for x, _ in pts], [y for _, y in pts], marker="o", ms=3,
                    label=f"{name} (APGR {entry['apgr']:.2f})")
        spec = summary["configs"].get("speculative")
        if spec and "pgr" in spec:
            ax.scatter([100 * spec["cloud_share"]], [spec["pgr"]], marker="*", s=80, color="k", label="speculative")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="grey", lw=0.8, ls="--")
        ax.set_xlim(0, 100 * right)
        ax.set_xlabel("cloud share of tokens (%)")
        ax.set_ylabel("PGR")
    axes[0].set_title(f"HumanEval, {summary['problems']} problems: SLM {100 * w:.1f}%, LLM {100 * s:.1f}%")
    axes[1].set_title("zoom: 0-30% cloud share")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=80, help="first N HumanEval problems (164 = all)")
    parser.add_argument("--slm", default=SLM)
    parser.add_argument("--llm", default=LLM)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--reward-head", type=Path, help="adds the reward policy")
    parser.add_argument("--shares", type=float, nargs="+", default=list(DEFAULT_SHARES),
                        help="nominal flagged shares the per-token thresholds are calibrated for")
    parser.add_argument("--calibration-tasks", type=int, default=32)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/hybrid_eval.jsonl"))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/hybrid_eval.json"))
    parser.add_argument("--plot", type=Path, default=Path("benchmarks/results/hybrid_eval.png"))
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown here")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--summary-only", action="store_true", help="no generation: summarise what --results has")
    args = parser.parse_args()
    if not 1 <= args.problems <= 164:
        parser.error("--problems must be in [1, 164]")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer = Tokenizer.from_folder(resolve_source(args.llm))
    reward_head = RewardHead.load(args.reward_head, slm=args.slm, llm=args.llm) if args.reward_head else None
    settings = {"slm": args.slm, "llm": args.llm, "max_tokens": args.max_tokens, "shares": args.shares,
                "calibration_tasks": args.calibration_tasks, "dtype": "bfloat16"}
    store = ResultStore(args.results)
    config_path = args.results.with_suffix(".configs.json")
    if args.summary_only:
        configs = [Configuration(**c) for c in json.loads(config_path.read_text())["configs"]]
    else:
        slm = load_model(args.slm)
        llm = load_model(args.llm)
        configs = load_configs(config_path, settings, slm, tokenizer, reward_head, args.shares,
                               args.calibration_tasks)
        log(f"{len(configs)} configurations: {', '.join(c.label for c in configs)}")
        for index, problem in enumerate(load_problems(args.problems)):
            todo = [c for c in configs if c.label not in store.done(problem.task_id)]
            if not todo:
                continue
            t0 = time.perf_counter()
            rows = evaluate_problem(slm, llm, tokenizer, problem, index, todo, max_tokens=args.max_tokens,
                                    reward_head=reward_head)
            store.append(rows)
            by = {r["config"]: r for r in rows}
            log(f"[{index + 1}/{args.problems}] {problem.task_id}: {len(todo)} configs in "
                f"{time.perf_counter() - t0:.1f} s; slm {by.get('slm-only', {}).get('passed')} "
                f"llm {by.get('llm-only', {}).get('passed')}; {rows[0]['problem_cost']}")
    summary = summarize(store.rows, configs, args.bootstrap)
    result = {"benchmark": "hybrid_eval", "settings": settings, "machine": platform.processor() or platform.machine(),
              "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
              "reward_head": str(args.reward_head) if args.reward_head else None,
              "wall_s_this_run": round(time.perf_counter() - started, 1),
              "sweep_compute_s": round(sum(r.get("problem_cost", {}).get("generate_s", 0)
                                           + r.get("problem_cost", {}).get("test_s", 0) for r in store.rows), 1),
              **summary}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_finite(result), indent=1))
    plot(summary, args.plot)
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    log(f"wrote {args.json} and {args.plot}")
    for name, entry in summary["policies"].items():
        log(f"{name}: APGR {entry['apgr']:.3f} CPT50 {entry['cpt50']} CPT80 {entry['cpt80']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
