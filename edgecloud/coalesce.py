"""Coalescing a stream: the producer runs ahead, the consumer takes everything that is ready.

A server-streaming handler that writes one message per item pays the transport's per-message cost
(and the client's) for each. With ``coalesced`` the items are produced in a task of their own while
the last batch is being written, and each write carries all items that became ready meanwhile: one
message per item when the writer keeps up, fewer when it is the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")


async def drain(items: AsyncGenerator[T, None], put: Callable[[T], object]) -> BaseException | None:
    """``put`` each item of ``items``; the exception that ended it, or None. A CancelledError raised inside
    ``items`` (a call it made was cancelled) is returned like any error, so that it is not taken for the
    stream's end; the cancellation of the task running this propagates."""
    try:
        async for item in items:
            put(item)
    except asyncio.CancelledError as exc:
        if asyncio.current_task().cancelling():
            raise
        return exc
    except Exception as exc:
        return exc
    return None


async def coalesced(items: AsyncGenerator[T, None]) -> AsyncIterator[list[T]]:
    """The items of ``items`` in order, in lists of all those ready when the consumer asks.

    An exception from ``items`` is raised here after the items before it; closing this generator
    (or cancelling its consumer) cancels the producer, which closes ``items``.
    """
    ready: list[T] = []
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    def put(item: T) -> None:
        ready.append(item)
        wake.set()

    async def produce() -> None:
        nonlocal finished
        try:
            if (error := await drain(items, put)) is not None:
                failure.append(error)  # raised to the consumer after the items before it
        finally:
            finished = True
            wake.set()

    producer = asyncio.get_running_loop().create_task(produce())
    try:
        while True:
            await wake.wait()
            wake.clear()
            if ready:
                batch, ready[:] = ready[:], []
                yield batch
            if finished and not ready:
                if failure:
                    raise failure[0]
                return
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        with contextlib.suppress(Exception):
            await items.aclose()  # a no-op once the producer ended it; closes it if it never started
