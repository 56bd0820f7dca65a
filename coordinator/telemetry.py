"""The coordinator's telemetry subscriber: MQTT node announcements into the ``Cluster`` registry.

``TelemetryIngest`` decides (no I/O): a node whose retained ``info`` and ``status`` ``online``
name the same instance is announced to the cluster (validated like a gRPC registration); its
``load`` messages are its heartbeats; ``link`` RTTs feed placement's tie-break; ``offline`` (a
clean stop or the broker's last will) takes it out of placement at once. A second instance that
announces a live node's id is refused: the cluster keeps the first, and a ``refused`` message
(naming the holder's address) goes to the node's ``refused`` topic, which the refused process
reads and stops on. ``TelemetrySubscriber`` is the connection: subscribe, feed, reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import aiomqtt

from edgecloud.coordinator.cluster import (
    Cluster,
    Compute,
    DuplicateInstance,
    Load,
    NodeInfo,
    Role,
)
from edgecloud.coordinator.mqtt_broker import EmbeddedBroker
from edgecloud.errors import DomainError, clip
from edgecloud.mqtt import CONNECTION_ERRORS, MqttConfig, connect_error, disconnect
from edgecloud.processes import announce_endpoint
from edgecloud.telemetry import (
    BadPayload,
    InfoMsg,
    LinkMsg,
    LoadMsg,
    RefusedMsg,
    StatusMsg,
    decode,
)

log = logging.getLogger(__name__)
_ERRORS = CONNECTION_ERRORS


def node_from_info(msg: InfoMsg) -> NodeInfo:
    return NodeInfo(node_id=msg.node_id, role=Role(msg.role), address=msg.address, models=msg.models,
                    capabilities=msg.capabilities, version=msg.version,
                    compute=Compute(device=msg.device, cpu_cores=msg.cpu_cores, memory_bytes=msg.memory_bytes,
                                    accelerator=msg.accelerator, tokens_per_s=msg.tokens_per_s, gflops=msg.gflops))


def load_from_msg(msg: LoadMsg) -> Load:
    return Load(active_sessions=msg.active_sessions, max_sessions=msg.max_sessions,
                active_requests=msg.active_requests, tokens_per_s=msg.tokens_per_s, kv_bytes=msg.kv_bytes,
                cpu_utilization=msg.cpu_utilization, memory_used_bytes=msg.memory_used_bytes)


class TelemetryIngest:
    """What each node message does to ``cluster``; ``handle`` returns a refusal to publish, if any.

    Holds the latest info and online instance per node id, for at most ``2 * max_nodes`` ids.
    """

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.max_ids = 2 * cluster.limits.max_nodes
        self._infos: dict[str, InfoMsg] = {}
        self._online: dict[str, str] = {}  # node id -> instance that said online

    def handle(self, node_id: str, kind: str, payload: bytes) -> RefusedMsg | None:
        if len(node_id) > self.cluster.limits.max_id_chars:
            log.warning("telemetry: ignored a message for a node id of %d characters", len(node_id))
            return None
        try:
            msg = decode(kind, payload)
        except BadPayload as exc:
            log.warning("telemetry: ignored a bad payload from %s: %s", clip(node_id), exc)
            return None
        if isinstance(msg, InfoMsg):
            if msg.node_id != node_id:
                log.warning("telemetry: info on %s's topic names node %s: ignored", clip(node_id), clip(msg.node_id))
                return None
            if not self._room(node_id, self._infos):
                return None
            self._infos[node_id] = msg
            return self._announce(node_id) if self._online.get(node_id) == msg.instance else None
        if isinstance(msg, StatusMsg):
            return self._status(node_id, msg)
        if isinstance(msg, LoadMsg):
            self.cluster.report_load(node_id, msg.instance, load_from_msg(msg))
        elif isinstance(msg, LinkMsg):
            self.cluster.report_links(node_id, msg.instance, {p.address: p.rtt_ms for p in msg.peers})
        return None  # refused: the coordinator's own messages

    def _status(self, node_id: str, msg: StatusMsg) -> RefusedMsg | None:
        if msg.online:
            if not self._room(node_id, self._online):
                return None
            self._online[node_id] = msg.instance
            info = self._infos.get(node_id)
            return self._announce(node_id) if info is not None and info.instance == msg.instance else None
        if self._online.get(node_id) == msg.instance:
            del self._online[node_id]
        if self.cluster.went_offline(node_id, msg.instance):
            log.info("telemetry: node %s (instance %s) is offline", node_id, msg.instance)
        return None

    def _announce(self, node_id: str) -> RefusedMsg | None:
        info = self._infos[node_id]
        try:
            self.cluster.announce(node_from_info(info), info.instance)
        except DuplicateInstance as exc:
            log.warning("telemetry: refused instance %s of node %s at %s: %s", info.instance, node_id,
                        clip(info.address), exc)
            return RefusedMsg(info.instance, exc.holder_instance, exc.holder_address,
                              f"node id {node_id} is already live at {exc.holder_address} under another instance")
        except DomainError as exc:
            log.warning("telemetry: refused the announcement of %s: %s", clip(node_id), exc)
            return None
        log.info("telemetry: node %s (%s, instance %s) online at %s", node_id, info.role, info.instance, info.address)
        return None

    def _room(self, node_id: str, table: dict) -> bool:
        if node_id in table or len(table) < self.max_ids:
            return True
        log.warning("telemetry: %d node ids already known; ignored %s", len(table), clip(node_id))
        return False


class TelemetrySubscriber:
    """Subscribes to every node topic of the cluster and feeds ``TelemetryIngest``; reconnects."""

    def __init__(self, config: MqttConfig, ingest: TelemetryIngest) -> None:
        self.config = config
        self.ingest = ingest
        self.prefix = config.nodes_filter[:-len("+/+")]
        self._task: asyncio.Task | None = None
        self._client: aiomqtt.Client | None = None

    async def start(self) -> None:
        """Connect and subscribe (MqttUnavailable if the broker cannot be used), then read in the background."""
        client = await self._connect()
        self._task = asyncio.create_task(self._run(client))

    async def _connect(self) -> aiomqtt.Client:
        client = self.config.client(f"edgecloud-coordinator-{secrets.token_hex(6)}")
        try:
            await asyncio.wait_for(client.__aenter__(), self.config.connect_timeout_s)
            await client.subscribe(self.config.nodes_filter, qos=1)
        except _ERRORS as exc:
            with contextlib.suppress(*_ERRORS, RuntimeError):
                await client.__aexit__(None, None, None)
            raise connect_error(self.config, exc) from None
        self._client = client
        log.info("telemetry: subscribed to %s on %s", self.config.nodes_filter, self.config.redacted_url)
        return client

    async def _run(self, client: aiomqtt.Client) -> None:
        backoff = 0.25
        while True:
            try:
                await self._read(client)
            except _ERRORS as exc:
                log.warning("telemetry: connection to %s lost: %s", self.config.redacted_url, exc)
            await self._drop()
            while True:
                await asyncio.sleep(backoff)  # a reconnection pause, not synchronisation
                backoff = min(2 * backoff, self.config.reconnect_max_s)
                try:
                    client = await self._connect()
                    backoff = 0.25
                    break
                except ValueError as exc:
                    log.warning("telemetry: reconnecting: %s", exc)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            node_id, _, kind = topic[len(self.prefix):].partition("/")
            if not topic.startswith(self.prefix) or "/" in kind:
                continue
            refusal = self.ingest.handle(node_id, kind, bytes(message.payload))
            if refusal is not None:
                await client.publish(self.config.node_topic(node_id, "refused"), refusal.encode(), qos=1)

    async def _drop(self) -> None:
        client, self._client = self._client, None
        await disconnect(client, self.config.connect_timeout_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()


class CoordinatorTelemetry:
    """The coordinator's MQTT side: a subscriber on ``mqtt``, or on a broker it embeds on
    ``embedded_listen`` (whose URL it announces as an ``EDGECLOUD_ENDPOINT mqtt`` line); neither
    when both are None."""

    def __init__(self, cluster: Cluster, *, mqtt: MqttConfig | None, embedded_listen: str | None,
                 cluster_name: str = "default") -> None:
        self.cluster = cluster
        self.mqtt = mqtt
        self.embedded_listen = embedded_listen
        self.cluster_name = cluster_name
        self.broker: EmbeddedBroker | None = None
        self.subscriber: TelemetrySubscriber | None = None

    async def start(self) -> None:
        """MqttUnavailable if ``mqtt`` cannot be used; an embedded broker that fails to start only logs."""
        mqtt = self.mqtt
        if mqtt is None and self.embedded_listen:
            self.broker = EmbeddedBroker(self.embedded_listen)
            try:
                url = await self.broker.start()
            except (OSError, ValueError) as exc:
                log.error("no telemetry: the embedded MQTT broker did not start: %s", exc)
                return
            announce_endpoint("mqtt", url)
            mqtt = MqttConfig(url=url, cluster=self.cluster_name)
        if mqtt is not None:
            self.subscriber = TelemetrySubscriber(mqtt, TelemetryIngest(self.cluster))
            await self.subscriber.start()

    async def close(self) -> None:
        if self.subscriber is not None:
            await self.subscriber.close()
        if self.broker is not None:
            await self.broker.close()
