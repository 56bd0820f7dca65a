"""Counters a shaped link keeps (plain numbers on the hot path; exported by ``metrics``)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

QUEUE_DELAY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class DirectionStats:
    """Bytes, chunks, lost segments and a histogram of queueing delay (rate limiter + outage hold)."""

    bytes: int = 0
    chunks: int = 0
    lost_segments: int = 0
    queue_delay_sum_s: float = 0.0
    queue_delay_counts: list[int] = field(default_factory=lambda: [0] * (len(QUEUE_DELAY_BUCKETS_S) + 1))

    def observe(self, size: int, queue_s: float, lost: int) -> None:
        self.bytes += size
        self.chunks += 1
        self.lost_segments += lost
        self.queue_delay_sum_s += queue_s
        self.queue_delay_counts[bisect.bisect_left(QUEUE_DELAY_BUCKETS_S, queue_s)] += 1

    def passed(self, size: int) -> None:
        """Bytes forwarded unshaped (no queueing)."""
        self.bytes += size
        self.chunks += 1
        self.queue_delay_counts[0] += 1

    def as_dict(self) -> dict[str, float | int]:
        return {"bytes": self.bytes, "chunks": self.chunks, "lost_segments": self.lost_segments,
                "queue_delay_mean_ms": 1e3 * self.queue_delay_sum_s / self.chunks if self.chunks else 0.0}


@dataclass
class LinkStats:
    uplink: DirectionStats = field(default_factory=DirectionStats)
    downlink: DirectionStats = field(default_factory=DirectionStats)
    connections_total: int = 0
    connections_active: int = 0
    connections_reset: int = 0
    connections_failed: int = 0

    def direction(self, name: str) -> DirectionStats:
        return self.uplink if name == "uplink" else self.downlink

    def as_dict(self) -> dict[str, object]:
        return {"uplink": self.uplink.as_dict(), "downlink": self.downlink.as_dict(),
                "connections_total": self.connections_total, "connections_active": self.connections_active,
                "connections_reset": self.connections_reset, "connections_failed": self.connections_failed}
