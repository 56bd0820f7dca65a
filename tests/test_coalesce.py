"""coalesced(): a stream's items in order, batched by what was ready, errors and closing passed on."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edgecloud.coalesce import coalesced


async def _numbers(n: int, log: list[str], fail_at: int | None = None):
    try:
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"item {i}")
            yield i
            await asyncio.sleep(0)
    finally:
        log.append("closed")


def test_a_slow_consumer_gets_what_piled_up_in_order() -> None:
    async def scenario():
        log: list[str] = []
        batches = []
        async for batch in coalesced(_numbers(20, log)):
            batches.append(batch)
            await asyncio.sleep(0.005)  # the writer is the bottleneck: items pile up meanwhile
        return batches, log

    batches, log = asyncio.run(scenario())
    assert [i for b in batches for i in b] == list(range(20))
    assert len(batches) < 20 and all(batches)
    assert log == ["closed"]


def test_a_failure_comes_after_the_items_before_it() -> None:
    async def scenario():
        got = []
        with pytest.raises(ValueError, match="item 5"):
            async for batch in coalesced(_numbers(9, [], fail_at=5)):
                got.extend(batch)
        return got

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_closing_early_stops_and_closes_the_source() -> None:
    async def scenario():
        log: list[str] = []

        async def endless():
            try:
                while True:
                    yield 1
                    await asyncio.sleep(0.001)
            finally:
                log.append("closed")

        async with contextlib.aclosing(coalesced(endless())) as batches:
            async for _ in batches:
                break
        return log

    assert asyncio.run(scenario()) == ["closed"]


def test_a_cancellation_inside_the_source_is_an_error_not_an_end() -> None:
    """E.g. a call the source made was cancelled: the consumer must not take it for the stream's end."""
    async def cancelled_inside():
        yield 1
        raise asyncio.CancelledError

    async def scenario():
        got = []
        with pytest.raises(asyncio.CancelledError):
            async for batch in coalesced(cancelled_inside()):
                got.extend(batch)
        return got

    assert asyncio.run(scenario()) == [1]
