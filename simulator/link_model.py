"""The pure link model: given a chunk's size and arrival time, when does it reach the far end?

No sockets, no clocks: times are floats in seconds on any monotonic axis the caller picks. The
shaping proxy feeds it real arrival times; a discrete-event simulation can feed it virtual ones.
Every random draw comes from ``random.Random`` streams derived from the profile's seed, the
direction and the component, so one seed gives the same delays for the same sequence of calls.
"""

from __future__ import annotations

import bisect
import math
import random
from typing import NamedTuple

from edgecloud.simulator.profiles import DirectionProfile, LinkProfile, Outages
from edgecloud.simulator.traces import MTU_BYTES, Trace

SEGMENT_BYTES = MTU_BYTES
MAX_RETRANSMISSIONS = 6


def derived_rng(seed: int, *parts: object) -> random.Random:
    """An independent, reproducible random stream for one component (string seeds hash stably)."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))


class Delivery(NamedTuple):
    """What happened to one chunk: when its last byte left the rate limiter (``depart_s``) and
    reached the far end (``deliver_s``), how long it waited for the limiter or an outage
    (``queue_s``), and how many of its segments were lost and retransmitted."""

    depart_s: float
    deliver_s: float
    queue_s: float
    lost_segments: int


class TokenBucket:
    """Rate limiter: ``rate`` bytes/s refill a bucket of ``burst`` bytes; a chunk departs when the
    bucket has paid for its last byte (FIFO debt, so a shared bucket serves arrivals in order)."""

    def __init__(self, rate_mbps: float, burst_bytes: int, start_s: float) -> None:
        self.rate_bytes_s = rate_mbps * 1e6 / 8
        self.burst = float(burst_bytes)
        self.tokens = float(burst_bytes)
        self.t = start_s

    def depart(self, size: int, t: float) -> float:
        if t > self.t:
            self.tokens = min(self.burst, self.tokens + (t - self.t) * self.rate_bytes_s)
            self.t = t
        self.tokens -= size
        if self.tokens >= 0:
            return max(t, self.t)
        return self.t + -self.tokens / self.rate_bytes_s

    def clear_s(self) -> float:
        """When the bytes already accepted have all departed."""
        return self.t + max(0.0, -self.tokens) / self.rate_bytes_s


class TraceLimiter:
    """Mahimahi replay: each opportunity carries 1500 bytes; bytes use them in order; an
    opportunity that passes with nothing queued is wasted. The trace wraps with its period."""

    def __init__(self, trace: Trace, start_s: float) -> None:
        self.ops_ms = trace.opportunities_ms
        self.period_ms = trace.period_ms
        self.start_s = start_s
        self.k = 0  # next opportunity (absolute index, across wraps)
        self.left = MTU_BYTES  # bytes still free in opportunity k
        self.last_depart = start_s

    def _time(self, k: int) -> float:
        cycle, index = divmod(k, len(self.ops_ms))
        return self.start_s + (cycle * self.period_ms + self.ops_ms[index]) * 1e-3

    def _first_at_or_after(self, t: float) -> int:
        rel_ms = max(0.0, (t - self.start_s) * 1e3)
        cycle = int(rel_ms // self.period_ms)
        index = bisect.bisect_left(self.ops_ms, rel_ms - cycle * self.period_ms)
        if index == len(self.ops_ms):
            cycle, index = cycle + 1, 0
        return cycle * len(self.ops_ms) + index

    def depart(self, size: int, t: float) -> float:
        if self._time(self.k) < t:
            self.k = max(self.k + 1, self._first_at_or_after(t))
            self.left = MTU_BYTES
        if size <= self.left:
            self.left -= size
        else:
            full, rest = divmod(size - self.left, MTU_BYTES)
            if rest:
                self.k += full + 1
                self.left = MTU_BYTES - rest
            else:
                self.k += full
                self.left = 0
        depart = self._time(self.k)
        if self.left == 0:
            self.k += 1
            self.left = MTU_BYTES
        self.last_depart = max(depart, t)
        return self.last_depart

    def clear_s(self) -> float:
        return self.last_depart


class Jitter:
    """Zero-mean delay variation with standard deviation ``jitter_ms``, AR(1)-correlated."""

    _PARETO_SHAPE = 3.0
    _PARETO_SCALE = 2.0 / math.sqrt(3.0)  # Pareto(3, xm): mean 1.5·xm, std xm·√3/2 = 1

    def __init__(self, profile: DirectionProfile, rng: random.Random) -> None:
        self.std_s = profile.jitter_ms * 1e-3
        self.kind = profile.jitter_distribution
        self.rho = profile.jitter_correlation
        self.innovation = math.sqrt(1.0 - self.rho**2)
        self.rng = rng
        self.state = 0.0

    def _unit(self) -> float:
        if self.kind == "normal":
            return self.rng.gauss(0.0, 1.0)
        if self.kind == "uniform":
            return self.rng.uniform(-math.sqrt(3.0), math.sqrt(3.0))
        x = self._PARETO_SCALE * (1.0 - self.rng.random()) ** (-1.0 / self._PARETO_SHAPE)
        return x - 1.5 * self._PARETO_SCALE

    def draw_s(self) -> float:
        if not self.std_s:
            return 0.0
        value = self._unit()
        if self.rho:
            self.state = self.rho * self.state + self.innovation * value
            value = self.state
        return value * self.std_s


class Loss:
    """Per-segment loss (Bernoulli or Gilbert–Elliott) turned into retransmission delay: ``rto``
    for a lost segment, doubling for each lost retransmission (drawn at the long-run loss rate)."""

    def __init__(self, profile: DirectionProfile, rng: random.Random) -> None:
        self.model = profile.loss_model
        self.p = profile.loss_pct / 100
        self.to_bad = profile.ge_good_to_bad_pct / 100
        self.to_good = profile.ge_bad_to_good_pct / 100
        self.loss_bad = profile.ge_loss_in_bad_pct / 100
        self.loss_good = profile.ge_loss_in_good_pct / 100
        self.rto_s = profile.rto_ms * 1e-3
        self.active = profile.lossy
        self.rng = rng
        self.bad = False
        if self.model == "bernoulli":
            self.retry_p = self.p
        else:  # a retransmission comes an RTO later: use the chain's long-run loss rate
            share_bad = self.to_bad / (self.to_bad + self.to_good) if self.to_bad + self.to_good else 0.0
            self.retry_p = share_bad * self.loss_bad + (1 - share_bad) * self.loss_good

    def _lost(self) -> bool:
        if self.model == "bernoulli":
            return self.rng.random() < self.p
        if self.bad:
            self.bad = self.rng.random() >= self.to_good
        else:
            self.bad = self.rng.random() < self.to_bad
        return self.rng.random() < (self.loss_bad if self.bad else self.loss_good)

    def delay_s(self, size: int) -> tuple[float, int]:
        """(added delay, lost segments) for a chunk of ``size`` bytes."""
        if not self.active:
            return 0.0, 0
        delay, lost = 0.0, 0
        for _ in range(max(1, -(-size // SEGMENT_BYTES))):
            if self._lost():
                lost += 1
                extra, rto, tries = self.rto_s, self.rto_s, 1
                while tries < MAX_RETRANSMISSIONS and self.rng.random() < self.retry_p:
                    rto *= 2
                    extra += rto
                    tries += 1
                delay = max(delay, extra)
        return delay, lost


class OutageSchedule:
    """Down intervals of a link (absolute times): scheduled ones plus a lazily drawn on/off process."""

    def __init__(self, outages: Outages, start_s: float, rng: random.Random) -> None:
        self.spec = outages
        self.rng = rng
        self.intervals: list[tuple[float, float]] = sorted(
            (start_s + a, start_s + b) for a, b in outages.scheduled_s)
        self.random_until = start_s
        self.random_up = True
        self._random: list[tuple[float, float]] = []

    def _extend(self, t: float) -> None:
        if self.spec.mean_up_s is None or self.spec.mean_down_s is None:
            return
        while self.random_until <= t + self.spec.mean_up_s * 10 + self.spec.mean_down_s * 10:
            if self.random_up:
                self.random_until += self.rng.expovariate(1.0 / self.spec.mean_up_s)
            else:
                end = self.random_until + self.rng.expovariate(1.0 / self.spec.mean_down_s)
                self._random.append((self.random_until, end))
                self.random_until = end
            self.random_up = not self.random_up

    def _all(self, t: float) -> list[tuple[float, float]]:
        self._extend(t)
        if not self._random:
            return self.intervals
        return sorted(self.intervals + self._random)

    def down_interval(self, t: float) -> tuple[float, float] | None:
        """The outage covering ``t`` (merged with outages that follow without a gap), or None."""
        found = None
        for a, b in self._all(t):
            if found is None and a <= t < b:
                found = (a, b)
            elif found is not None and a <= found[1]:
                found = (found[0], max(found[1], b))
        return found

    def up_at(self, t: float) -> float:
        """``t`` if the link is up then, else when it comes back."""
        interval = self.down_interval(t)
        return t if interval is None else interval[1]

    def next_outage(self, t: float) -> tuple[float, float] | None:
        """The first outage that is running at ``t`` or starts after it."""
        current = self.down_interval(t)
        if current is not None:
            return current
        for a, b in self._all(t):
            if a > t:
                return self.down_interval(a) or (a, b)
        return None

    def starts_between(self, t0: float, t1: float) -> tuple[float, float] | None:
        """An outage starting in ``(t0, t1)`` (bytes in flight then are lost and resent after it)."""
        for a, _ in self._all(t1):
            if t0 < a < t1:
                return self.down_interval(a)
        return None


class DirectionModel:
    """One direction of a link: outage hold → rate limiter → latency + jitter → loss delay."""

    def __init__(self, profile: DirectionProfile, *, seed: int, name: str, start_s: float,
                 outages: OutageSchedule | None = None) -> None:
        self.name = name
        self.seed = seed
        self.outages = outages
        self.jitter = Jitter(profile, derived_rng(seed, name, "jitter"))
        self.loss = Loss(profile, derived_rng(seed, name, "loss"))
        self.profile = profile
        self.limiter: TokenBucket | TraceLimiter | None = self._limiter(profile, start_s)

    @staticmethod
    def _limiter(profile: DirectionProfile, start_s: float) -> TokenBucket | TraceLimiter | None:
        if profile.trace is not None:
            return TraceLimiter(profile.trace, start_s)
        if profile.rate_mbps is not None:
            return TokenBucket(profile.rate_mbps, profile.burst_bytes, start_s)
        return None

    def reconfigure(self, profile: DirectionProfile, t: float, outages: OutageSchedule | None) -> None:
        """Apply a new profile from ``t`` on; bytes already accepted keep their times."""
        start = max(t, self.clear_s(t))
        old = self.profile
        self.profile = profile
        self.outages = outages
        if (profile.rate_mbps, profile.burst_bytes, profile.trace) != (old.rate_mbps, old.burst_bytes, old.trace):
            self.limiter = self._limiter(profile, start)
            if isinstance(self.limiter, TokenBucket) and start > t:
                self.limiter.tokens = 0.0
        state = self.jitter.state
        self.jitter = Jitter(profile, self.jitter.rng)
        self.jitter.state = state
        self.loss = Loss(profile, self.loss.rng)

    @property
    def passthrough(self) -> bool:
        """True when this direction changes nothing (the proxy may forward bytes at once)."""
        return not self.profile.shaped and (self.outages is None or not self.outages.spec.any)

    @property
    def rate_bytes_s(self) -> float | None:
        if self.profile.trace is not None:
            return self.profile.trace.mean_rate_mbps * 1e6 / 8
        if self.profile.rate_mbps is not None:
            return self.profile.rate_mbps * 1e6 / 8
        return None

    def chunk_bytes(self) -> int:
        """Largest chunk worth scheduling as one unit: ~1 ms of the rate, 1500..65536 bytes."""
        rate = self.rate_bytes_s
        if rate is None:
            return 1 << 20
        return int(min(65_536, max(SEGMENT_BYTES, rate * 1e-3)))

    def clear_s(self, t: float) -> float:
        """When the rate limiter's queue (shared by every stream of this direction) drains."""
        return t if self.limiter is None else max(t, self.limiter.clear_s())

    def backlog_allowed_s(self) -> float:
        rate = self.rate_bytes_s
        return math.inf if rate is None else self.profile.queue_bytes / rate

    def send(self, size: int, t: float) -> Delivery:
        """Schedule ``size`` bytes arriving at ``t``."""
        ready = t if self.outages is None else self.outages.up_at(t)
        depart = ready if self.limiter is None else self.limiter.depart(size, ready)
        if self.outages is not None:
            depart = self.outages.up_at(depart)
        latency = max(0.0, self.profile.latency_ms * 1e-3 + self.jitter.draw_s())
        extra, lost = self.loss.delay_s(size)
        deliver = depart + latency + extra
        if self.outages is not None:
            hit = self.outages.starts_between(depart, deliver)
            if hit is not None:  # in flight when the link went down: resent once it is back
                deliver = hit[1] + latency + extra
        return Delivery(depart, deliver, depart - t, lost)


class LinkModel:
    """Both directions of a link and its outage schedule. ``for_connection`` hands out the
    direction models a connection uses: the link's own (shared rate) or fresh ones."""

    DIRECTIONS = ("uplink", "downlink")

    def __init__(self, profile: LinkProfile, start_s: float) -> None:
        self.profile = profile
        self.outages = OutageSchedule(profile.outages, start_s, derived_rng(profile.seed, "outages"))
        self.shared = {name: DirectionModel(profile.direction(name), seed=profile.seed, name=name,
                                            start_s=start_s, outages=self.outages)
                       for name in self.DIRECTIONS}
        self._private: list[dict[str, DirectionModel]] = []
        self._connections = 0

    def for_connection(self, t: float) -> dict[str, DirectionModel]:
        self._connections += 1
        if self.profile.rate_shared:
            return self.shared
        models = {name: DirectionModel(self.profile.direction(name), seed=self.profile.seed,
                                       name=f"{name}:{self._connections}", start_s=t, outages=self.outages)
                  for name in self.DIRECTIONS}
        self._private.append(models)
        return models

    def release(self, models: dict[str, DirectionModel]) -> None:
        if models is not self.shared and models in self._private:
            self._private.remove(models)

    def set_profile(self, profile: LinkProfile, t: float) -> None:
        """Switch to ``profile`` at ``t``; outages restart from ``t`` only if they changed."""
        if profile.outages != self.profile.outages or profile.seed != self.profile.seed:
            self.outages = OutageSchedule(profile.outages, t, derived_rng(profile.seed, "outages", t))
        self.profile = profile
        for models in (self.shared, *self._private):
            for name, model in models.items():
                model.reconfigure(profile.direction(name), t, self.outages)
