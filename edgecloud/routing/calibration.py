"""Calibration material for a policy's threshold (``policy.calibrate`` picks the quantile).

From the standard library's ``calibration`` split (never evaluation prompts):
``calibration_tasks`` builds code-completion requests from its documented functions — the
edge model's *own generations* on them have the uncertainty profile of served requests,
which teacher-forced human code does not (the model is far more uncertain reading someone
else's code than writing its own). ``code_tasks`` (any split, several functions per file) and
``teacher_forced_pass`` are shared with the reward-head data (``reward_data``).
"""

from __future__ import annotations

import ast
import hashlib
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from edgecloud.corpus import Split, stdlib_files, stdlib_relative
from edgecloud.models.llama import LlamaModel
from edgecloud.routing.features import uncertainty
from edgecloud.routing.prompts import completion_request


@dataclass(frozen=True)
class CodeTask:
    """A code-completion request built from one documented standard-library function."""

    user: str  # the user message
    assistant_prefix: str  # opens the answer: a code fence and the function's header
    file: str  # path of the source file relative to the standard library
    function: str
    line: int


def mixed_order(paths: Sequence[Path]) -> list[Path]:
    """A deterministic shuffle (by a salted sha1 of each path), so that the first k files of a
    split sample the whole library rather than its first letters; growing k keeps the prefix."""
    return sorted(paths, key=lambda p: hashlib.sha1(f"mix:{stdlib_relative(p)}".encode()).hexdigest())


def code_tasks(split: Split, count: int, *, per_file: int = 1, max_header_lines: int = 30,
               mixed: bool = False) -> list[CodeTask]:
    """Up to ``count`` requests from the documented top-level functions of one split's files.

    Each is a function's signature and docstring, asked for as "Complete the following
    Python function", with the answer opened by a code fence and the header. Deterministic:
    the first eligible function of every file (in file order, or ``mixed_order``), then the
    second of every file, and so on up to ``per_file`` per file, for variety.
    """
    files = stdlib_files(split)
    per_file_tasks: list[list[CodeTask]] = []
    for path in mixed_order(files) if mixed else files:
        found = _documented_functions(path, stdlib_relative(path), per_file, max_header_lines)
        if found:
            per_file_tasks.append(found)
        if len(per_file_tasks) >= count:  # the first round alone fills the count
            break
    tasks: list[CodeTask] = []
    for rank in range(per_file):
        tasks.extend(found[rank] for found in per_file_tasks if rank < len(found))
    return tasks[:count]


def _documented_functions(path: Path, relative: str, limit: int, max_header_lines: int) -> list[CodeTask]:
    """The first ``limit`` top-level functions of a file with a docstring, a body and a short header."""
    source = path.read_text(errors="replace")
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    lines = source.splitlines()
    found: list[CodeTask] = []
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and len(node.body) > 1):
            continue
        doc = node.body[0]
        if doc.end_lineno - node.lineno >= max_header_lines:
            continue
        header = textwrap.dedent("\n".join(lines[node.lineno - 1:doc.end_lineno])) + "\n"
        found.append(CodeTask(*completion_request(header), relative, node.name, node.lineno))
        if len(found) >= limit:
            break
    return found


def calibration_tasks(count: int = 8, max_header_lines: int = 30) -> list[tuple[str, str]]:
    """(user message, assistant prefix) requests from the calibration split, one function per file."""
    return [(task.user, task.assistant_prefix)
            for task in code_tasks("calibration", count, max_header_lines=max_header_lines)]


@dataclass(frozen=True)
class ForcedPass:
    """One teacher-forced pass: the next-token distribution at each scored position, summarised."""

    greedy: torch.Tensor  # (T,) int64: the argmax token, what greedy decoding would pick there
    entropy: torch.Tensor  # (T,) float32, nats
    max_prob: torch.Tensor  # (T,)
    margin: torch.Tensor  # (T,) top-1 minus top-2 probability
    hidden: torch.Tensor | None  # (T, C) float32 final-norm hidden state, if asked for
    logprob: torch.Tensor | None  # (T,) float32 log-probability of ``score_tokens``, if given


@torch.inference_mode()
def teacher_forced_pass(model: LlamaModel, token_ids: Sequence[int], *, start: int = 0, with_hidden: bool = False,
                        score_tokens: torch.Tensor | None = None, chunk_positions: int = 128) -> ForcedPass:
    """One forward pass over ``token_ids``; results for positions ``start`` onwards.

    ``score_tokens`` (T,): a token per scored position whose log-probability is returned.
    The LM head runs ``chunk_positions`` positions at a time (full-vocabulary logits are large).
    """
    if not 0 <= start < len(token_ids):
        raise ValueError(f"start {start} is outside the {len(token_ids)} tokens")
    ids = torch.tensor([list(token_ids)], device=model.device)
    hidden = model.forward_layers(model.embed(ids), 0, model.config.num_layers)[:, start:]  # (1, T, C)
    count = hidden.shape[1]
    if score_tokens is not None and score_tokens.shape != (count,):
        raise ValueError(f"score_tokens has shape {tuple(score_tokens.shape)}, expected ({count},)")
    parts: list[tuple[torch.Tensor, ...]] = []
    for begin in range(0, count, chunk_positions):
        logits = model.head(hidden[:, begin:begin + chunk_positions])[0]  # (t, V) float32
        entropy, max_prob, margin = uncertainty(logits)
        logprob = (logits.gather(-1, score_tokens[begin:begin + chunk_positions, None].to(logits.device))[:, 0]
                   - logits.logsumexp(-1)) if score_tokens is not None else entropy.new_zeros(0)
        parts.append((logits.argmax(-1), entropy, max_prob, margin, logprob))
    greedy, entropy, max_prob, margin, logprob = (torch.cat(column) for column in zip(*parts, strict=True))
    normed = model.norm(hidden)[0].float() if with_hidden else None
    return ForcedPass(greedy, entropy, max_prob, margin, normed, logprob if score_tokens is not None else None)
