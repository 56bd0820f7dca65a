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


def _greedy(slm, prompt: list[int], steps: int) -> list[int]:
    """One drafter alone, greedy: the reference for batched runs."""
    drafter, out = Drafter(slm, prompt), []
    for _ in range(steps):
        token, _ = drafter.draft()
        out.append(token)
        drafter.feed(token)
    return out


def test_concurrent_requests_are_batched_and_unchanged(slm) -> None:
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
    assert outputs == [_greedy(slm, p, 12) for p in PROMPTS]
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


def test_runs_of_several_requests_step_together_and_stop_where_asked(slm) -> None:
    """Each request's run feeds exactly the drafts its ``keep`` keeps, up to its limit; runs in progress
    advance in one forward per step; a ``keep`` that raises ends only its own run."""
    stop_after = {0: 3, 1: 9, 2: 5}  # request -> drafts its keep accepts before saying no
    expected = {i: _greedy(slm, PROMPTS[i], 12) for i in range(4)}

    async def scenario() -> tuple[dict, SlmScheduler]:
        scheduler = SlmScheduler(max_run_s=60.0)

        async def one(i: int):
            drafter = ThreadedDrafter(Drafter(slm, PROMPTS[i]), scheduler)
            asked: list[int] = []

            def keep(draft: int, features) -> bool:
                if i == 3:
                    raise RuntimeError("policy failed")
                asked.append(draft)
                return len(asked) <= stop_after.get(i, 99)

            first, _ = await drafter.draft()
            try:
                run = await drafter.feed_run(first, keep, 6 if i == 2 else 50)
            except RuntimeError as exc:
                return exc
            return run, asked, (await drafter.draft())[0], drafter.num_tokens

        results = await asyncio.gather(*(one(i) for i in range(4)))
        await scheduler.close()
        return dict(enumerate(results)), scheduler

    results, scheduler = asyncio.run(scenario())
    for i, limit in stop_after.items():
        run, asked, pending, cached = results[i]
        fed = min(limit + 1, 6) if i == 2 else limit + 1
        assert run == expected[i][:fed], i
        assert cached == len(PROMPTS[i]) + fed
        assert pending == expected[i][fed]  # the draft after the run is the greedy one, not fed
        # keep is asked once per draft it decides: never for the draft left when the limit ends the run
        assert asked == expected[i][1:fed + (i != 2)]
    assert isinstance(results[3], RuntimeError)
    assert scheduler.batches >= 3 and scheduler.batched_feeds >= 3 * 2  # steps shared by several runs


def test_a_run_stops_after_its_time_budget(slm) -> None:
    """With no time to spare a run feeds its first token only and leaves the next draft undecided."""
    async def scenario():
        scheduler = SlmScheduler(max_run_s=0.0)
        drafter = ThreadedDrafter(Drafter(slm, PROMPTS[1]), scheduler)
        asked: list[int] = []
        first, _ = await drafter.draft()
        run = await drafter.feed_run(first, lambda draft, _: asked.append(draft) or True, 50)
        await scheduler.close()
        return first, run, asked

    first, run, asked = asyncio.run(scenario())
    assert run == [first] and asked == []


def test_no_step_holds_more_sessions_than_max_batch(slm) -> None:
    widest: list[int] = []

    class Watching(SlmScheduler):
        @staticmethod
        def _step(runs, max_run_s):
            widest.append(len(runs))
            return SlmScheduler._step(runs, max_run_s)

    async def scenario() -> list[list[int]]:
        scheduler = Watching(max_batch=3, max_run_s=60.0)

        async def one(prompt: list[int]) -> list[int]:
            drafter = ThreadedDrafter(Drafter(slm, prompt), scheduler)
            first, _ = await drafter.draft()
            return await drafter.feed_run(first, lambda draft, _: True, 6)

        try:
            return await asyncio.gather(*(one(p) for p in PROMPTS * 2))
        finally:
            await scheduler.close()

    runs = asyncio.run(scenario())
    assert runs == [_greedy(slm, p, 6) for p in PROMPTS * 2]
    assert max(widest) == 3


def test_the_worker_thread_ends_when_idle_and_serves_any_loop(slm) -> None:
    """The worker is a thread of its own: it exits when idle, the next job starts a new one, and jobs
    from two event loops (two ``asyncio.run``) are both answered on their own loop."""
    scheduler = SlmScheduler(idle_exit_s=0.01)

    async def greedy(prompt: list[int]) -> list[int]:
        drafter = ThreadedDrafter(Drafter(slm, prompt), scheduler)
        first, _ = await drafter.draft()
        return await asyncio.wait_for(drafter.feed_run(first, lambda draft, _: True, 4), 10)  # a stranded job: fail

    assert asyncio.run(greedy(PROMPTS[0])) == _greedy(slm, PROMPTS[0], 4)
    first_worker = scheduler._thread  # None already if it has exited
    if first_worker is not None:
        first_worker.join(timeout=5)
        assert not first_worker.is_alive()
    assert scheduler._thread is None
    assert asyncio.run(greedy(PROMPTS[1])) == _greedy(slm, PROMPTS[1], 4)
    asyncio.run(scheduler.close())
    assert scheduler._thread is None


def test_close_finishes_the_work_queued_and_in_progress(slm) -> None:
    """close() while runs are going and more are queued: every caller still gets its tokens."""
    scheduler = SlmScheduler(max_batch=2, max_run_s=60.0)

    async def scenario() -> list[list[int]]:
        async def one(prompt: list[int]) -> list[int]:
            drafter = ThreadedDrafter(Drafter(slm, prompt), scheduler)
            first, _ = await drafter.draft()
            return await drafter.feed_run(first, lambda draft, _: True, 6)

        tasks = [asyncio.ensure_future(one(p)) for p in PROMPTS]
        while scheduler._thread is None:  # until the first job has started the worker
            await asyncio.sleep(0)
        await scheduler.close()
        return await asyncio.wait_for(asyncio.gather(*tasks), 10)  # a dropped job would time out

    assert asyncio.run(scenario()) == [_greedy(slm, p, 6) for p in PROMPTS]
