"""Telemetry and discovery over MQTT: real Mosquitto brokers (and the embedded amqtt one), real daemons."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from edgecloud import Client
from edgecloud.coordinator.cluster import Cluster, Role
from edgecloud.coordinator.telemetry import TelemetryIngest
from edgecloud.mqtt import parse_url, redact
from edgecloud.processes import DaemonGroup, DaemonProcess, DaemonStartError, free_port
from edgecloud.telemetry import (
    MAX_PAYLOAD_BYTES,
    BadPayload,
    InfoMsg,
    LoadMsg,
    RefusedMsg,
    StatusMsg,
    decode,
)

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd", path="/usr/sbin:/usr/bin")
needs_mosquitto = pytest.mark.skipif(MOSQUITTO is None or MOSQUITTO_PASSWD is None,
                                     reason="mosquitto is not installed (.ci/run installs it)")
APPEAR_S = DISAPPEAR_S = 2.0  # the promise: in the status within 2 s of start, out of it within 2 s of SIGKILL
INSTANCE_A, INSTANCE_B = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Poll ``predicate`` until it holds; the seconds it took (AssertionError after ``timeout_s``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"{what} within {timeout_s:g} s"
        time.sleep(0.01)
    return time.monotonic() - start



def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def start_mosquitto(folder: Path, users: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Mosquitto on a free loopback port (anonymous, or only ``users`` by password); retried on a port race."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["persistence false", "user root"]
    if users:
        passwords = folder / "passwords"
        passwords.touch(mode=0o600)
        for user, password in users.items():
            subprocess.run([MOSQUITTO_PASSWD, "-b", str(passwords), user, password], check=True, timeout=30)
        lines += ["allow_anonymous false", f"password_file {passwords}"]
    else:
        lines += ["allow_anonymous true"]
    for _ in range(5):
        port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text("\n".join([f"listener {port} 127.0.0.1", *lines]) + "\n")
        log = (folder / "mosquitto.log").open("ab")
        process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 10
        while process.poll() is None and not _listening(port) and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None and _listening(port):
            return process, port
        process.kill()
        process.wait(timeout=5)
    raise RuntimeError(f"mosquitto did not start: {(folder / 'mosquitto.log').read_text()[-500:]}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_tiny_pair, tiny_guard) -> dict[str, Path]:
    return make_tiny_pair(tmp_path_factory.mktemp("telemetry-models"), tiny_guard.pair_seeds)


@pytest.fixture(scope="module")
def broker(tmp_path_factory) -> Iterator[str]:
    """An anonymous Mosquitto: its URL."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    process, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield f"mqtt://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def group(tmp_path) -> Iterator[DaemonGroup]:
    with DaemonGroup(log_dir=tmp_path / "logs") as daemons:
        yield daemons


def coordinator(group: DaemonGroup, *args: str) -> tuple[DaemonProcess, Client]:
    daemon = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", *args])
    return daemon, Client(daemon.address, timeout_s=30)


def edge(group: DaemonGroup, folders: dict[str, Path], name: str, *args: str) -> DaemonProcess:
    return group.start(name, ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                              "--listen", "127.0.0.1:0", "--threads", "1", *args])


def live(client: Client) -> dict[str, str]:
    """node id -> address of the live nodes in the coordinator's status."""
    return {n.node_id: n.address for n in client.status() if n.live}


def appear_and_vanish(group: DaemonGroup, client: Client, start: Callable[[], DaemonProcess],
                      node_id: str) -> tuple[float, float]:
    """Start a node, wait for it in the status; SIGKILL it, wait until it is gone: (appear_s, vanish_s)."""
    spawned = time.monotonic()
    node = start()  # returns at the READY line: the node is started (torch imported, model loaded)
    ready_s = time.monotonic() - spawned
    appear_s = wait_until(lambda: node_id in live(client), APPEAR_S, f"{node_id} in the coordinator's status")
    assert live(client)[node_id] == node.address
    node.kill()
    vanish_s = wait_until(lambda: node_id not in live(client), DISAPPEAR_S,
                          f"{node_id} gone from the status after SIGKILL")
    print(f"\n{node_id}: READY {ready_s:.2f} s after spawning, in the status {appear_s:.3f} s after READY, "
          f"gone {vanish_s:.3f} s after SIGKILL")
    return appear_s, vanish_s


async def _exchange(url: str, publish: list[tuple[str, bytes, bool]], listen: str, until: Callable[[dict], bool],
                    timeout_s: float = 5.0) -> dict[str, bytes]:
    """Subscribe to ``listen``, publish, then collect the latest payload per topic until ``until`` holds."""
    _, host, port, _, _ = parse_url(url)
    seen: dict[str, bytes] = {}
    async with aiomqtt.Client(host, port, identifier=f"test-{time.monotonic_ns()}") as client:
        await client.subscribe(listen, qos=1)
        for topic, payload, retain in publish:
            await client.publish(topic, payload, qos=1, retain=retain)
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                seen[str(message.topic)] = bytes(message.payload)
                if until(seen):
                    return seen
    return seen


# Payloads and the ingest (no processes) ---------------------------------------------------------------

def test_payloads_are_checked_before_use() -> None:
    info = InfoMsg(INSTANCE_A, "edge-1", "edge", "127.0.0.1:5000", models=("slm",), capabilities=(1,))
    assert decode("info", info.encode()) == info
    bad = [b"not json", b"[]", json.dumps({"v": 2, "kind": "status", "instance": INSTANCE_A, "state": "online"}),
           json.dumps({"v": 1, "kind": "load", "instance": INSTANCE_A}),  # on the status topic
           json.dumps({"v": 1, "kind": "status", "instance": "XYZ", "state": "online"}),
           json.dumps({"v": 1, "kind": "status", "instance": INSTANCE_A, "state": "maybe"}),
           json.dumps({"v": 1, "kind": "status", "instance": INSTANCE_A, "state": "online", "address": 5}),
           json.dumps({"v": 1, "kind": "status", "instance": INSTANCE_A}),
           b'{"v":1,"kind":"status","instance":"' + INSTANCE_A.encode() + b'","state":"online","address":"'
           + b"x" * MAX_PAYLOAD_BYTES + b'"}']
    for payload in bad:
        with pytest.raises(BadPayload):
            decode("status", payload if isinstance(payload, bytes) else payload.encode())
    for field, value in (("active_sessions", -1), ("kv_bytes", 1.5), ("tokens_per_s", "fast"),
                         ("active_requests", True), ("max_sessions", 2**60)):
        with pytest.raises(BadPayload, match=field):
            decode("load", json.dumps({"v": 1, "kind": "load", "instance": INSTANCE_A, field: value}).encode())
    with pytest.raises(BadPayload, match="NaN"):
        decode("load", b'{"v":1,"kind":"load","instance":"aaaaaaaa","tokens_per_s":NaN}')
    assert redact("mqtt://user:secret@host:1883") == "mqtt://user:***@host:1883"


def test_ingest_announces_refuses_and_forgets() -> None:
    cluster = Cluster(ttl_s=10)
    ingest = TelemetryIngest(cluster)
    info = InfoMsg(INSTANCE_A, "edge-1", "edge", "127.0.0.1:5000", models=("slm",))
    assert ingest.handle("edge-1", "status", StatusMsg(INSTANCE_A, "online").encode()) is None
    assert cluster.live() == []  # online without info: nothing to register yet
    assert ingest.handle("edge-1", "info", info.encode()) is None
    assert [n.address for n in cluster.live(Role.EDGE)] == ["127.0.0.1:5000"]
    ingest.handle("edge-1", "load", LoadMsg(INSTANCE_A, active_requests=3, max_sessions=4).encode())
    assert cluster.nodes()[0].load.active_requests == 3
    # A second process with the same id: refused, naming the holder; the registry keeps the first.
    other = InfoMsg(INSTANCE_B, "edge-1", "edge", "127.0.0.1:6000")
    assert ingest.handle("edge-1", "info", other.encode()) is None
    refusal = ingest.handle("edge-1", "status", StatusMsg(INSTANCE_B, "online").encode())
    assert isinstance(refusal, RefusedMsg) and refusal.instance == INSTANCE_B
    assert refusal.holder_address == "127.0.0.1:5000" and "already live" in refusal.reason
    ingest.handle("edge-1", "status", StatusMsg(INSTANCE_B, "offline").encode())  # not the holder's word
    ingest.handle("edge-1", "load", LoadMsg(INSTANCE_B, active_requests=9).encode())
    assert [(n.info.address, n.load.active_requests) for n in cluster.nodes()] == [("127.0.0.1:5000", 3)]
    # Lies and junk change nothing: info under another id's topic, a bad address, bad JSON.
    ingest.handle("edge-2", "info", info.encode())
    ingest.handle("edge-3", "info", InfoMsg(INSTANCE_A, "edge-3", "edge", "no port").encode())
    ingest.handle("edge-3", "status", StatusMsg(INSTANCE_A, "online").encode())
    ingest.handle("edge-1", "load", b"{")
    assert [n.node_id for n in cluster.live()] == ["edge-1"]
    ingest.handle("edge-1", "status", StatusMsg(INSTANCE_A, "offline").encode())
    assert cluster.live() == [] and not cluster.nodes(include_stale=True)[0].live


def test_placement_uses_load_and_measured_rtt() -> None:
    cluster = Cluster(ttl_s=10)
    ingest = TelemetryIngest(cluster)
    for node_id, instance, address, role in (("c1", "c1c1c1c1", "127.0.0.1:7001", "cloud"),
                                             ("c2", "c2c2c2c2", "127.0.0.1:7002", "cloud"),
                                             ("e1", "e1e1e1e1", "127.0.0.1:7003", "edge")):
        ingest.handle(node_id, "info", InfoMsg(instance, node_id, role, address).encode())
        ingest.handle(node_id, "status", StatusMsg(instance, "online").encode())
    assert cluster.place(Role.CLOUD).node_id == "c1"  # equal load, nothing measured: the lowest id
    link = {"v": 1, "kind": "link", "instance": "e1e1e1e1", "peers": [
        {"address": "127.0.0.1:7001", "rtt_ms": 80.0, "bandwidth_mbps": 10.0, "samples": 5, "age_s": 0.1},
        {"address": "127.0.0.1:7002", "rtt_ms": 5.0, "bandwidth_mbps": 10.0, "samples": 5, "age_s": 0.1}]}
    ingest.handle("e1", "link", json.dumps(link).encode())
    assert cluster.place(Role.CLOUD).node_id == "c2"  # the edges measured c2 closer
    ingest.handle("c2", "load", LoadMsg("c2c2c2c2", active_sessions=3, max_sessions=4).encode())
    assert cluster.place(Role.CLOUD).node_id == "c1"  # load first


# Real brokers, real daemons ---------------------------------------------------------------------------

@needs_mosquitto
def test_node_appears_within_2s_and_vanishes_within_2s_of_sigkill(broker, folders, group) -> None:
    _, client = coordinator(group, "--mqtt-url", broker)
    appear_and_vanish(group, client, lambda: edge(group, folders, "edge", "--node-id", "edge-mqtt",
                                                  "--mqtt-url", broker), "edge-mqtt")
    # ... and a clean stop publishes offline too.
    node = edge(group, folders, "edge2", "--node-id", "edge-clean", "--mqtt-url", broker)
    wait_until(lambda: "edge-clean" in live(client), APPEAR_S, "edge-clean in the status")
    assert node.close() == 0
    wait_until(lambda: "edge-clean" not in live(client), DISAPPEAR_S, "edge-clean gone after a clean stop")
    client.close()


@needs_mosquitto
def test_grpc_registration_and_mqtt_share_one_entry(broker, folders, group) -> None:
    """A node on both planes is one entry (same instance); the will removes it at once although its
    gRPC lease is fresh; a gRPC-only node still registers."""
    coord, client = coordinator(group, "--mqtt-url", broker, "--heartbeat-interval-s", "1")
    appear_and_vanish(group, client, lambda: edge(group, folders, "edge", "--node-id", "edge-both",
                                                  "--mqtt-url", broker, "--coordinator", coord.address),
                      "edge-both")
    edge(group, folders, "grpc-only", "--node-id", "edge-grpc", "--coordinator", coord.address)
    wait_until(lambda: "edge-grpc" in live(client), 10, "the gRPC-only node in the status")
    client.close()


@needs_mosquitto
def test_a_second_process_with_the_same_id_is_refused(broker, folders, group, tmp_path) -> None:
    _, client = coordinator(group, "--mqtt-url", broker)
    first = edge(group, folders, "first", "--node-id", "edge-dup", "--mqtt-url", broker)
    wait_until(lambda: "edge-dup" in live(client), APPEAR_S, "the first edge-dup")
    # The second process reads the id's retained status before announcing itself, and refuses to start.
    with pytest.raises(DaemonStartError, match="exited with code 2"):
        edge(group, folders, "second", "--node-id", "edge-dup", "--mqtt-url", broker)
    message = (tmp_path / "logs" / "second.log").read_text()
    assert "node id 'edge-dup' is already online" in message and first.address in message
    assert live(client)["edge-dup"] == first.address

    # Two that start at once both find the id free: the coordinator keeps the first and refuses the other
    # on its `refused` topic; the holder then restores its retained status, which the other overwrote.
    topic = "edgecloud/default/nodes/edge-dup/"
    racer = [(topic + "info", InfoMsg(INSTANCE_B, "edge-dup", "edge", "127.0.0.1:9").encode(), True),
             (topic + "status", StatusMsg(INSTANCE_B, "online", "127.0.0.1:9").encode(), True)]
    seen = asyncio.run(_exchange(broker, racer, topic + "#", lambda s: topic + "refused" in s))
    refusal = decode("refused", seen[topic + "refused"])
    assert isinstance(refusal, RefusedMsg) and refusal.instance == INSTANCE_B
    assert refusal.holder_address == first.address
    assert live(client)["edge-dup"] == first.address

    def restored(s: dict) -> bool:
        return topic + "status" in s and decode("status", s[topic + "status"]).instance != INSTANCE_B
    status = asyncio.run(_exchange(broker, [], topic + "status", restored))
    assert decode("status", status[topic + "status"]).online
    client.close()


def test_embedded_broker_without_mosquitto(folders, group) -> None:
    """No --mqtt-url: the coordinator embeds an amqtt broker and announces its URL."""
    coord, client = coordinator(group, "--mqtt-listen", "127.0.0.1:0")
    url = coord.endpoints["mqtt"]
    assert url.startswith("mqtt://127.0.0.1:")
    appear_and_vanish(group, client, lambda: edge(group, folders, "edge", "--node-id", "edge-embedded",
                                                  "--mqtt-url", url), "edge-embedded")
    client.close()


@needs_mosquitto
def test_broker_credentials(tmp_path_factory, folders, group, tmp_path) -> None:
    process, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto-auth"), users={"edge": "s3cret"})
    try:
        good, bad = f"mqtt://edge:s3cret@127.0.0.1:{port}", f"mqtt://edge:wrong@127.0.0.1:{port}"
        with pytest.raises(DaemonStartError, match="exited with code 2"):
            coordinator(group, "--mqtt-url", f"mqtt://127.0.0.1:{port}")  # anonymous: refused
        _, client = coordinator(group, "--mqtt-url", good)
        with pytest.raises(DaemonStartError, match="exited with code 2"):
            edge(group, folders, "wrong", "--node-id", "edge-auth", "--mqtt-url", bad)
        message = (tmp_path / "logs" / "wrong.log").read_text()
        assert "refused the credentials" in message and "wrong" not in message.split("error:")[-1]
        node = edge(group, folders, "right", "--node-id", "edge-auth", "--mqtt-url", good)
        wait_until(lambda: "edge-auth" in live(client), APPEAR_S, "the node with the right password")
        assert live(client)["edge-auth"] == node.address
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)
