"""One device's SLM work for all requests: a worker that batches the requests' steps.

hivemind's shape: handlers hand work to a runtime that batches across clients. Every request's
forwards go through one queue. A feed is a *run*: its token, then (when the router asks) each
next draft that the request's policy keeps on the edge, for at most ``max_run_s`` — the
per-token hops (futures, thread hand-offs, event-loop wake-ups) are paid once per run, not per
token. All runs in progress advance together, ONE forward per step over all their sessions
(``Drafter.feed_batch``); new work joins between steps: feeds join the runs, waiting prompt
chunks run as one batched forward, other work (rollbacks) one job at a time. Compute runs in a
worker thread of its own, never on the event loop: it steps back to back without waiting for the
loop, and hands each step's finished jobs to their loops in one call; it ends when idle, and the
next job starts it again. Nothing is held across a cloud round trip."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgecloud.edge_node.drafter import Drafter
    from edgecloud.routing.router import KeepDraft

MAX_BATCH = 32
MAX_RUN_S = 0.05  # a run's tokens stream together, and other work waits for it: keep that unnoticeable
IDLE_EXIT_S = 10.0  # the worker thread ends after this long with nothing to do (the next job starts one)


@dataclass
class _Job:
    future: asyncio.Future
    fn: Callable[..., Any] | None = None  # exclusive work
    args: tuple = ()
    drafter: Drafter | None = None  # or batchable work: a feed (maybe a run), or a prompt chunk
    token: int = 0
    keep: KeepDraft | None = None  # a run: feed the next drafts while this says so
    max_tokens: int = 1  # tokens a run may feed in all
    fed: list[int] = field(default_factory=list)  # a run's tokens fed so far
    run_started: float = 0.0
    prefill_tokens: int = 0  # > 0: a prompt chunk of at most this many tokens, not a feed


class SlmScheduler:
    def __init__(self, max_batch: int = MAX_BATCH, max_run_s: float = MAX_RUN_S, idle_exit_s: float = IDLE_EXIT_S
                 ) -> None:
        self.max_batch = max_batch
        self.max_run_s = max_run_s
        self.idle_exit_s = idle_exit_s
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # starting the worker, and its exit when idle
        self._closing = False  # close() asked: the worker exits once nothing is left
        self.batches = 0  # forwards run for batched feeds (for tests and status)
        self.batched_feeds = 0

    @property
    def depth(self) -> int:
        """Jobs waiting for the worker (the queue depth metric)."""
        return self._queue.qsize()

    async def run(self, fn: Callable[..., Any], *args) -> Any:
        """``fn(*args)`` in the worker thread, in turn with every other request's SLM work."""
        return await self._submit(_Job(self._future(), fn=fn, args=args))

    async def feed(self, drafter: Drafter, token: int) -> None:
        """``drafter.feed(token)``, batched with the other requests' feeds waiting at the same time."""
        await self._submit(_Job(self._future(), drafter=drafter, token=token))

    async def feed_run(self, drafter: Drafter, token: int, keep: KeepDraft, max_tokens: int) -> list[int]:
        """The router's ``feed_run``: ``token`` and the drafts after it that ``keep`` keeps, batched step by
        step with the other requests' feeds and runs waiting at the same time."""
        return await self._submit(_Job(self._future(), drafter=drafter, token=token, keep=keep,
                                       max_tokens=max_tokens))

    async def prefill(self, drafter: Drafter, chunk_tokens: int) -> bool:
        """``drafter.prefill(chunk_tokens)``, batched with other requests' prompt chunks waiting at the
        same time; True once the whole prompt is cached."""
        await self._submit(_Job(self._future(), drafter=drafter, prefill_tokens=chunk_tokens))
        return drafter.prefilled

    def _future(self) -> asyncio.Future:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        with self._lock:  # the worker exits when idle only under this lock, so a job is never stranded
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="slm-scheduler", daemon=True)
                self._thread.start()
        return await job.future

    def _next_jobs(self, block: bool) -> list[_Job] | None:
        """The jobs queued now (at most ``max_batch``), waiting for one if ``block``; None: exit (idle, or
        closing with nothing left to do)."""
        jobs: list[_Job] = []
        while len(jobs) < self.max_batch:
            wait = block and not jobs and not self._closing
            try:
                job = self._queue.get(timeout=self.idle_exit_s) if wait else self._queue.get_nowait()
            except queue.Empty:
                if jobs or not block:
                    break
                with self._lock:
                    if self._queue.empty():  # idle (or closed): the next job starts a new worker
                        self._thread, self._closing = None, False
                        return None
                continue
            if job is None:  # close(): finish what is queued and in progress, then exit
                self._closing = True
                continue
            jobs.append(job)
        return [j for j in jobs if not j.future.done()]  # cancelled while waiting

    def _work(self) -> None:
        """The worker thread: runs every job; results go back to each job's event loop, one hand-off
        per step (not per token, and the loop is never waited for between steps)."""
        try:
            self._serve()
        finally:  # even if something no job handler catches gets out: no job waits for a dead worker
            with self._lock:
                if self._thread is threading.current_thread():
                    self._thread = None
                    if not self._queue.empty():
                        self._thread = threading.Thread(target=self._work, name="slm-scheduler", daemon=True)
                        self._thread.start()

    def _serve(self) -> None:
        from edgecloud.edge_node.drafter import Drafter  # (it imports this module)

        runs: list[_Job] = []  # feeds in progress: each step feeds every one of them in one forward
        waiting: list[_Job] = []  # feeds that will join the runs when a place is free (max_batch at once)
        while (jobs := self._next_jobs(block=not (runs or waiting))) is not None:
            waiting += [j for j in jobs if j.drafter is not None and not j.prefill_tokens]
            runs = [j for j in runs if not j.future.done()]  # callers gone mid-run
            waiting = [j for j in waiting if not j.future.done()]
            while waiting and len(runs) < self.max_batch:  # join the runs already going, at their next step
                job = waiting.pop(0)
                job.fed, job.run_started = [job.token], time.perf_counter()
                runs.append(job)
            if runs:
                self.batches += len(runs) > 1
                self.batched_feeds += len(runs) if len(runs) > 1 else 0
                try:
                    ended = self._step(runs, self.max_run_s)
                except Exception as exc:  # the forward failed: every run in it ends with the error
                    ended = [(job, exc) for job in runs]
                _settle_all(ended)
                done = {id(job) for job, _ in ended}
                runs = [j for j in runs if id(j) not in done]
            chunks = [j for j in jobs if j.prefill_tokens]
            if chunks:
                self._finish(chunks, Drafter.prefill_batch, [j.drafter for j in chunks],
                             [j.prefill_tokens for j in chunks])
            for job in jobs:
                if job.fn is not None:
                    self._finish([job], job.fn, *job.args)

    @staticmethod
    def _step(runs: list[_Job], max_run_s: float) -> list[tuple[_Job, list[int] | Exception]]:
        """In the worker thread: one forward over the runs' last tokens; the runs that end with it, with
        their results. A run ends when its ``keep`` (none: a plain feed) says no or raises, at its
        ``max_tokens``, or once it has gone on for ``max_run_s`` (its draft then stays undecided)."""
        from edgecloud.edge_node.drafter import Drafter

        if len(runs) == 1:
            runs[0].drafter.feed(runs[0].fed[-1])
        else:
            Drafter.feed_batch([j.drafter for j in runs], [j.fed[-1] for j in runs])
        now = time.perf_counter()
        ended: list[tuple[_Job, list[int] | Exception]] = []
        for job in runs:
            if job.keep is None or len(job.fed) >= job.max_tokens or now - job.run_started >= max_run_s:
                ended.append((job, job.fed))
                continue
            draft, features = job.drafter.draft()
            try:
                kept = job.keep(draft, features)
            except Exception as exc:  # this request's policy failed: the other runs go on
                ended.append((job, exc))
                continue
            if kept:
                job.fed.append(draft)
            else:
                ended.append((job, job.fed))
        return ended

    @staticmethod
    def _finish(jobs: list[_Job], fn: Callable[..., Any], *args) -> None:
        """``fn(*args)`` here; its result, or its exception, goes to each of ``jobs``."""
        try:
            result = fn(*args)
        except Exception as exc:  # handed to the callers, the worker goes on
            result = exc
        _settle_all([(job, result) for job in jobs])

    async def close(self) -> None:
        """Stop the worker once the jobs queued and in progress are done."""
        with self._lock:  # the worker cannot exit idle between this check and the sentinel
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            await asyncio.to_thread(thread.join)


def _settle_all(outcomes: list[tuple[_Job, Any]]) -> None:
    """From the worker thread: each job's outcome, set on its own loop (one wake-up per loop)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any]]] = {}
    for job, outcome in outcomes:
        by_loop.setdefault(job.future.get_loop(), []).append((job, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: its callers are gone
            loop.call_soon_threadsafe(_settle_each, settled)


def _settle_each(outcomes: list[tuple[_Job, Any]]) -> None:
    for job, outcome in outcomes:
        try:
            _settle(job, outcome)
        except Exception as exc:  # an exception a future refuses (StopIteration): the caller still hears
            job.future.set_exception(RuntimeError(f"SLM work failed: {exc!r}"))


def _settle(job: _Job, outcome: Any) -> None:
    if job.future.done():  # the caller is gone
        return
    if isinstance(outcome, Exception):
        job.future.set_exception(outcome)
    else:
        job.future.set_result(outcome)
