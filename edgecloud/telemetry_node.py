"""A node's side of the telemetry plane: announce itself over MQTT, publish its load and links.

On connecting (with a retained last will ``offline``), the node first reads its id's retained
``status``: if another instance is online under the id, it refuses to start (``DuplicateNode``,
naming that instance's address). Otherwise it publishes ``info`` and ``status`` ``online``
(retained), then ``load`` and ``link`` every ``load_interval_s``. A lost connection is retried
with backoff (and probed again). If the coordinator refuses this instance (``refused`` topic),
``refused`` is set and the daemon stops; if it refuses another instance that used this id, this
node publishes its own retained info and status again (the other one overwrote them). A clean
``close`` publishes ``offline`` before disconnecting; a crash leaves it to the broker's will.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable

import aiomqtt

from edgecloud.mqtt import CONNECTION_ERRORS, MqttConfig, MqttUnavailable, connect_error, disconnect
from edgecloud.telemetry import (
    BadPayload,
    InfoMsg,
    LinkMsg,
    LoadMsg,
    Message,
    PeerLink,
    RefusedMsg,
    StatusMsg,
    decode,
)
from edgecloud.v1 import common_pb2

log = logging.getLogger(__name__)

ROLE_NAMES = {common_pb2.NODE_ROLE_EDGE: "edge", common_pb2.NODE_ROLE_CLOUD: "cloud"}
_ERRORS = CONNECTION_ERRORS


class DuplicateNode(ValueError):
    """Another running instance holds this node id."""


def new_instance_id() -> str:
    return secrets.token_hex(8)


def machine_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def process_memory_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_utilization() -> float:
    try:
        return round(os.getloadavg()[0] / (os.cpu_count() or 1), 3)
    except OSError:
        return 0.0


class NodeTelemetry:
    """Publishes one node's telemetry; ``start`` raises MqttUnavailable or DuplicateNode."""

    def __init__(self, config: MqttConfig, info: common_pb2.NodeInfo, load: Callable[[], common_pb2.NodeLoad],
                 links: Callable[[], tuple[PeerLink, ...]] = tuple, *, instance: str | None = None) -> None:
        self.config = config
        self.node_id = info.node_id
        self.instance = instance or new_instance_id()
        self.address = info.address
        c = info.compute
        self.info = InfoMsg(self.instance, info.node_id, ROLE_NAMES.get(info.role, "edge"), info.address,
                            models=tuple(info.models), capabilities=tuple(info.capabilities), version=info.version,
                            device=c.device, cpu_cores=c.cpu_cores, memory_bytes=c.memory_bytes or machine_memory_bytes(),
                            accelerator=c.accelerator, tokens_per_s=c.tokens_per_s, gflops=c.gflops)
        self.info.encode()  # ValueError now if it can never be sent
        self.load = load
        self.links = links
        self.refused = asyncio.Event()
        self.refusal = ""
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task | None = None
        self._task: asyncio.Task | None = None
        self._probing: asyncio.Future | None = None
        self._other: StatusMsg | None = None
        self._announced = False

    def topic(self, kind: str) -> str:
        return self.config.node_topic(self.node_id, kind)

    @property
    def probe_topic(self) -> str:
        return f"edgecloud/{self.config.cluster}/probe/{self.instance}"

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run())

    # One connection --------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        will = aiomqtt.Will(self.topic("status"), StatusMsg(self.instance, "offline", self.address).encode(),
                            qos=1, retain=True)
        client = self.config.client(f"edgecloud-{self.node_id}-{self.instance}"[:64], will=will)
        try:
            await asyncio.wait_for(client.__aenter__(), self.config.connect_timeout_s)
        except _ERRORS as exc:
            raise connect_error(self.config, exc) from None
        self._client = client
        try:
            self._reader = asyncio.create_task(self._read(client))
            await self._probe(client)
            await self._announce(client)
        except BaseException:
            await self._drop()
            raise
        log.info("telemetry: node %s (instance %s) online on %s", self.node_id, self.instance,
                 self.config.redacted_url)

    async def _probe(self, client: aiomqtt.Client) -> None:
        """Read the id's retained status: the broker sends it on subscription, before our probe's echo."""
        self._other = None
        self._probing = asyncio.get_running_loop().create_future()
        await client.subscribe([(self.topic("status"), 1), (self.topic("refused"), 1), (self.probe_topic, 1)])
        await client.publish(self.probe_topic, b"probe", qos=1)
        try:
            await asyncio.wait_for(asyncio.shield(self._probing), self.config.probe_timeout_s)
        except TimeoutError:
            log.warning("telemetry: no echo of the probe within %.1f s; assuming no other instance of %s",
                        self.config.probe_timeout_s, self.node_id)
        self._probing = None
        with contextlib.suppress(*_ERRORS):
            await client.unsubscribe(self.probe_topic)
        if self._other is not None:
            raise DuplicateNode(
                f"node id {self.node_id!r} is already online in cluster {self.config.cluster!r}: another process "
                f"(instance {self._other.instance}) serves it at {self._other.address or 'an unknown address'}. "
                "Two processes share one node id (a copied state folder?): give this one another --node-id, "
                "or stop the other. If that process is gone, clear its retained status: mosquitto_pub -r -n "
                f"-t {self.topic('status')}")

    async def _announce(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topic("info"), self.info.encode(), qos=1, retain=True)
        await client.publish(self.topic("status"), StatusMsg(self.instance, "online", self.address).encode(),
                             qos=1, retain=True)
        self._announced = True
        await self._publish_load(client)

    async def _publish_load(self, client: aiomqtt.Client) -> None:
        load = self.load()
        msg = LoadMsg(self.instance, active_sessions=load.active_sessions, max_sessions=load.max_sessions,
                      active_requests=load.active_requests, tokens_per_s=max(0.0, load.tokens_per_s),
                      kv_bytes=load.kv_bytes, cpu_utilization=load.cpu_utilization or cpu_utilization(),
                      memory_used_bytes=load.memory_used_bytes or process_memory_bytes())
        await client.publish(self.topic("load"), msg.encode(), qos=0, retain=True)
        peers = self.links()[:16]
        if peers:
            await client.publish(self.topic("link"), LinkMsg(self.instance, peers).encode(), qos=0, retain=True)

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            topic = str(message.topic)
            if topic == self.probe_topic:
                if self._probing is not None and not self._probing.done():
                    self._probing.set_result(None)
                continue
            kind = topic.rsplit("/", 1)[-1]
            try:
                msg = decode(kind, bytes(message.payload))
            except BadPayload as exc:
                log.warning("telemetry: ignored a bad payload on %s: %s", topic[:200], exc)
                continue
            await self._handle(client, msg)

    async def _handle(self, client: aiomqtt.Client, msg: Message) -> None:
        if msg.instance == self.instance and not isinstance(msg, RefusedMsg):
            return  # our own status (or our will, after a reconnection)
        if isinstance(msg, StatusMsg):
            if not self._announced:
                if msg.online:
                    self._other = msg
            elif msg.online:
                log.warning("telemetry: instance %s at %s announced itself as %s too", msg.instance,
                            msg.address, self.node_id)
            else:  # the other instance's will or shutdown overwrote our retained status
                await client.publish(self.topic("status"), StatusMsg(self.instance, "online", self.address).encode(),
                                     qos=1, retain=True)
        elif isinstance(msg, RefusedMsg):
            if msg.instance == self.instance:
                self.refusal = (f"the coordinator refused node id {self.node_id!r} for this process: {msg.reason} "
                                f"(held by instance {msg.holder_instance} at {msg.holder_address})")
                log.error("telemetry: %s", self.refusal)
                self.refused.set()
            elif self._announced and msg.holder_instance == self.instance:
                log.warning("telemetry: the coordinator refused instance %s that used our id; re-announcing",
                            msg.instance)
                await self._announce(client)

    # Background -------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.25
        while not self.refused.is_set():
            reader = self._reader
            if reader is not None and self._client is not None:
                done, _ = await asyncio.wait({reader}, timeout=self.config.load_interval_s)
                if not done:
                    try:
                        await self._publish_load(self._client)
                        backoff = 0.25
                        continue
                    except _ERRORS as exc:
                        log.warning("telemetry: publishing load failed: %s", exc)
                elif not reader.cancelled() and reader.exception() is not None:
                    log.warning("telemetry: connection to %s lost: %s", self.config.redacted_url, reader.exception())
            await self._drop()
            await asyncio.sleep(backoff)  # a reconnection pause, not synchronisation
            backoff = min(2 * backoff, self.config.reconnect_max_s)
            try:
                await self._connect()
            except DuplicateNode as exc:
                self.refusal = str(exc)
                log.error("telemetry: %s", exc)
                self.refused.set()
            except MqttUnavailable as exc:
                log.warning("telemetry: reconnecting: %s", exc)

    async def _drop(self) -> None:
        """Forget the connection (no offline published: the broker sends the will, if it noticed)."""
        self._announced = False
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, *_ERRORS):
                await self._reader
            self._reader = None
        client, self._client = self._client, None
        await disconnect(client, self.config.connect_timeout_s)

    async def close(self) -> None:
        """Publish ``offline`` (unless refused: the id is another's) and disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None and self._announced and not self.refusal:
            with contextlib.suppress(*_ERRORS):
                await asyncio.wait_for(self._client.publish(
                    self.topic("status"), StatusMsg(self.instance, "offline", self.address).encode(), qos=1,
                    retain=True), self.config.connect_timeout_s)
        await self._drop()
