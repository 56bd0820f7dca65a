"""One device's SLM work for all requests: a FIFO worker that batches single-token steps.

hivemind's shape: handlers hand work to a runtime that batches across clients. Every request's
forwards go through one queue; whatever single-token ``feed``s are waiting when the worker
comes round run as ONE forward over all those sessions (``Drafter.feed_batch``), other work
(prompt prefill chunks, rollbacks) one at a time. Compute runs in a worker thread, never on
the event loop, and nothing is held across a cloud round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecloud.edge_node.drafter import Drafter

MAX_BATCH = 32


@dataclass
class _Job:
    future: asyncio.Future
    fn: Callable[..., Any] | None = None  # exclusive work
    args: tuple = ()
    drafter: Drafter | None = None  # or batchable work: a single-token feed, or a prompt chunk
    token: int = 0
    prefill_tokens: int = 0  # > 0: a prompt chunk of at most this many tokens, not a feed


class SlmScheduler:
    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0  # forwards run for batched feeds (for tests and status)
        self.batched_feeds = 0

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` in the worker thread, in turn with every other request's SLM work."""
        return await self._submit(_Job(self._future(), fn=fn, args=args))

    async def feed(self, drafter: Drafter, token: int) -> None:
        """``drafter.feed(token)``, batched with the other requests' feeds waiting at the same time."""
        await self._submit(_Job(self._future(), drafter=drafter, token=token))

    async def prefill(self, drafter: Drafter, chunk_tokens: int) -> bool:
        """``drafter.prefill(chunk_tokens)``, batched with other requests' prompt chunks waiting at the
        same time; True once the whole prompt is cached."""
        await self._submit(_Job(self._future(), drafter=drafter, prefill_tokens=chunk_tokens))
        return drafter.prefilled

    def _future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._worker is None or self._worker.done():  # (re)start on this loop
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._work(self._queue))
        self._queue.put_nowait(job)
        return await job.future

    async def _work(self, queue: asyncio.Queue[_Job]) -> None:
        from edgecloud.edge_node.drafter import Drafter

        while True:
            jobs = [await queue.get()]
            while not queue.empty() and len(jobs) < self.max_batch:
                jobs.append(queue.get_nowait())
            jobs = [j for j in jobs if not j.future.done()]  # cancelled while waiting
            feeds = [j for j in jobs if j.drafter is not None and not j.prefill_tokens]
            if len(feeds) > 1:
                self.batches += 1
                self.batched_feeds += len(feeds)
                await self._finish(feeds, Drafter.feed_batch, [j.drafter for j in feeds], [j.token for j in feeds])
            elif feeds:
                await self._finish(feeds, feeds[0].drafter.feed, feeds[0].token)
            chunks = [j for j in jobs if j.prefill_tokens]
            if chunks:
                await self._finish(chunks, Drafter.prefill_batch, [j.drafter for j in chunks],
                                   [j.prefill_tokens for j in chunks])
            for job in jobs:
                if job.fn is not None:
                    await self._finish([job], job.fn, *job.args)

    @staticmethod
    async def _finish(jobs: list[_Job], fn: Callable[..., Any], *args) -> None:
        try:
            result = await asyncio.to_thread(fn, *args)
        except Exception as exc:  # handed to the callers, the worker goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job in jobs:
            if not job.future.done():
                job.future.set_result(result)

    async def close(self) -> None:
        if self._worker is not None and self._loop is asyncio.get_running_loop():
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
