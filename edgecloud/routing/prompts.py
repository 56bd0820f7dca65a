"""The shape of the code-completion requests edgecloud calibrates, trains and is evaluated on.

A user turn asks to complete a Python function; the assistant turn opens with a Python code
fence and the function's header, so that the model continues the body; the answer ends with
the closing fence (or an end token).
"""

from __future__ import annotations

from collections.abc import Sequence

CODE_FENCE = "```python\n"
CLOSING_FENCE = "```"


def completion_request(code: str) -> tuple[str, str]:
    """(user message, assistant prefix) asking to complete ``code``: the answer opens with a fence and the code."""
    return f"Complete the following Python function.\n\n{CODE_FENCE}{code}{CLOSING_FENCE}", CODE_FENCE + code


def ends_answer(tokenizer, ids: Sequence[int]) -> bool:
    """True once an answer's last token is an end token or closes the code fence."""
    return bool(ids) and (ids[-1] in tokenizer.eos_token_ids or CLOSING_FENCE in tokenizer.decode(list(ids[-4:])))
