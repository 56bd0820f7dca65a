"""What every edgecloud daemon does around its servicer: bind, announce, register, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from edgecloud import __version__, rpc
from edgecloud.metrics import MetricsServer, bind_gauge
from edgecloud.mqtt import MqttConfig
from edgecloud.processes import announce_endpoint, announce_ready
from edgecloud.telemetry import INSTANCE_LABEL, PeerLink
from edgecloud.telemetry_node import DuplicateNode, NodeTelemetry
from edgecloud.v1 import common_pb2
from edgecloud.v1 import coordinator_pb2 as coord_pb
from edgecloud.v1 import coordinator_pb2_grpc as coord_grpc

log = logging.getLogger(__name__)


def advertised_address(listen: str, port: int, advertise: str | None) -> str:
    """The address others dial: ``advertise`` if given, else the listen host with the bound port."""
    if advertise:
        return advertise
    host = listen.rsplit(":", 1)[0] or "127.0.0.1"
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


class CoordinatorAgent:
    """Registers a node with the coordinator and keeps it alive with heartbeats.

    The coordinator may start after the node: registration is retried in the background.
    Registry calls go with the node token (``security.node_token``), and heartbeats and the
    final deregistration carry the lease the registration returned. A heartbeat answered
    NOT_FOUND or PERMISSION_DENIED (the coordinator restarted, or expired or replaced the node)
    registers again. Every reply brings the live cloud nodes' addresses (``cloud_addresses``);
    ``refresh`` asks for them at once (at most once per ``min_refresh_interval_s``).
    """

    def __init__(self, coordinator: str, info: common_pb2.NodeInfo, load: Callable[[], common_pb2.NodeLoad],
                 *, security: rpc.SecurityConfig, interval_s: float = 5.0, rpc_timeout_s: float = 5.0,
                 min_refresh_interval_s: float = 1.0) -> None:
        self.coordinator = coordinator
        self.info = info
        self.load = load
        self.security = security.as_node()
        self.interval_s = interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.lease = ""
        self.cloud_addresses: frozenset[str] = frozenset()
        self._channel: grpc.aio.Channel | None = None
        self._stub: coord_grpc.CoordinatorStub | None = None
        self._task: asyncio.Task | None = None
        self._refreshing: asyncio.Task | None = None
        self._last_refresh = -float("inf")
        self.registered = asyncio.Event()

    async def start(self) -> None:
        self._channel = rpc.create_channel(self.coordinator, self.security)
        self._stub = coord_grpc.CoordinatorStub(self._channel)
        self._task = asyncio.create_task(self._run(self._stub))

    async def _register(self, stub: coord_grpc.CoordinatorStub) -> None:
        reply = await stub.RegisterNode(coord_pb.RegisterNodeRequest(node=self.info, load=self.load(),
                                                                     lease=self.lease),
                                        timeout=self.rpc_timeout_s)
        self.interval_s = reply.heartbeat_interval_s or self.interval_s
        self.lease = reply.lease
        self.cloud_addresses = frozenset(reply.cloud_addresses)
        self.registered.set()
        log.info("registered %s with coordinator %s", self.info.node_id, self.coordinator)

    async def _heartbeat(self, stub: coord_grpc.CoordinatorStub) -> None:
        reply = await stub.Heartbeat(coord_pb.HeartbeatRequest(node_id=self.info.node_id, load=self.load(),
                                                               lease=self.lease),
                                     timeout=self.rpc_timeout_s)
        self.cloud_addresses = frozenset(reply.cloud_addresses)

    async def _run(self, stub: coord_grpc.CoordinatorStub) -> None:
        registered = False
        while True:
            try:
                if not registered:
                    await self._register(stub)
                    registered = True
                else:
                    await self._heartbeat(stub)
            except grpc.aio.AioRpcError as exc:
                if registered and exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED):
                    log.warning("coordinator %s forgot %s (%s): registering again", self.coordinator,
                                self.info.node_id, exc.code().name)
                    registered = False
                    self.registered.clear()
                    continue
                log.warning("coordinator %s: %s %s", self.coordinator, exc.code().name, exc.details())
            await asyncio.sleep(self.interval_s if registered else min(self.interval_s, 1.0))

    async def refresh(self) -> None:
        """Ask the coordinator now for the live clouds (an immediate heartbeat), unless asked recently.

        Concurrent callers share one call; failures only log (the periodic loop carries on).
        """
        if self._stub is None or not self.registered.is_set():
            return
        if self._refreshing is None or self._refreshing.done():
            loop = asyncio.get_running_loop()
            if loop.time() - self._last_refresh < self.min_refresh_interval_s:
                return
            self._last_refresh = loop.time()
            self._refreshing = loop.create_task(self._heartbeat(self._stub))
        try:
            await asyncio.shield(self._refreshing)
        except grpc.aio.AioRpcError as exc:
            log.warning("refreshing the cloud list from %s: %s %s", self.coordinator, exc.code().name,
                        exc.details())

    async def close(self) -> None:
        for task in (self._task, self._refreshing):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await task
        if self._channel is not None:
            if self.registered.is_set():
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await coord_grpc.CoordinatorStub(self._channel).DeregisterNode(
                        coord_pb.DeregisterNodeRequest(node_id=self.info.node_id, lease=self.lease), timeout=2.0)
            await self._channel.close()


async def serve_until_stopped(name: str, server: grpc.aio.Server, listen: str, security: rpc.SecurityConfig,
                              *, advertise: str | None = None,
                              on_started: Callable[[str], Awaitable[None]] | None = None,
                              on_stopping: Callable[[], Awaitable[None]] | None = None,
                              grace_s: float = 5.0, stop: asyncio.Event | None = None,
                              metrics_listen: str | None = None) -> None:
    """Start ``server`` on ``listen`` (and the metrics listener on ``metrics_listen``, its URL announced),
    announce readiness, then run until SIGINT/SIGTERM (or ``stop`` is set)."""
    exporter = MetricsServer(metrics_listen, security) if metrics_listen else None
    port = await rpc.start_server(server, listen, security)
    address = advertised_address(listen, port, advertise)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if exporter is not None:
            announce_endpoint("metrics", await exporter.start())
        if on_started is not None:
            await on_started(address)
        announce_ready(name, address)
        log.info("%s serving on %s", name, address)
        await stop.wait()
        log.info("%s stopping", name)
    finally:
        if on_stopping is not None:
            await on_stopping()
        await server.stop(grace_s)
        if exporter is not None:
            await exporter.close()


@dataclass(frozen=True)
class NodeIdentity:
    """How a node presents itself to the coordinator."""

    node_id: str
    role: int  # common_pb2.NODE_ROLE_*
    model_name: str
    capabilities: tuple[int, ...]  # common_pb2.CAPABILITY_*
    device: str = "cpu"


# Load fields exported as gauges (the same numbers the coordinator and MQTT get).
LOAD_GAUGES = {"active_sessions": "Sessions held (cloud: KV caches).",
               "max_sessions": "Sessions (edge: requests) this node admits at once.",
               "active_requests": "Requests in progress.",
               "kv_bytes": "Bytes of KV cache held."}


async def serve_node(name: str, server: grpc.aio.Server, identity: NodeIdentity, *, listen: str,
                     security: rpc.SecurityConfig, load: Callable[[], common_pb2.NodeLoad],
                     coordinator: str | None, heartbeat_interval_s: float, advertise: str | None = None,
                     on_stopping: Callable[[], Awaitable[None]] | None = None,
                     on_agent: Callable[[CoordinatorAgent], None] | None = None, mqtt: MqttConfig | None = None,
                     links: Callable[[], tuple[PeerLink, ...]] = tuple, metrics_listen: str | None = None) -> None:
    """``serve_until_stopped`` for an edge or cloud node, registered with ``coordinator`` if given and
    announced over MQTT (``mqtt``: info, status, load and ``links``) if given.

    ``on_agent`` receives the ``CoordinatorAgent`` once it has started (e.g. for its cloud list). An id
    already online under another instance (or refused by the coordinator) raises ``DuplicateNode``.
    """
    agent: CoordinatorAgent | None = None
    telemetry: NodeTelemetry | None = None
    refused = asyncio.Event()
    for name_, what in LOAD_GAUGES.items():
        bind_gauge(name_, what, lambda field=name_: getattr(load(), field))

    async def started(address: str) -> None:
        nonlocal agent, telemetry
        info = common_pb2.NodeInfo(node_id=identity.node_id, role=identity.role, address=address,
                                   models=[identity.model_name], capabilities=list(identity.capabilities),
                                   version=__version__, compute=common_pb2.ComputeProfile(
                                       device=identity.device, cpu_cores=os.cpu_count() or 0))
        if mqtt is not None:
            telemetry = NodeTelemetry(mqtt, info, load, links)
            telemetry.refused = refused
            await telemetry.start()  # before READY: a duplicate id never becomes ready
            info.labels[INSTANCE_LABEL] = telemetry.instance
        if coordinator:
            agent = CoordinatorAgent(coordinator, info, load, security=security, interval_s=heartbeat_interval_s)
            await agent.start()
            if on_agent is not None:
                on_agent(agent)

    async def stopping() -> None:
        if agent is not None:
            await agent.close()
        if telemetry is not None:
            await telemetry.close()
        if on_stopping is not None:
            await on_stopping()

    await serve_until_stopped(name, server, listen, security, advertise=advertise, on_started=started,
                              on_stopping=stopping, stop=refused, metrics_listen=metrics_listen)
    if telemetry is not None and telemetry.refusal:  # (a signal sets ``refused`` too)
        raise DuplicateNode(telemetry.refusal)
