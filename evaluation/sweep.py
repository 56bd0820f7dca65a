"""A routing sweep over HumanEval: every configuration of every problem, resumable, one JSONL row each.

A configuration is a policy with a threshold. Thresholds are calibrated on the SLM's own
greedy answers to code-completion tasks from the standard library's calibration split (never
on HumanEval), at nominal shares of flagged tokens; the realised cloud share (tokens the
cloud produced or checked) is measured per problem and is what the curves are drawn against.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from edgecloud.evaluation.engine import (
    NgramIndex,
    PairOracle,
    PrefixOracle,
    complete,
    cost_summary,
)
from edgecloud.evaluation.sandbox import run_many
from edgecloud.humaneval import Problem, chat_request, completion_code, program
from edgecloud.models.llama import LlamaModel
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.calibration import calibration_tasks
from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import QueryPolicy, make_policy
from edgecloud.routing.prompts import CLOSING_FENCE, ends_answer

TOKEN_POLICIES = ("random", "entropy", "max-prob", "margin", "reward")
BASELINES = ("slm-only", "llm-only", "speculative")
DEFAULT_SHARES = (0.01, 0.02, 0.04, 0.07, 0.12, 0.2, 0.35, 0.6)


@dataclass(frozen=True)
class Configuration:
    policy: str
    threshold: float | None = None
    nominal_share: float | None = None  # the flagged share the threshold was calibrated for

    @property
    def label(self) -> str:
        return self.policy if self.threshold is None else f"{self.policy}@{self.threshold:.6g}"


def greedy_features(slm: LlamaModel, tokenizer: Tokenizer, prompt_ids: Sequence[int], *, max_tokens: int,
                    hidden: bool = False) -> list[TokenFeatures]:
    """The SLM's features along its own greedy answer, until the closing fence or an end token."""
    oracle = PrefixOracle(slm, prompt_ids, features=True, hidden=hidden)
    seen = NgramIndex()
    seen.add(prompt_ids)
    prefix: tuple[int, ...] = ()
    features = []
    while len(prefix) < max_tokens:
        record = oracle.get(prefix)
        if record is None:
            seen.add(oracle.compute(prefix, seen.guess(list(prompt_ids) + list(prefix), oracle.guess_tokens)))
            record = oracle.records[prefix]
        features.append(TokenFeatures(record.entropy, record.max_prob, record.margin, len(prefix), record.hidden))
        if ends_answer(tokenizer, (*prefix, record.token)):
            break
        prefix += (record.token,)
    return features


def calibrate(slm: LlamaModel, tokenizer: Tokenizer, *, shares: Sequence[float] = DEFAULT_SHARES,
              tasks: int = 32, max_tokens: int = 192, reward_head=None,
              log: Callable[[str], None] = print) -> list[Configuration]:
    """Every configuration of the sweep, thresholds calibrated on the SLM's calibration-split answers."""
    started = time.perf_counter()
    per_request: list[list[TokenFeatures]] = []
    for user, prefix in calibration_tasks(tasks):
        ids = tokenizer.prompt_ids(user, assistant_prefix=prefix)
        per_request.append(greedy_features(slm, tokenizer, ids, max_tokens=max_tokens,
                                           hidden=reward_head is not None))
    features = [f for request in per_request for f in request]
    log(f"calibration: {len(per_request)} tasks, {len(features)} tokens, {time.perf_counter() - started:.0f} s")
    configs = [Configuration(name) for name in BASELINES]
    for name in TOKEN_POLICIES:
        if name == "reward" and reward_head is None:
            continue
        policy = make_configured_policy(Configuration(name), seed=0, reward_head=reward_head)
        configs += [Configuration(name, policy.calibrate(features, share), share) for share in shares]
    probe = [sum(f.entropy for f in r[:QueryPolicy.probe_tokens]) / max(1, len(r[:QueryPolicy.probe_tokens]))
             for r in per_request if r]
    configs += [Configuration("query", QueryPolicy.threshold_for_share(probe, share), share)
                for share in (0.1, 0.25, 0.5, 0.75, 0.9)]
    return _unique(configs)


def _unique(configs: Iterable[Configuration]) -> list[Configuration]:
    """Drop configurations whose label repeats (two shares can calibrate to one threshold)."""
    seen, out = set(), []
    for config in configs:
        if config.label not in seen:
            seen.add(config.label)
            out.append(config)
    return out


class ResultStore:
    """Rows appended to a JSONL file as each problem finishes; a restart skips what is there."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        if self.path.is_file():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    self.rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut off by a crash: the problem is redone
                    raise ValueError(f"{self.path}:{number} is not JSON; remove the line to resume") from None

    def done(self, task_id: str) -> set[str]:
        return {row["config"] for row in self.rows if row["task_id"] == task_id}

    def append(self, rows: Sequence[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
            handle.flush()
        self.rows.extend(rows)


def make_configured_policy(config: Configuration, *, seed: int, reward_head=None):
    options = {"reward_head": reward_head} if config.policy == "reward" else {}
    return make_policy(config.policy, config.threshold, seed=seed, **options)


def evaluate_problem(slm: LlamaModel, llm: LlamaModel, tokenizer: Tokenizer, problem: Problem, index: int,
                     configs: Sequence[Configuration], *, max_tokens: int, reward_head=None,
                     timeout_s: float = 10.0) -> list[dict]:
    """Rows for ``configs`` on one problem: completion, tests passed, and the router's accounting."""
    started = time.perf_counter()
    user, prefix = chat_request(problem)
    oracle = PairOracle(slm, llm, tokenizer.prompt_ids(user, assistant_prefix=prefix),
                        hidden=any(c.policy == "reward" for c in configs))
    rows = []
    for config in configs:
        policy = make_configured_policy(config, seed=index, reward_head=reward_head)
        done = asyncio.run(complete(oracle, tokenizer, policy, max_tokens=max_tokens, stop=(CLOSING_FENCE,)))
        acc = done.accounting
        rows.append({"task_id": problem.task_id, "config": config.label, **asdict(config),
                     "completion": completion_code(done.text), "tokens": acc.total_tokens,
                     "edge_tokens": acc.edge_tokens, "cloud_tokens": acc.cloud_tokens,
                     "checked_tokens": acc.checked_tokens, "round_trips": acc.round_trips,
                     "bytes_up": acc.bytes_up, "bytes_down": acc.bytes_down, "drafted": acc.drafted_tokens,
                     "finish_reason": acc.finish_reason, "llm_agreement": done.llm_agreement})
    generate_s = time.perf_counter() - started
    codes = sorted({row["completion"] for row in rows})
    results = dict(zip(codes, run_many([program(problem, code) for code in codes], timeout_s=timeout_s),
                       strict=True))
    for row in rows:
        result = results[row["completion"]]
        row.update(passed=result.passed, status=result.status)
    cost = {**cost_summary(oracle), "generate_s": round(generate_s, 2),
            "test_s": round(time.perf_counter() - started - generate_s, 2), "distinct_completions": len(codes)}
    rows[0]["problem_cost"] = cost
    return rows
