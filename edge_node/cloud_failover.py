"""A request's cloud link that survives a dying cloud: degrade, back off, resume (here or elsewhere).

``CloudHealth`` is the edge node's shared view of its clouds: a cloud whose call failed is *down*
until a retry succeeds, and is retried after an exponential backoff (``initial_backoff_s`` doubling
up to ``max_backoff_s``). ``FailoverCloudLink`` wraps one request's ``GrpcCloudLink``: while the
cloud is down, ``verify`` raises ``CloudDown`` at once (no network call) and the router writes the
flagged tokens itself (degraded mode); when the backoff has passed, a cheap status probe decides
whether to try again; when another known cloud is up, the session moves there. Either way the
cloud session is rebuilt from every token the edge holds (Petals' replay), in the background: the
edge keeps writing degraded tokens while the cloud prefills them, and routing resumes at the first
verification after the rebuild (no stall for the replay). The cloud's state always equals the
edge's record of it, whatever the failed call did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, replace

import grpc

from edgecloud import metrics
from edgecloud.edge_node.cloud_client import CloudUnavailable, GrpcCloudLink
from edgecloud.routing.router import CloudDown, LinkVerdict
from edgecloud.v1 import cloud_node_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The cloud's answers that mean the request itself is at fault: passed on, never degraded.
REQUEST_FAULTS = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass
class _Outage:
    failures: int
    retry_at: float


class CloudHealth:
    """Which cloud addresses failed recently and when each may be tried again (shared by all requests)."""

    def __init__(self, *, initial_backoff_s: float = 0.25, max_backoff_s: float = 1.0,
                 max_entries: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < initial_backoff_s <= max_backoff_s:
            raise ValueError(f"need 0 < initial_backoff_s ({initial_backoff_s}) <= max_backoff_s ({max_backoff_s})")
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.max_entries = max_entries
        self._clock = clock
        self._outages: dict[str, _Outage] = {}

    def failed(self, address: str) -> float:
        """Record a failed call; returns the backoff until the next try (seconds)."""
        outage = self._outages.pop(address, None)
        failures = outage.failures + 1 if outage else 1
        backoff = min(self.max_backoff_s, self.initial_backoff_s * 2 ** (failures - 1))
        self._outages[address] = _Outage(failures, self._clock() + backoff)
        while len(self._outages) > self.max_entries:  # bounded: the oldest outage is forgotten
            self._outages.pop(next(iter(self._outages)))
        return backoff

    def succeeded(self, address: str) -> None:
        self._outages.pop(address, None)

    def is_down(self, address: str) -> bool:
        return address in self._outages

    def retry_due(self, address: str) -> bool:
        outage = self._outages.get(address)
        return outage is None or self._clock() >= outage.retry_at

    def down(self) -> list[str]:
        """The addresses now considered down (for status output)."""
        return list(self._outages)


class FailoverCloudLink:
    """One request's ``CloudLink``: a ``GrpcCloudLink`` that degrades instead of failing.

    ``stub_for(address)`` gives the stub of a cloud; ``candidates()`` the other clouds this edge may use
    (registered with its coordinator, or allowed by flag); ``probe(address)`` whether a cloud answers now.
    """

    def __init__(self, address: str, stub_for: Callable[[str], pb_grpc.CloudNodeStub], health: CloudHealth, *,
                 candidates: Callable[[], Collection[str]] = tuple,
                 probe: Callable[[str], Awaitable[bool]] | None = None, **link_options) -> None:
        self.address = address
        self.stub_for = stub_for
        self.health = health
        self.candidates = candidates
        self.probe = probe
        self.link = GrpcCloudLink(stub_for(address), **link_options)
        self.switches = 0  # moves to another cloud not yet reported in a verdict
        self._rebuild: asyncio.Task | None = None  # the session being rebuilt in the background after an outage
        self._outage_ended = 0.0  # perf_counter when the cloud was found up again
        self._degraded = False  # this request has written tokens alone

    @property
    def replays(self) -> int:
        return self.link.replays

    def prefetch(self, unseen: list[int]) -> None:
        if not self.health.is_down(self.address):
            self.link.prefetch(unseen)

    async def settle(self) -> LinkVerdict:
        return await self.link.settle()

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        try:
            return await self._verify(context, draft)
        except CloudDown:
            self._degraded = True
            raise

    async def _verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        recovering = self._rebuild is not None
        if self._rebuild is not None:
            if not self._rebuild.done():  # the edge keeps writing (degraded) while the cloud replays
                raise CloudDown(f"cloud node {self.address} is rebuilding the session", attempted=False)
            rebuild, self._rebuild = self._rebuild, None
            failure = None if rebuild.cancelled() else rebuild.exception()
            if failure is not None:  # down again: back off and probe, rather than replay straight away
                self._failed(f"rebuilding the session failed: {failure}")
                raise CloudDown(f"cloud node {self.address} failed while rebuilding the session", attempted=True)
        elif self.health.is_down(self.address):
            await self._before_retry()
            self._outage_ended = time.perf_counter()
            recovering = True
            if self._degraded:
                # It answers (or another one does) while this request writes alone: rebuild the session in
                # the background rather than stall the stream for the replay's prefill. (A request that has
                # written nothing alone opens its session with this call, as any request does.)
                self._rebuild = self.link.rebuild(context)
                self._rebuild.add_done_callback(self._rebuilt(self.address))
                raise CloudDown(f"cloud node {self.address} is back: rebuilding the session", attempted=False)
        try:
            verdict = await self.link.verify(context, draft)
        except CloudUnavailable as exc:
            if exc.code in REQUEST_FAULTS:
                raise
            self._failed(str(exc))
            raise CloudDown(str(exc), attempted=True) from exc
        self.health.succeeded(self.address)
        if recovering:
            took = time.perf_counter() - self._outage_ended
            metrics.CLOUD_RECOVERY_SECONDS.observe(took)
            log.info("cloud node %s answers again: session rebuilt (%d tokens) and routing resumed %.2f s after "
                     "it was found up", self.address, len(self.link.cloud_tokens), took)
        switches, self.switches = self.switches, 0
        return replace(verdict, cloud_switches=verdict.cloud_switches + switches)

    def _rebuilt(self, address: str) -> Callable[[asyncio.Task], None]:
        def done(task: asyncio.Task) -> None:  # the cloud is up: other requests need no probe, nor a rebuild
            if not task.cancelled() and task.exception() is None:
                self.health.succeeded(address)
        return done

    async def _before_retry(self) -> None:
        """The cloud is down: move to another known cloud that is not down and answers a status probe;
        else retry any known cloud (this one first) whose backoff has passed and that answers now.
        ``CloudDown`` when none can be used now (``attempted``: a probe was sent and failed)."""
        others = sorted(a for a in self.candidates() if a != self.address)
        for address in [a for a in others if not self.health.is_down(a)]:
            if await self._answers(address):
                self._switch(address)
                return
            self.health.failed(address)  # a registered cloud that is gone (stale) is not tried again at once
        probed = False
        for address in [self.address, *others]:
            if not self.health.retry_due(address):
                continue
            probed = True
            if await self._answers(address):
                if address != self.address:
                    self._switch(address)
                return
            if address == self.address:
                self._failed("it does not answer a status probe")
            else:
                self.health.failed(address)
        raise CloudDown(f"cloud node {self.address} is down" + (" and no other answers" if others else "")
                        + ("" if probed else "; retrying after its backoff"), attempted=probed)

    async def _answers(self, address: str) -> bool:
        return self.probe is None or await self.probe(address)

    def _switch(self, address: str) -> None:
        log.warning("cloud node %s is down: moving the session to %s (replaying %d tokens)", self.address,
                    address, len(self.link.cloud_tokens))
        self.address = address
        self.link.restart(self.stub_for(address))
        self.switches += 1

    def _failed(self, why: str) -> None:
        self._rebuild = None
        backoff = self.health.failed(self.address)
        log.warning("cloud node %s failed (%s): degraded mode, next try in %.2f s", self.address, why, backoff)
        self.link.restart()

    async def close(self) -> None:
        await self.link.close()
