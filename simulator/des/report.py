"""``FleetReport``: what a fleet run measured, as a dataclass, a JSON-ready dict and a short text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Percentiles:
    """Distribution summary of one quantity (zeros when there were no samples)."""

    count: int
    mean: float
    p5: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Percentiles:
        data = np.asarray(values, dtype=float)
        if data.size == 0:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        p5, p50, p95, p99 = np.percentile(data, [5, 50, 95, 99])
        return cls(int(data.size), float(data.mean()), float(p5), float(p50), float(p95), float(p99),
                   float(data.max()))


@dataclass(frozen=True)
class CloudLoad:
    """The cloud over the run: ``utilisation`` = busy time ÷ (replicas × simulated time)."""

    replicas: int
    max_batch: int
    utilisation: float
    busy_s: float
    batches: int
    round_trips: int
    mean_batch: float
    mean_queued_round_trips: float
    queue_delay_s: Percentiles  # per round trip: arrival at the cloud → its batch starts


@dataclass(frozen=True)
class EdgeGroup:
    """Devices that play one experiment edge (its policy, threshold and link)."""

    edge: str
    policy: str
    threshold: float | None
    link: str | None
    devices: int
    requests: int
    cloud_share: float
    round_trips_per_token: float
    tokens_per_s: Percentiles


@dataclass(frozen=True)
class FleetReport:
    experiment: str
    seed: int
    devices: int
    requests: int
    traces: dict[str, Any]
    synthetic_traces: bool
    request_rate_per_s: float
    simulated_s: float
    wall_s: float
    events: int
    tokens: int
    round_trips: int
    cloud_share: float  # tokens produced or checked by the cloud ÷ all tokens
    round_trips_per_token: float
    bytes_up: int
    bytes_down: int
    tokens_per_s: Percentiles  # per request: tokens ÷ (finish − start of generation)
    latency_s: Percentiles  # per request: arrival → last token (includes waiting for the device)
    device_wait_s: Percentiles  # per request: arrival → start on its device
    cloud: CloudLoad
    edges: tuple[EdgeGroup, ...]
    config: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["events_per_s"] = self.events_per_s
        return data

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        return text

    def summary(self) -> str:
        """A few lines for a terminal."""
        label = "SYNTHETIC traces" if self.synthetic_traces else "recorded traces"
        c = self.cloud
        lines = [
            f"{self.experiment}: {self.devices} devices, {self.requests} requests at {self.request_rate_per_s:.4g}/s "
            f"({label}, seed {self.seed})",
            f"  simulated {self.simulated_s:.1f} s in {self.wall_s:.2f} s wall, {self.events} events "
            f"({self.events_per_s:,.0f}/s)",
            f"  cloud share {self.cloud_share:.3f}, round trips/token {self.round_trips_per_token:.3f}, "
            f"{self.tokens} tokens",
            f"  cloud: utilisation {c.utilisation:.3f} ({c.replicas} × batch ≤ {c.max_batch}), mean batch "
            f"{c.mean_batch:.2f}, queue delay p50 {c.queue_delay_s.p50:.3f} s p95 {c.queue_delay_s.p95:.3f} s",
            f"  tokens/s per request: p5 {self.tokens_per_s.p5:.2f} p50 {self.tokens_per_s.p50:.2f} "
            f"p95 {self.tokens_per_s.p95:.2f}; latency p50 {self.latency_s.p50:.2f} s p95 {self.latency_s.p95:.2f} s",
        ]
        for group in self.edges:
            lines.append(f"  {group.edge} ({group.policy}, {group.devices} devices): cloud share "
                         f"{group.cloud_share:.3f}, tokens/s p50 {group.tokens_per_s.p50:.2f}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)
