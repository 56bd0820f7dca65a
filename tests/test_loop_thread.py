"""The background event loop that blocking callers (the SDK's Client, simulator scripts) run coroutines on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from edgecloud.loop_thread import LoopThread


def test_run_returns_results_and_raises_errors() -> None:
    async def double(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    async def fail() -> None:
        raise ValueError("no")

    with LoopThread() as loop:
        assert loop.run(double(21)) == 42
        assert loop.call(threading.current_thread) is loop.thread
        with pytest.raises(ValueError, match="no"):
            loop.run(fail())


def test_a_caller_that_stops_waiting_stops_the_coroutine() -> None:
    """A timed-out (or Ctrl-C'd) wait cancels the coroutine, so that e.g. a stream can then be closed
    (closing an async generator whose __anext__ still runs raises RuntimeError)."""
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def numbers():
        while True:
            await asyncio.sleep(30)
            yield 1

    with LoopThread() as loop:
        with pytest.raises(concurrent.futures.TimeoutError):
            loop.run(forever(), timeout_s=0.05)
        assert cancelled.wait(5)
        stream = numbers()
        with pytest.raises(concurrent.futures.TimeoutError):
            loop.run(stream.__anext__(), timeout_s=0.05)
        loop.run(stream.aclose())


def test_shared_loop_is_one_per_process() -> None:
    assert LoopThread.shared() is LoopThread.shared()
    assert LoopThread.shared().thread.is_alive()


def test_iterate_yields_in_order_raises_after_and_closes_when_stopped_early() -> None:
    closed = threading.Event()

    async def numbers(fail_at: int | None = None):
        try:
            for i in range(1000):
                if i == fail_at:
                    raise ValueError(f"at {i}")
                yield i
                await asyncio.sleep(0)
        finally:
            closed.set()

    with LoopThread() as loop:
        assert list(loop.iterate(numbers())) == list(range(1000))
        got = []
        with pytest.raises(ValueError, match="at 7"):
            for item in loop.iterate(numbers(fail_at=7)):
                got.append(item)
        assert got == list(range(7))
        closed.clear()
        for item in loop.iterate(numbers()):
            if item == 3:
                break
        assert closed.is_set()  # closed on the loop before the early exit returned


def test_iterate_does_not_take_a_cancellation_inside_for_the_end() -> None:
    async def cancelled_inside():
        yield 1
        raise asyncio.CancelledError

    with LoopThread() as loop:
        got = []
        with pytest.raises(asyncio.CancelledError):
            for item in loop.iterate(cancelled_inside()):
                got.append(item)
        assert got == [1]
