"""Batched SLM steps across requests: the same tokens and logits as one request at a time."""

from __future__ import annotations

import asyncio

import torch

from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.edge_node.scheduler import SlmScheduler

PROMPTS = [[5, 9, 13], [7, 1, 2, 2, 30, 11, 4], [40], [3, 3, 8, 21, 6]]


def test_decode_sessions_equals_one_session_at_a_time(slm) -> None:
    """Caches of different lengths decoded in one forward == each decoded alone (fp32, 1e-5)."""
    alone = [Drafter(slm, p) for p in PROMPTS]
    together = [Drafter(slm, p) for p in PROMPTS]
    for step in range(6):
        tokens = [(17 * step + 5 * i) % slm.config.vocab_size for i in range(len(PROMPTS))]
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
