"""Apply an experiment's timeline to the running proxies and record every link's state.

Times are seconds after the workload starts (``t0``, ``time.monotonic()``, which is also the
asyncio loop's clock). ``links.jsonl`` gets one record per change: ``initial`` (at 0),
``change`` (a timeline event), ``outage_start``/``outage_end`` (scheduled or random outages,
read from the proxy's own outage schedule, so the times are exact), and ``end``. States are in
the link's own terms (``from`` → ``to`` is the uplink), whatever the proxy's orientation.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from edgecloud.loop_thread import LoopThread
from edgecloud.simulator.cluster import Route
from edgecloud.simulator.experiment import Experiment, TimelineEvent
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile, profile_to_dict
from edgecloud.simulator.proxy import ShapingProxy
from edgecloud.simulator.records import JsonlWriter

SAMPLE_S = 0.05


def _rate(d: DirectionProfile) -> float | None:
    if d.trace is not None:
        return d.trace.mean_rate_mbps
    return d.rate_mbps


def describe_profile(profile: LinkProfile) -> dict[str, Any]:
    """The figures a plot or a request record needs (None rate: unlimited)."""
    state: dict[str, Any] = {}
    for name in ("uplink", "downlink"):
        d = profile.direction(name)
        state[f"{name}_rate_mbps"] = _rate(d)
        state[f"{name}_latency_ms"] = d.latency_ms
        state[f"{name}_jitter_ms"] = d.jitter_ms
        state[f"{name}_lossy"] = d.lossy
        if d.trace is not None:
            state[f"{name}_trace"] = d.trace.source or "inline"
    state["outage_mode"] = profile.outages.mode
    state["random_outages"] = profile.outages.mean_up_s is not None
    return state


class LinkTimeline:
    """Drives the timeline on the proxies' loop; ``states`` is safe to call from any thread."""

    def __init__(self, experiment: Experiment, loop: LoopThread, proxies: dict[str, ShapingProxy],
                 routes: dict[str, Route], writer: JsonlWriter) -> None:
        self.experiment = experiment
        self.loop = loop
        self.proxies = proxies
        self.routes = routes
        self.writer = writer
        self.t0 = 0.0
        self._lock = threading.Lock()
        self._profiles = {link.name: link.profile for link in experiment.links}
        self._down: dict[str, tuple[float, float] | None] = {name: None for name in self._profiles}
        self._handles: list[asyncio.TimerHandle] = []
        self.applied: list[dict[str, Any]] = []

    # ---- reading (any thread) ---------------------------------------------------------------------

    def state(self, name: str) -> dict[str, Any]:
        with self._lock:
            profile, down = self._profiles[name], self._down[name]
        return {**describe_profile(profile), "down": down is not None}

    def states(self, names: list[str]) -> dict[str, dict[str, Any]]:
        return {name: self.state(name) for name in names}

    # ---- driving (the loop's thread) --------------------------------------------------------------

    def start(self, t0: float) -> None:
        """Give every proxy its full initial profile (outages counted from now) and schedule the rest."""
        self.t0 = t0
        self.loop.call(self._start, t0)

    def stop(self) -> None:
        """Cancel pending events; record each link's final state."""
        self.loop.call(self._stop)

    def _now_s(self) -> float:
        return self.loop.loop.time() - self.t0

    def _record(self, name: str, event: str, t_s: float, **extra: Any) -> None:
        with self._lock:
            profile, down = self._profiles[name], self._down[name]
        link = self.experiment.link(name)
        self.writer.write({"t_s": round(t_s, 6), "link": name, "from": link.source, "to": link.target,
                           "event": event, "state": {**describe_profile(profile), "down": down is not None},
                           "shaped": name in self.proxies, **extra})

    def _start(self, t0: float) -> None:
        loop = self.loop.loop
        for name, profile in self._profiles.items():
            if name in self.proxies:
                self.proxies[name].set_profile(self.routes[name].proxy_profile(profile))
            self._record(name, "initial", 0.0, profile=profile_to_dict(profile))
        for event in self.experiment.timeline:
            self._handles.append(loop.call_at(t0 + event.at_s, self._apply, event))
        self._sample()

    def _apply(self, event: TimelineEvent) -> None:
        t_s = self._now_s()
        with self._lock:
            self._profiles[event.link] = event.profile
        if event.link in self.proxies:
            self.proxies[event.link].set_profile(self.routes[event.link].proxy_profile(event.profile))
        changes = {key: value for key, value in event.changes}
        self.applied.append({"at_s": event.at_s, "applied_s": t_s, "link": event.link, "changes": changes})
        self._record(event.link, "change", t_s, scheduled_s=event.at_s, changes=changes,
                     profile=profile_to_dict(event.profile))
        self._sample(reschedule=False)

    def _sample(self, reschedule: bool = True) -> None:
        """Note outages starting or ending (from each proxy's outage schedule)."""
        now = self.loop.loop.time()
        for name, proxy in self.proxies.items():
            interval = proxy.model.outages.down_interval(now)
            previous = self._down[name]
            if (interval is None) == (previous is None):
                continue
            with self._lock:
                self._down[name] = interval
            if interval is not None:
                self._record(name, "outage_start", max(0.0, interval[0] - self.t0),
                             until_s=interval[1] - self.t0)
            else:
                assert previous is not None
                self._record(name, "outage_end", min(previous[1], now) - self.t0)
        if reschedule:
            self._handles.append(self.loop.loop.call_later(SAMPLE_S, self._sample))
            self._handles = [h for h in self._handles if not h.cancelled() and h.when() >= now]

    def _stop(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        t_s = self._now_s()
        for name in self._profiles:
            if self._down[name] is not None:
                with self._lock:
                    self._down[name] = None
                self._record(name, "outage_end", t_s)
            self._record(name, "end", t_s)
