"""Start an experiment's daemons as real processes with a shaping proxy on every link.

Wiring (documented in ``runner``): each link gets one proxy, placed in front of the node that
*accepts* the link's connections. Edges dial the cloud and the coordinator, the cloud dials the
coordinator, so an edge starts with ``--cloud <its edge–cloud proxy>`` and ``--coordinator <its
edge–coordinator proxy>`` and the cloud with ``--coordinator <its proxy>``. A link whose ``from``
end is the accepting node gets its profile mirrored (the proxy's uplink is always dialler →
acceptor). A pair without a link is joined directly on loopback. Links between two edges carry
no traffic in this mode (reported, not shaped).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from edgecloud.loop_thread import LoopThread
from edgecloud.processes import DaemonGroup
from edgecloud.simulator.experiment import Experiment, ExperimentLink, split_model_key
from edgecloud.simulator.profiles import LinkProfile, Outages
from edgecloud.simulator.proxy import ShapingProxy

log = logging.getLogger(__name__)

RANK = {"edge": 0, "cloud": 1, "coordinator": 2}  # a node dials the nodes of higher rank
REGISTER_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Route:
    """How one link is realised: ``dialer`` opens connections to ``acceptor`` through a proxy;
    ``mirrored``: the link's ``from`` end is the acceptor, so its up- and downlink swap."""

    link: ExperimentLink
    dialer: str
    acceptor: str

    @property
    def mirrored(self) -> bool:
        return self.link.source != self.dialer

    def proxy_profile(self, profile: LinkProfile) -> LinkProfile:
        """``profile`` (in the link's from → to terms) as the proxy sees it (dialer → acceptor)."""
        return replace(profile, uplink=profile.downlink, downlink=profile.uplink) if self.mirrored else profile


def roles(experiment: Experiment) -> dict[str, str]:
    return {experiment.coordinator.name: "coordinator", experiment.cloud.name: "cloud",
            **{edge.name: "edge" for edge in experiment.edges}}


def plan_routes(experiment: Experiment) -> tuple[dict[str, Route], list[str]]:
    """Routes by link name, and the names of links that carry no traffic (edge ↔ edge)."""
    role = roles(experiment)
    routes, idle = {}, []
    for link in experiment.links:
        a, b = link.source, link.target
        if role[a] == role[b]:
            idle.append(link.name)
            continue
        dialer, acceptor = (a, b) if RANK[role[a]] < RANK[role[b]] else (b, a)
        routes[link.name] = Route(link, dialer, acceptor)
    return routes, idle


def assign_cores(edges: int, cores: Sequence[int]) -> tuple[list[int] | None, list[list[int] | None]]:
    """Cores for the cloud and for each edge: the cloud gets the upper half, the edges share the
    lower half (each its own slice where there are enough). No pinning on a single core."""
    cores = sorted(cores)
    if len(cores) < 2:
        return None, [None] * edges
    half = max(1, len(cores) // 2)
    lower, upper = cores[:half], cores[half:]
    if len(lower) >= edges:
        size = len(lower) // edges
        return upper, [lower[i * size:(i + 1) * size] for i in range(edges)]
    return upper, [[lower[i % len(lower)]] for i in range(edges)]


def without_outages(profile: LinkProfile) -> LinkProfile:
    return replace(profile, outages=Outages(mode=profile.outages.mode)) if profile.outages.any else profile


@dataclass
class SimCluster:
    """The running daemons and the proxies of their links."""

    experiment: Experiment
    loop: LoopThread
    group: DaemonGroup
    routes: dict[str, Route]
    idle_links: list[str]
    proxies: dict[str, ShapingProxy] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)

    def route_between(self, a: str, b: str) -> Route | None:
        return next((r for r in self.routes.values() if {r.dialer, r.acceptor} == {a, b}), None)

    def _dial(self, dialer: str, acceptor: str) -> str:
        """The address ``dialer`` uses to reach ``acceptor``: the link's proxy, or direct."""
        route = self.route_between(dialer, acceptor)
        if route is None:
            return self.addresses[acceptor]
        return self.proxies[route.link.name].address

    def _proxies_to(self, acceptor: str) -> None:
        """Start the proxies in front of ``acceptor`` (outages held back until the workload starts)."""
        for name, route in self.routes.items():
            if route.acceptor == acceptor:
                profile = route.proxy_profile(without_outages(route.link.profile))
                self.proxies[name] = self.loop.run(ShapingProxy.create(
                    upstream=self.addresses[acceptor], profile=profile, name=name))

    def start(self, models: Mapping[str, str | Path], *, dtype: str, pin_cpus: bool = True,
              cloud_timeout_s: float | None = None) -> None:
        """Coordinator, its proxies, cloud, its proxies, edges; then wait until all registered."""
        exp = self.experiment
        cloud_cpus, edge_cpus = assign_cores(len(exp.edges), sorted(os.sched_getaffinity(0)) if pin_cpus else [])
        if exp.cloud.all_cores:
            cloud_cpus = sorted(os.sched_getaffinity(0)) if pin_cpus else None
        coordinator = self.group.start(exp.coordinator.name, [
            "-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", "--heartbeat-interval-s", "1"])
        self._started(exp.coordinator.name, coordinator)
        self._proxies_to(exp.coordinator.name)
        cloud = self.group.start(exp.cloud.name, [
            "-m", "edgecloud.cloud_node", "--model", str(models[exp.cloud.name]), "--listen", "127.0.0.1:0",
            "--coordinator", self._dial(exp.cloud.name, exp.coordinator.name), "--node-id", exp.cloud.name,
            "--dtype", dtype, "--max-sessions", str(exp.cloud.max_sessions)],
            cpus=cloud_cpus, env=_threads(cloud_cpus))
        self._started(exp.cloud.name, cloud)
        self._proxies_to(exp.cloud.name)
        for edge, cpus in zip(exp.edges, edge_cpus, strict=True):
            args = ["-m", "edgecloud.edge_node", "--model", str(models[edge.name]), "--listen", "127.0.0.1:0",
                    "--coordinator", self._dial(edge.name, exp.coordinator.name), "--node-id", edge.name,
                    "--cloud", self._dial(edge.name, exp.cloud.name), "--dtype", dtype]
            if cloud_timeout_s is not None:
                args += ["--cloud-timeout-s", str(cloud_timeout_s)]
            if edge.split_model is not None:
                args += ["--split-model", str(models[split_model_key(edge.name)]), "--split-cloud-speedup", "1"]
                args += ["--split-cuts", ",".join(map(str, edge.split_cuts))] if edge.split_cuts else []
                args += ["--split-codecs", ",".join(edge.split_codecs)] if edge.split_codecs else []
            self._started(edge.name, self.group.start(edge.name, args, cpus=cpus, env=_threads(cpus)))
        self.wait_registered()

    def _started(self, name: str, daemon) -> None:
        self.addresses[name] = daemon.address
        self.pids[name] = daemon.process.pid

    def wait_registered(self, timeout_s: float = REGISTER_TIMEOUT_S) -> None:
        """Poll the coordinator until the cloud and every edge are live."""
        from edgecloud.client import Client

        wanted = {self.experiment.cloud.name, *(e.name for e in self.experiment.edges)}
        deadline = time.monotonic() + timeout_s
        with Client(self.addresses[self.experiment.coordinator.name], timeout_s=30) as client:
            while True:
                live = {n.node_id for n in client.status() if n.live}
                if wanted <= live:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nodes {', '.join(sorted(wanted - live))} did not register with the "
                                       f"coordinator within {timeout_s:.0f} s")
                time.sleep(0.2)

    def unshape(self) -> None:
        """Every link passes bytes untouched (for a quick shutdown after the run)."""
        for proxy in self.proxies.values():
            self.loop.call(proxy.set_profile, LinkProfile())

    def close_proxies(self) -> None:
        while self.proxies:
            _, proxy = self.proxies.popitem()
            try:
                self.loop.run(proxy.close(), timeout_s=10)
            except Exception:  # closing must go on with the other proxies
                log.exception("closing link %s failed", proxy.name)


def _threads(cpus: list[int] | None) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(len(cpus))} if cpus else {}
