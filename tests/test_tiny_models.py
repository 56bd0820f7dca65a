"""The guard on the tiny test models: a test of the router on models that repeat one token, or whose
SLM and LLM always (or never) agree, cannot fail when the router is broken.

Greedy outputs must be varied (at least half of the tokens distinct), must depend on the prompt (at
least half as many distinct outputs as prompts, for each model), and the SLM, teacher-forced on the
LLM's greedy output, must pick the LLM's token on 30-80% of the positions.
"""

from __future__ import annotations

import pytest

from edgecloud.models.generate import generate_ids


def _assert_guarded(stats) -> None:
    assert stats.slm_distinct >= 0.5 and stats.llm_distinct >= 0.5, stats
    assert 0.3 <= stats.agreement <= 0.8, stats
    assert stats.prompt_dependence >= 0.5, stats


def test_token_fixtures_are_varied_and_partly_agree(tiny_models) -> None:
    _assert_guarded(tiny_models[2])  # measured by the fixture on its models


def test_text_pair_is_varied_and_partly_agrees(tmp_path, make_tiny_pair, tiny_guard) -> None:
    folders = make_tiny_pair(tmp_path, tiny_guard.pair_seeds)
    assert set(folders) == {"slm", "llm"}
    _assert_guarded(make_tiny_pair.guarded[tiny_guard.pair_seeds])


def test_outputs_depend_on_more_than_the_last_token(slm, llm) -> None:
    """Two prompts that end in the same token continue differently: the models read more than one token
    (the toy language is order 3, so prompts sharing their last three tokens may rightly continue alike)."""
    for model in (slm, llm):
        first = list(generate_ids(model, [3, 14, 15, 9, 2, 6], max_new_tokens=12))
        second = list(generate_ids(model, [40, 33, 7, 11, 5, 6], max_new_tokens=12))
        assert first != second


def test_guard_rejects_outputs_that_ignore_the_prompt(slm, llm, tiny_guard) -> None:
    same = [tiny_guard.prompts[0]] * 3  # one output for three prompts: as if the models ignored them
    with pytest.raises(AssertionError, match="hardly depend on the prompt"):
        tiny_guard.check(slm, llm, same)


def test_guard_rejects_a_pair_that_always_agrees(slm, tiny_guard) -> None:
    with pytest.raises(AssertionError, match="agree too rarely or too often"):
        tiny_guard.check(slm, slm, tiny_guard.prompts[:2])
