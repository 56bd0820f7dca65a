"""Per-peer link estimates from a node's real calls (for the ``link`` telemetry topic).

``LinkTable`` keeps one ``LinkEstimator`` per peer address (bounded: the least recently
measured peer is dropped beyond ``max_peers``). ``MeasuredLink`` wraps the edge's cloud link
(anything with ``address`` and ``verify``) and feeds each verdict's bytes and network time
(wall time minus the cloud's compute) into the table. Approximate: a verify round trip moves a
few hundred bytes, so the RTT is well measured and the bandwidth is mostly a lower bound until
calls of different sizes (a long prompt beside short drafts) let the estimator fit it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edgecloud.split.planner import LinkEstimate, LinkEstimator
from edgecloud.telemetry import PeerLink


class LinkTable:
    def __init__(self, max_peers: int = 16, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_peers = max_peers
        self.clock = clock
        self._peers: OrderedDict[str, tuple[LinkEstimator, int, float]] = OrderedDict()  # (estimator, n, when)

    def observe(self, address: str, nbytes: int, network_s: float) -> None:
        """One call to ``address`` that moved ``nbytes`` (both ways) in ``network_s`` of network time."""
        if not address or nbytes < 0 or not network_s > 0:
            return
        entry = self._peers.pop(address, None)
        if entry is None:
            first = LinkEstimate(max(nbytes * 8 / network_s / 1e6, 1e-3), network_s * 1e3)
            entry = (LinkEstimator(first, clock=self.clock), 0, 0.0)
        estimator, count, _ = entry
        estimator.observe(nbytes, network_s)
        self._peers[address] = (estimator, count + 1, self.clock())
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)

    def peers(self) -> tuple[PeerLink, ...]:
        now = self.clock()
        out = []
        for address, (estimator, count, when) in reversed(self._peers.items()):
            estimate = estimator.estimate
            out.append(PeerLink(address, round(estimate.rtt_ms, 3), round(estimate.bandwidth_mbps, 3), count,
                                round(now - when, 3)))
        return tuple(out)

    def rtt_ms(self, address: str) -> float | None:
        entry = self._peers.get(address)
        return entry[0].estimate.rtt_ms if entry else None


class MeasuredLink:
    """A cloud link whose verify verdicts also go to a ``LinkTable`` (everything else passes through)."""

    def __init__(self, link: Any, table: LinkTable) -> None:
        self._link = link
        self._table = table

    async def verify(self, context: list[int], draft: list[int]) -> Any:
        verdict = await self._link.verify(context, draft)
        self._table.observe(self._link.address, verdict.bytes_up + verdict.bytes_down, verdict.network_s)
        return verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._link, name)
