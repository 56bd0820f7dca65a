"""Where to cut a model and how to squeeze the tensor at the cut (Neurosurgeon-style).

Each candidate cut has a measured profile: edge compute of the head, cloud compute of the tail,
and the bytes that cross at the cut under each codec. With the link's live bandwidth and RTT
estimates the expected latency of a candidate is

    edge_s + cloud_s + [crosses] * (rtt_s + bytes_up * 8 / bandwidth + bytes_down * 8 / bandwidth)

"all on edge" (nothing crosses) and "all in cloud" (the raw input crosses) are candidates like
any cut. ``SplitPlanner`` re-plans as the estimates move, with hysteresis: it leaves its current
plan only for one expected to be faster by more than ``margin`` (a fraction), so that estimates
wobbling around a crossover do not make it flap.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CutProfile:
    """Measured costs of one cut. ``bytes_up`` per codec name; empty when nothing crosses (all on edge)."""

    cut: int
    label: str
    edge_s: float
    cloud_s: float
    bytes_up: Mapping[str, int] = field(default_factory=dict)
    bytes_down: int = 0  # the answer (logits, class scores, a token)

    @property
    def crosses(self) -> bool:
        return bool(self.bytes_up)


@dataclass(frozen=True)
class LinkEstimate:
    bandwidth_mbps: float  # uplink (and downlink) throughput estimate
    rtt_ms: float

    def __post_init__(self) -> None:
        if not (self.bandwidth_mbps > 0 and math.isfinite(self.bandwidth_mbps)):
            raise ValueError(f"bandwidth must be a positive number of Mbit/s, got {self.bandwidth_mbps}")
        if not (self.rtt_ms >= 0 and math.isfinite(self.rtt_ms)):
            raise ValueError(f"rtt must be >= 0 ms, got {self.rtt_ms}")


@dataclass(frozen=True)
class Plan:
    cut: int
    label: str
    codec: str  # "" when nothing crosses
    expected_s: float
    edge_s: float
    cloud_s: float
    network_s: float
    bytes_up: int

    def describe(self) -> str:
        where = f"cut {self.label}" + (f" with {self.codec} ({self.bytes_up} B up)" if self.codec else "")
        return (f"{where}: expected {self.expected_s * 1e3:.1f} ms = edge {self.edge_s * 1e3:.1f} + "
                f"cloud {self.cloud_s * 1e3:.1f} + network {self.network_s * 1e3:.1f}")


def network_s(bytes_up: int, bytes_down: int, link: LinkEstimate) -> float:
    """RTT plus both transfers at the estimated bandwidth."""
    return link.rtt_ms / 1e3 + (bytes_up + bytes_down) * 8 / (link.bandwidth_mbps * 1e6)


def candidates(profiles: Iterable[CutProfile], link: LinkEstimate, codecs: Iterable[str] | None = None) -> list[Plan]:
    """Every (cut, codec) plan with its expected latency, fastest first (ties: fewer bytes, earlier cut)."""
    allowed = None if codecs is None else set(codecs)
    plans = []
    for p in profiles:
        if not p.crosses:
            plans.append(Plan(p.cut, p.label, "", p.edge_s + p.cloud_s, p.edge_s, p.cloud_s, 0.0, 0))
            continue
        for codec, nbytes in p.bytes_up.items():
            if allowed is not None and codec not in allowed:
                continue
            net = network_s(nbytes, p.bytes_down, link)
            plans.append(Plan(p.cut, p.label, codec, p.edge_s + p.cloud_s + net, p.edge_s, p.cloud_s, net, nbytes))
    if not plans:
        raise ValueError("no candidate plan: no profiles, or none with an allowed codec")
    return sorted(plans, key=lambda plan: (plan.expected_s, plan.bytes_up, plan.cut))


def best_plan(profiles: Iterable[CutProfile], link: LinkEstimate, codecs: Iterable[str] | None = None) -> Plan:
    """The plan with the lowest expected latency."""
    return candidates(profiles, link, codecs)[0]


def crossover_mbps(a: Plan, b: Plan, rtt_ms: float) -> float | None:
    """Bandwidth at which plans ``a`` and ``b`` take equally long (None if one always wins)."""
    fixed_a = a.edge_s + a.cloud_s + (rtt_ms / 1e3 if a.codec else 0.0)
    fixed_b = b.edge_s + b.cloud_s + (rtt_ms / 1e3 if b.codec else 0.0)
    if a.bytes_up == b.bytes_up or fixed_a == fixed_b:
        return None
    mbps = 8 * (a.bytes_up - b.bytes_up) / (fixed_b - fixed_a) / 1e6
    return mbps if mbps > 0 else None


@dataclass(frozen=True)
class Decision:
    plan: Plan
    best: Plan  # the fastest plan under this estimate (== plan unless hysteresis kept the old one)
    switched: bool
    reason: str


class SplitPlanner:
    """Keeps a plan and revises it as link estimates arrive."""

    def __init__(self, profiles: Iterable[CutProfile], *, codecs: Iterable[str] | None = None,
                 margin: float = 0.15) -> None:
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.profiles = tuple(profiles)
        self.codecs = None if codecs is None else tuple(codecs)
        self.margin = margin
        self.plan: Plan | None = None
        self.switches = 0

    def update(self, link: LinkEstimate) -> Decision:
        """Re-plan for ``link``; the current plan stays unless another beats it by more than ``margin``."""
        plans = candidates(self.profiles, link, self.codecs)
        best = plans[0]
        if self.plan is None:
            self.plan = best
            return Decision(best, best, True, f"first plan at {_link(link)}: {best.describe()}")
        current = next(p for p in plans if (p.cut, p.codec) == (self.plan.cut, self.plan.codec))
        if (best.cut, best.codec) != (current.cut, current.codec) and \
                best.expected_s < current.expected_s * (1 - self.margin):
            self.plan = best
            self.switches += 1
            return Decision(best, best, True, f"at {_link(link)} {best.describe()} beats the current "
                                              f"{current.expected_s * 1e3:.1f} ms by more than {self.margin:.0%}")
        self.plan = current
        if (best.cut, best.codec) == (current.cut, current.codec):
            reason = f"at {_link(link)} the current plan is still the fastest: {current.describe()}"
        else:
            reason = (f"at {_link(link)} keeping {current.describe()}; the best ({best.label}"
                      f"{' ' + best.codec if best.codec else ''}, {best.expected_s * 1e3:.1f} ms) is within "
                      f"{self.margin:.0%}")
        return Decision(current, best, False, reason)


def _link(link: LinkEstimate) -> str:
    return f"{link.bandwidth_mbps:g} Mbit/s, RTT {link.rtt_ms:g} ms"


class LinkEstimator:
    """Live RTT and bandwidth estimates from real transfers.

    Each call reports the bytes it moved and its network time (wall time minus the peer's compute).
    Over the last ``window`` calls, weighted by recency (a sample's weight halves every
    ``half_life_s``, and one older than twice that is dropped while two newer remain, so that a link
    that changed is believed soon), network time = RTT + bytes × 8 /
    bandwidth is fitted by least squares when the calls' sizes differ enough (prefill chunks beside
    decode steps); with calls of one size, the RTT is kept and the bandwidth follows from the mean.
    A transfer too short to tell from the RTT noise only bounds the bandwidth from below.
    """

    def __init__(self, initial: LinkEstimate, *, window: int = 16, min_transfer_s: float = 0.002,
                 half_life_s: float = 15.0, clock: Callable[[], float] = time.monotonic) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2, got {window}")
        if half_life_s <= 0:
            raise ValueError(f"half_life_s must be > 0, got {half_life_s}")
        self.rtt_ms = initial.rtt_ms
        self.bandwidth_mbps = initial.bandwidth_mbps
        self.min_transfer_s = min_transfer_s
        self.half_life_s = half_life_s
        self.clock = clock
        self._samples: deque[tuple[float, int, float]] = deque(maxlen=window)  # (when, bytes, seconds)

    def observe(self, nbytes: int, network_s: float) -> None:
        """One call that moved ``nbytes`` (both ways) in ``network_s`` seconds of network time."""
        if nbytes < 0 or not (network_s >= 0 and math.isfinite(network_s)):
            return
        now = self.clock()
        self._samples.append((now, nbytes, network_s))
        while len(self._samples) > 2 and now - self._samples[0][0] > 2 * self.half_life_s:
            self._samples.popleft()  # stale: the newer ones describe the link as it is
        self._fit()

    def _fit(self) -> None:
        now = self.clock()
        weights = [0.5 ** ((now - when) / self.half_life_s) for when, _, _ in self._samples]
        sizes = [b for _, b, _ in self._samples]
        times = [t for _, _, t in self._samples]
        total = sum(weights)
        mean_b = sum(w * b for w, b in zip(weights, sizes, strict=True)) / total
        mean_t = sum(w * t for w, t in zip(weights, times, strict=True)) / total
        if len(sizes) >= 2 and max(sizes) >= 2 * max(1, min(sizes)):
            var = sum(w * (b - mean_b) ** 2 for w, b in zip(weights, sizes, strict=True))
            cov = sum(w * (b - mean_b) * (t - mean_t) for w, b, t in zip(weights, sizes, times, strict=True))
            slope = cov / var if var > 0 else 0.0  # seconds per byte
            if slope > 0:
                self.bandwidth_mbps = 8 / slope / 1e6
                self.rtt_ms = max(0.0, mean_t - slope * mean_b) * 1e3
                return
        transfer_s = mean_t - self.rtt_ms / 1e3
        if transfer_s >= self.min_transfer_s:
            self.bandwidth_mbps = mean_b * 8 / transfer_s / 1e6
            return
        if mean_t < self.rtt_ms / 1e3:  # quicker than the RTT estimate: the link got closer
            self.rtt_ms = mean_t * 1e3
        if mean_t > 0:  # the bytes arrived within mean_t: the link is at least that fast
            self.bandwidth_mbps = max(self.bandwidth_mbps, mean_b * 8 / mean_t / 1e6)

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(max(self.bandwidth_mbps, 1e-3), self.rtt_ms)
