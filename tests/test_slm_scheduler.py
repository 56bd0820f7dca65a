"""Batched SLM steps across requests: the same tokens and logits as one request at a time."""

from __future__ import annotations

import asyncio

import pytest
import torch

from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.edge_node.scheduler import SlmScheduler
from edgecloud.models.kv_cache import ArenaCache

PROMPTS = [[5, 9, 13], [7, 1, 2, 2, 30, 11, 4], [40], [3, 3, 8, 21, 6]]


@pytest.mark.parametrize("shared", [False, True], ids=["own-caches", "arena"])
def test_decode_sessions_equals_one_session_at_a_time(slm, shared: bool) -> None:
    """Caches of different lengths decoded in one forward == each decoded alone (fp32, 1e-5), whether
    each session has its own cache or all share an arena (one padded attention per layer)."""
    arena = slm.new_arena(slots=2, max_tokens=64) if shared else None  # fewer slots than sessions: the arena grows
    alone = [Drafter(slm, p) for p in PROMPTS]
    together = [Drafter(slm, p, arena=arena, capacity=64) for p in PROMPTS]
    assert not shared or all(isinstance(d.cache, ArenaCache) for d in together)
    _decode_alone_and_together(slm, alone, together, steps=6, stride=17)


def _decode_alone_and_together(slm, alone: list[Drafter], together: list[Drafter], *, steps: int, stride: int) -> None:
    """Feed the same tokens one drafter at a time and in batched steps; the two must agree each step."""
    for step in range(steps):
        tokens = [(stride * step + 5 * i) % slm.config.vocab_size for i in range(len(alone))]
        for drafter, token in zip(alone, tokens, strict=True):
            drafter.feed(token)
        Drafter.feed_batch(together, tokens)
        for a, b in zip(alone, together, strict=True):
            assert a.num_tokens == b.num_tokens
            torch.testing.assert_close(b._logits, a._logits, rtol=1e-5, atol=1e-5)
            assert a.draft()[0] == b.draft()[0]


def test_concurrent_requests_are_batched_and_unchanged(slm) -> None:
    def greedy(prompt: list[int], steps: int) -> list[int]:
        drafter, out = Drafter(slm, prompt), []
        for _ in range(steps):
            token, _ = drafter.draft()
            out.append(token)
            drafter.feed(token)
        return out

    async def scenario() -> tuple[list[list[int]], SlmScheduler]:
        scheduler = SlmScheduler()

        async def one(prompt: list[int]) -> list[int]:
            drafter = ThreadedDrafter(Drafter(slm, prompt, prefill=False), scheduler)
            await drafter.prefill(2)
            out = []
            for _ in range(12):
                token, _ = await drafter.draft()
                out.append(token)
                await drafter.feed(token)
            return out

        try:
            return await asyncio.gather(*(one(p) for p in PROMPTS)), scheduler
        finally:
            await scheduler.close()

    outputs, scheduler = asyncio.run(scenario())
    assert outputs == [greedy(p, 12) for p in PROMPTS]
    assert scheduler.batches > 0 and scheduler.batched_feeds >= 2 * scheduler.batches


def test_prefill_sessions_equals_each_prompt_alone(slm) -> None:
    """Prompts of different lengths prefilled in one padded forward: each row's logits and cache are
    those of the prompt prefilled alone, and decoding on from them agrees (fp32, 1e-5)."""
    arena = slm.new_arena(slots=2, max_tokens=64)
    alone = [Drafter(slm, p) for p in PROMPTS]
    together = [Drafter(slm, p, prefill=False, arena=arena, capacity=64) for p in PROMPTS]
    Drafter.prefill_batch(together, [len(p) for p in PROMPTS])
    for a, b, prompt in zip(alone, together, PROMPTS, strict=True):
        assert b.prefilled and b.num_tokens == a.num_tokens == len(prompt)
        torch.testing.assert_close(b._logits, a._logits, rtol=1e-5, atol=1e-5)
        (token_a, feats_a), (token_b, feats_b) = a.draft(), b.draft()
        assert token_b == token_a and feats_b.position == feats_a.position == 0
        assert feats_b.entropy == pytest.approx(feats_a.entropy, rel=1e-5)
    _decode_alone_and_together(slm, alone, together, steps=4, stride=11)


def test_arena_slots_are_reused_and_rows_stay_apart(slm) -> None:
    arena = slm.new_arena(slots=2, max_tokens=32)
    first = Drafter(slm, PROMPTS[1], arena=arena, capacity=32)
    assert isinstance(first.cache, ArenaCache)
    slot = first.cache.slot
    reference = Drafter(slm, PROMPTS[1])
    del first  # its slot goes back to the arena
    others = [Drafter(slm, p, arena=arena, capacity=32) for p in PROMPTS]  # one of them takes the freed slot
    assert slot in {d.cache.slot for d in others} and arena.slots >= len(PROMPTS)
    torch.testing.assert_close(others[1]._logits, reference._logits, rtol=1e-5, atol=1e-5)
    too_long = Drafter(slm, PROMPTS[0], arena=arena, capacity=33)  # over max_tokens: a cache of its own
    assert not isinstance(too_long.cache, ArenaCache)
    with pytest.raises(ValueError, match="exceed"):
        arena.reserve(33)
