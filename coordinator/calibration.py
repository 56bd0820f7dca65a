"""Calibration material for a policy's threshold (``policy.calibrate`` picks the quantile).

Two sources, both from the standard library's ``calibration`` split (never evaluation
prompts): ``calibration_tasks`` builds code-completion requests from its documented
functions — the edge model's *own generations* on them have the uncertainty profile of
served requests, which teacher-forced human code does not (the model is far more
uncertain reading someone else's code than writing its own); ``teacher_forced_features``
reads text as written (used for reward-model data).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Sequence

import torch

from edgecloud.coordinator.features import TokenFeatures, uncertainty
from edgecloud.corpus import stdlib_files
from edgecloud.models.llama import LlamaModel

CODE_FENCE = "```python\n"


def calibration_texts(max_files: int = 8, max_chars: int = 3000) -> list[str]:
    """The first characters of a few files of the calibration split."""
    return [path.read_text(errors="replace")[:max_chars] for path in stdlib_files("calibration")[:max_files]]


def calibration_tasks(count: int = 8, max_header_lines: int = 30) -> list[tuple[str, str]]:
    """(user message, assistant prefix) code-completion requests from documented functions.

    Each is a function's signature and docstring, asked for as "Complete the following
    Python function", with the answer opened by a code fence and the header — the shape of
    the requests edgecloud serves. Deterministic: files and functions in source order.
    """
    tasks: list[tuple[str, str]] = []
    for path in stdlib_files("calibration"):
        source = path.read_text(errors="replace")
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        lines = source.splitlines()
        for node in tree.body:
            if not (isinstance(node, ast.FunctionDef) and ast.get_docstring(node) and len(node.body) > 1):
                continue
            doc = node.body[0]
            header = "\n".join(lines[node.lineno - 1:doc.end_lineno])
            if doc.end_lineno - node.lineno >= max_header_lines:
                continue
            header = textwrap.dedent(header) + "\n"
            tasks.append((f"Complete the following Python function.\n\n```python\n{header}```",
                          CODE_FENCE + header))
            break  # one function per file, for variety
        if len(tasks) >= count:
            break
    return tasks


@torch.inference_mode()
def teacher_forced_features(model: LlamaModel, token_ids: Sequence[int], *,
                            with_hidden: bool = False) -> list[TokenFeatures]:
    """Features of the model's next-token distribution at every position of ``token_ids``."""
    ids = torch.tensor([list(token_ids)], device=model.device)
    hidden = model.forward_layers(model.embed(ids), 0, model.config.num_layers)  # (1, T, C)
    logits = model.head(hidden)[0]  # (T, V)
    normed = model.norm(hidden)[0].float() if with_hidden else None
    entropy, max_prob, margin = uncertainty(logits)
    return [TokenFeatures(float(entropy[i]), float(max_prob[i]), float(margin[i]), i,
                          None if normed is None else normed[i]) for i in range(len(token_ids))]

