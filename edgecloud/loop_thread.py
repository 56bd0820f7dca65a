"""An asyncio event loop on a background thread, for synchronous callers: the blocking SDK
``Client``, and tests and scripts that need proxies running beside them."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from edgecloud.coalesce import drain

T = TypeVar("T")


class LoopThread:
    """``with LoopThread() as lt: link = lt.run(ShapingProxy.create(...))``."""

    _shared: LoopThread | None = None
    _shared_lock = threading.Lock()

    def __init__(self, name: str = "edgecloud-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)

    @classmethod
    def shared(cls) -> LoopThread:
        """The one loop of this process that every blocking SDK client uses, started on first use.

        grpc.aio binds its completion-queue poller to the first loop it runs on, so clients must
        not each bring a loop of their own and close it.
        """
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls("edgecloud-client")
                cls._shared.thread.start()
            return cls._shared

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, coro: Awaitable[T], timeout_s: float | None = 60.0) -> T:
        """Run a coroutine on the loop and wait for its result."""
        async def wrapper() -> T:
            return await coro

        future = asyncio.run_coroutine_threadsafe(wrapper(), self.loop)
        try:
            return future.result(timeout_s)
        except BaseException:  # timed out, or the caller interrupted (Ctrl-C): stop the coroutine too
            future.cancel()
            raise

    def iterate(self, items: AsyncGenerator[T, None]) -> Iterator[T]:
        """An async generator's items on the caller's thread, produced on the loop ahead of the caller
        through a queue: a burst of items costs one thread hand-off, not one per item. Stopping early
        (``break``, an exception, Ctrl-C) closes the generator on the loop before this returns."""
        ready: queue.SimpleQueue = queue.SimpleQueue()
        end = object()

        async def pump() -> None:
            try:
                if (error := await drain(items, lambda item: ready.put((item, None)))) is not None:
                    ready.put((None, error))  # raised on the caller's side, after the items before it
            finally:
                ready.put((end, None))

        task = self.call(lambda: self.loop.create_task(pump()))
        ended = False
        try:
            while True:
                item, error = ready.get()
                if error is not None:
                    raise error
                if item is end:
                    ended = True
                    return
                yield item
        finally:
            if not ended:  # the caller stopped early (or the stream failed): make sure it is closed
                self.run(_cancel_and_wait(task), timeout_s=None)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a plain function on the loop's thread and wait for its result."""
        async def wrapper() -> T:
            return fn(*args)

        return self.run(wrapper())

    def close(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


async def _cancel_and_wait(task: asyncio.Task) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
