"""Tensor parallelism on the real Qwen2.5-Coder-1.5B: greedy through groups of 2 and 3 worker processes
equals single-process greedy (fp32, so that only the order of the partial sums differs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.sharded import write_shards
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.models.tp_worker import local_group

pytestmark = pytest.mark.slow
PROMPT = "Write a Python function that checks whether a string is a palindrome."
TOKENS = 32


@pytest.fixture(scope="module")
def folder(real_llm_folder) -> Path:
    return real_llm_folder


@pytest.fixture(scope="module")
def expected(folder: Path) -> tuple[list[int], list[int]]:
    ids = Tokenizer.from_folder(folder).prompt_ids(PROMPT)
    model = load_model(folder, dtype=torch.float32)
    out = list(generate_ids(model, ids, max_new_tokens=TOKENS))
    del model
    return ids, out


@pytest.mark.parametrize(("ways", "weights"), [(2, None), (3, [2, 1, 1])])
def test_real_model_greedy_through_a_group_equals_one_process(folder, expected, ways, weights, tmp_path) -> None:
    ids, reference = expected
    write_shards(folder, tmp_path / "shards", ways, weights)
    with local_group(tmp_path / "shards", timeout_s=120) as group, torch.inference_mode():
        logits = group.forward(torch.tensor([ids]), last_n=1)
        out = []
        while len(out) < TOKENS:
            out.append(int(logits[0, -1].argmax()))
            logits = group.forward(torch.tensor([[out[-1]]]))
    assert out == reference
