"""The SimPy model: devices run requests, links carry round trips, a batched cloud verifies.

Granularity is the round trip, not the token: a request's edge compute burst and its uplink
transfer are one timeout (the device's link is its own, so its delivery time is known when the
bytes are sent), the cloud's batch is one shared event for every round trip in it, and the
downlink transfer plus the next edge burst are the next timeout. Token counts, windows and
accepted counts come from the real router's ``RoundTripPattern``.

Cloud: ``replicas`` servers share one FIFO queue of round trips; an idle server takes up to
``max_batch`` of them at once (1 with ``serial`` batching: the CPU cloud runs one round trip's
forward at a time) and holds them for ``ComputeProfile.cloud_batch_s`` of (batch size, the
longest round trip's tokens).
"""

from __future__ import annotations

import zlib
from array import array
from collections import deque
from dataclasses import dataclass, replace

import simpy

from edgecloud.simulator.des.config import ComputeProfile
from edgecloud.simulator.des.replay import RoundTripPattern, WireProfile
from edgecloud.simulator.experiment import ExperimentLink
from edgecloud.simulator.link_model import Delivery, DirectionModel, LinkModel


class _Batch:
    """Round trips verified in one cloud forward; they all wait on ``done``."""

    __slots__ = ("done", "longest", "size", "start", "tokens")

    def __init__(self, env: simpy.Environment) -> None:
        self.done = env.event()
        self.size = 0
        self.tokens = 0
        self.longest = 0
        self.start = 0.0


class CloudServer:
    """``replicas`` batch servers behind one FIFO queue of round trips."""

    def __init__(self, env: simpy.Environment, compute: ComputeProfile, *, replicas: int, max_batch: int) -> None:
        self.env = env
        self.compute = compute
        self.max_batch = 1 if compute.serial else max_batch
        self.queue: deque[_Batch] = deque()
        self._idle: list[simpy.Event] = []
        self.busy_s = 0.0
        self.batches = 0
        self.round_trips = 0
        self.queued = 0
        self.wakes = 0
        self._queued_area = 0.0  # ∫ queued round trips dt
        self._last_change = 0.0
        self.workers = [env.process(self._serve()) for _ in range(replicas)]

    def _count_queue(self, delta: int) -> None:
        now = self.env.now
        self._queued_area += self.queued * (now - self._last_change)
        self._last_change = now
        self.queued += delta

    def submit(self, tokens: int) -> _Batch:
        """Queue one round trip carrying ``tokens`` tokens; wait on the returned batch's ``done``."""
        queue = self.queue
        if queue and queue[-1].size < self.max_batch:
            batch = queue[-1]
        else:
            batch = _Batch(self.env)
            queue.append(batch)
        batch.size += 1
        batch.tokens += tokens
        if tokens > batch.longest:
            batch.longest = tokens
        self._count_queue(1)
        if self._idle:
            self.wakes += 1
            self._idle.pop().succeed()
        return batch

    def _serve(self):
        env = self.env
        while True:
            if not self.queue:
                wake = env.event()
                self._idle.append(wake)
                yield wake
                continue
            batch = self.queue.popleft()
            self._count_queue(-batch.size)
            batch.start = env.now
            busy = self.compute.cloud_batch_s(batch.size, batch.longest)
            self.busy_s += busy
            self.batches += 1
            self.round_trips += batch.size
            yield env.timeout(busy)
            batch.done.succeed()

    def mean_queued(self, until: float) -> float:
        area = self._queued_area + self.queued * (until - self._last_change)
        return area / until if until > 0 else 0.0


class _Instant:
    """A direction with no link model: delivered when sent."""

    @staticmethod
    def send(size: int, t: float) -> Delivery:
        return Delivery(t, t, 0.0, 0)


@dataclass(frozen=True)
class CompiledPattern:
    """A pattern in seconds and bytes, ready for the event loop."""

    pattern: RoundTripPattern
    bursts_s: tuple[float, ...]
    up_bytes: tuple[int, ...]
    cloud_tokens: tuple[int, ...]  # tokens each round trip puts through the cloud's forward
    down_bytes: int


def compile_pattern(pattern: RoundTripPattern, compute: ComputeProfile, wire: WireProfile,
                    burst_tokens: tuple[int, ...] | None = None) -> CompiledPattern:
    tokens = burst_tokens if burst_tokens is not None else pattern.burst_tokens
    bursts = tuple(compute.edge_burst_s(f, t) for f, t in zip(pattern.bursts, tokens, strict=True))
    up = tuple(wire.up_bytes(c, w) for c, w in zip(pattern.context, pattern.windows, strict=True))
    cloud = tuple(c + w for c, w in zip(pattern.context, pattern.windows, strict=True))
    return CompiledPattern(pattern, bursts, up, cloud, wire.down_bytes())


class Device:
    """One edge device: its link's two directions (edge → cloud is ``up``)."""

    __slots__ = ("down", "index", "link", "up")

    def __init__(self, index: int, link: ExperimentLink | None, cloud: str) -> None:
        self.index = index
        self.link: LinkModel | None = None
        self.up: DirectionModel | _Instant = _Instant()
        self.down: DirectionModel | _Instant = _Instant()
        if link is not None:
            self.link = LinkModel(replace(link.profile, seed=self.seed_for(link.profile.seed)), 0.0)
            models = self.link.for_connection(0.0)
            reverse = link.source == cloud
            self.up = models["downlink" if reverse else "uplink"]
            self.down = models["uplink" if reverse else "downlink"]

    def seed_for(self, seed: int) -> int:
        return zlib.crc32(f"{seed}:device:{self.index}".encode())


class Recorder:
    """Per-request and per-round-trip results, filled by the device processes."""

    def __init__(self, requests: int) -> None:
        self.start = [0.0] * requests
        self.finish = [0.0] * requests
        self.cloud_wait = array("d")  # per round trip, seconds; compact for millions
        self.timeouts = 0


def device_process(env: simpy.Environment, device: Device, jobs: list[tuple[float, int, CompiledPattern]],
                   cloud: CloudServer, rec: Recorder):
    """Run the device's requests one after another, in arrival order."""
    up_send = device.up.send
    down_send = device.down.send
    submit = cloud.submit
    timeout = env.timeout
    waits = rec.cloud_wait
    events = 0
    for arrival, request, compiled in jobs:
        if arrival > env.now:
            yield timeout(arrival - env.now)
            events += 1
        rec.start[request] = env.now
        bursts = compiled.bursts_s
        up_bytes = compiled.up_bytes
        cloud_tokens = compiled.cloud_tokens
        down_bytes = compiled.down_bytes
        t = env.now + bursts[0]
        for k in range(len(up_bytes)):
            yield timeout(up_send(up_bytes[k], t).deliver_s - env.now)
            arrived = env.now
            batch = submit(cloud_tokens[k])
            yield batch.done
            waits.append(batch.start - arrived)
            t = down_send(down_bytes, env.now).deliver_s + bursts[k + 1]
        yield timeout(t - env.now)
        events += 2 * len(up_bytes) + 1
        rec.finish[request] = env.now
    rec.timeouts += events
