"""Coalescing a stream: the producer runs ahead, the consumer takes everything that is ready.

A server-streaming handler that writes one message per item pays the transport's per-message cost
(and the client's) for each. With ``coalesced`` the items are produced in a task of their own while
the last batch is being written, and each write carries all items that became ready meanwhile: one
message per item when the writer keeps up, fewer when it is the bottleneck.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TypeVar

T = TypeVar("T")


async def coalesced(items: AsyncGenerator[T, None]) -> AsyncIterator[list[T]]:
    """The items of ``items`` in order, in lists of all those ready when the consumer asks.

    An exception from ``items`` is raised here after the items before it; closing this generator
    (or cancelling its consumer) cancels the producer, which closes ``items``.
    """
    ready: list[T] = []
    wake = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def produce() -> None:
        nonlocal finished
        try:
            async for item in items:
                ready.append(item)
                wake.set()
        except asyncio.CancelledError as exc:
            if asyncio.current_task().cancelling():  # our own cancel (the consumer closed): just stop
                raise
            failure.append(exc)  # raised inside ``items`` (e.g. a call it made was cancelled): an error
        except Exception as exc:  # handed to the consumer after what came before it
            failure.append(exc)
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
