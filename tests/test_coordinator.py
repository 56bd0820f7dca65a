"""The coordinator as a real process on port 0: credentials, leases, bounds, expiry, failover.

Registry calls are made by hand (as a hostile client or node would); failover runs real edge
daemons with the tiny SLM and kills or freezes one of them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from edgecloud import Client, rpc
from edgecloud.client import Summary
from edgecloud.coordinator.cluster import Cluster, ClusterLimits, Load, NodeInfo, Role
from edgecloud.errors import AlreadyExists, InvalidInput, LimitExceeded, NotFound, PermissionDenied
from edgecloud.processes import DaemonGroup
from edgecloud.rpc import SecurityConfig
from edgecloud.v1 import common_pb2
from edgecloud.v1 import coordinator_pb2 as pb
from edgecloud.v1 import coordinator_pb2_grpc as pb_grpc

CLIENT_TOKEN = "client-s3cret"
NODE_TOKEN = "node-s3cret"
CLIENT = SecurityConfig(auth_token=CLIENT_TOKEN)
NODE = SecurityConfig(auth_token=NODE_TOKEN)
ANONYMOUS = SecurityConfig()
AUTH_ARGS = ["--auth-token", CLIENT_TOKEN, "--node-token", NODE_TOKEN]


def call(address: str, security: SecurityConfig, method: str, request):
    """One unary call to the coordinator at ``address`` with ``security``'s token."""
    async def run():
        async with rpc.create_channel(address, security) as channel:
            return await getattr(pb_grpc.CoordinatorStub(channel), method)(request, timeout=10)
    return asyncio.run(run())


def refused(address: str, security: SecurityConfig, method: str, request) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        call(address, security, method, request)
    return info.value


def node(node_id: str = "n1", address: str = "127.0.0.1:4001", role=common_pb2.NODE_ROLE_EDGE, *,
         lease: str = "", **fields) -> pb.RegisterNodeRequest:
    return pb.RegisterNodeRequest(node=common_pb2.NodeInfo(node_id=node_id, role=role, address=address,
                                                           models=["tiny"], **fields), lease=lease)


def cluster_nodes(address: str, security: SecurityConfig = ANONYMOUS, include_stale: bool = True):
    reply = call(address, security, "GetClusterStatus", pb.GetClusterStatusRequest(include_stale=include_stale))
    return {n.info.node_id: n for n in reply.nodes}


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    """A coordinator with a client token and a node token."""
    with DaemonGroup(log_dir=tmp_path_factory.mktemp("authed")) as group:
        yield group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", *AUTH_ARGS]).address


def test_client_token_cannot_register_heartbeat_or_deregister(authed) -> None:
    for security, code in ((CLIENT, grpc.StatusCode.PERMISSION_DENIED), (ANONYMOUS, grpc.StatusCode.UNAUTHENTICATED),
                           (SecurityConfig(auth_token="forged"), grpc.StatusCode.UNAUTHENTICATED)):
        assert refused(authed, security, "RegisterNode", node("intruder")).code() == code
    lease = call(authed, NODE, "RegisterNode", node("victim")).lease
    assert lease
    for method, request in (("Heartbeat", pb.HeartbeatRequest(node_id="victim", lease=lease)),
                            ("DeregisterNode", pb.DeregisterNodeRequest(node_id="victim", lease=lease)),
                            ("RegisterNode", node("victim", "127.0.0.1:6666", lease=lease))):
        assert refused(authed, CLIENT, method, request).code() == grpc.StatusCode.PERMISSION_DENIED
        assert refused(authed, ANONYMOUS, method, request).code() == grpc.StatusCode.UNAUTHENTICATED
    # The node token is not a client credential either, and the node survived all of the above.
    assert refused(authed, NODE, "GetClusterStatus", pb.GetClusterStatusRequest()).code() == \
        grpc.StatusCode.UNAUTHENTICATED
    victim = cluster_nodes(authed, CLIENT)["victim"]
    assert victim.live and victim.info.address == "127.0.0.1:4001"
    call(authed, NODE, "DeregisterNode", pb.DeregisterNodeRequest(node_id="victim", lease=lease))
    assert "victim" not in cluster_nodes(authed, CLIENT)


def test_live_node_id_is_never_taken_over_without_its_lease(authed) -> None:
    lease = call(authed, NODE, "RegisterNode", node("edge-x", "127.0.0.1:4001")).lease
    for other in ("", "forged-lease"):
        err = refused(authed, NODE, "RegisterNode", node("edge-x", "10.0.0.66:4001", lease=other))
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS and "another lease" in err.details()
        # Nor with the same address (a takeover would get a fresh lease, then move the node).
        assert refused(authed, NODE, "RegisterNode", node("edge-x", "127.0.0.1:4001", lease=other)).code() == \
            grpc.StatusCode.ALREADY_EXISTS
        assert refused(authed, NODE, "Heartbeat", pb.HeartbeatRequest(node_id="edge-x", lease=other)).code() == \
            grpc.StatusCode.PERMISSION_DENIED
        assert refused(authed, NODE, "DeregisterNode",
                       pb.DeregisterNodeRequest(node_id="edge-x", lease=other)).code() == \
            grpc.StatusCode.PERMISSION_DENIED
    assert cluster_nodes(authed, CLIENT)["edge-x"].info.address == "127.0.0.1:4001"
    # The holder of the lease may move its node, and keeps its lease.
    moved = call(authed, NODE, "RegisterNode", node("edge-x", "127.0.0.1:4002", lease=lease))
    assert moved.lease == lease and cluster_nodes(authed, CLIENT)["edge-x"].info.address == "127.0.0.1:4002"
    call(authed, NODE, "Heartbeat", pb.HeartbeatRequest(node_id="edge-x", lease=lease))
    assert refused(authed, NODE, "Heartbeat", pb.HeartbeatRequest(node_id="nobody", lease=lease)).code() == \
        grpc.StatusCode.NOT_FOUND
    call(authed, NODE, "DeregisterNode", pb.DeregisterNodeRequest(node_id="edge-x", lease=lease))


@pytest.mark.parametrize("request_,what", [
    (node(address="no-port"), "host:port"),
    (node(address="127.0.0.1:0"), "port"),
    (node(address="127.0.0.1:65536"), "port"),
    (node(address="127.0.0.1:-5"), "port"),
    (node(address="bad host!:80"), "host name"),
    (node(address="[::zz]:80"), "IPv6"),
    (node(address="h" * 300 + ":80"), "longer than"),
    (node(node_id=""), "node_id"),
    (node(node_id="x" * 129), "longer than"),
    (node(node_id="x" * 2**20), "longer than"),
    (node(node_id="has space"), "node_id"),
    (node(labels={f"k{i}": "v" for i in range(9)}), "labels"),
    (node(labels={"site": "v" * 129}), "longer than"),
    (node(labels={"k" * 65: "v"}), "longer than"),
    (pb.RegisterNodeRequest(node=common_pb2.NodeInfo(node_id="n", role=common_pb2.NODE_ROLE_EDGE,
                                                     address="127.0.0.1:1", models=["m"] * 9)), "models"),
    (pb.RegisterNodeRequest(node=common_pb2.NodeInfo(node_id="n", role=common_pb2.NODE_ROLE_EDGE,
                                                     address="127.0.0.1:1", models=["m" * 129])), "longer than"),
    (node(role=common_pb2.NODE_ROLE_UNSPECIFIED), "role"),
])
def test_bad_registrations_are_invalid_argument_with_a_short_message(authed, request_, what) -> None:
    err = refused(authed, NODE, "RegisterNode", request_)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and what in err.details()
    assert len(err.details()) < 400  # never echoes the unbounded input


def test_oversized_message_is_resource_exhausted(authed) -> None:
    err = refused(authed, NODE, "RegisterNode", node(labels={"blob": "v" * (5 * 2**20)}))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "n1" not in cluster_nodes(authed, CLIENT)


def _coordinator_exit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=30,
                          env={k: v for k, v in os.environ.items() if not k.startswith("EDGECLOUD_")})


def test_auth_token_without_a_distinct_node_token_refuses_to_start() -> None:
    done = _coordinator_exit("--auth-token", CLIENT_TOKEN)
    assert done.returncode == 2 and "--node-token" in done.stderr
    done = _coordinator_exit("--auth-token", CLIENT_TOKEN, "--node-token", CLIENT_TOKEN)
    assert done.returncode == 2 and "must differ" in done.stderr


def test_node_with_auth_but_no_node_token_refuses_to_start() -> None:
    done = subprocess.run([sys.executable, "-m", "edgecloud.edge_node", "--model", "unused", "--coordinator",
                           "127.0.0.1:1", "--auth-token", CLIENT_TOKEN], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("EDGECLOUD_")})
    assert done.returncode == 2 and "--node-token" in done.stderr


def test_max_nodes_and_expiry_keep_the_table_bounded(tmp_path) -> None:
    with DaemonGroup(log_dir=tmp_path) as group:
        address = group.start("coordinator", [
            "-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0", "--max-nodes", "3",
            "--node-ttl-s", "1", "--node-expiry-s", "2", "--heartbeat-interval-s", "0.5"]).address
        big_labels = {f"label{i}": "v" * 128 for i in range(8)}  # the most a node may carry
        for i in range(3):
            call(address, ANONYMOUS, "RegisterNode", node(f"n{i}", f"127.0.0.1:{4000 + i}", labels=big_labels))
        err = refused(address, ANONYMOUS, "RegisterNode", node("n3", "127.0.0.1:4003"))
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "full" in err.details()
        # Silent nodes turn stale after the TTL, then are forgotten after the expiry ...
        deadline = time.monotonic() + 20
        while cluster_nodes(address):
            assert time.monotonic() < deadline, "silent nodes were never forgotten"
            time.sleep(0.2)
        # ... which makes room again.
        call(address, ANONYMOUS, "RegisterNode", node("n3", "127.0.0.1:4003"))
        assert set(cluster_nodes(address)) == {"n3"}


def test_cluster_domain_rules() -> None:
    """The same rules on the domain class, with a fake clock (stale takeover, suspects, expiry)."""
    now = [0.0]
    cluster = Cluster(ttl_s=10, expiry_s=30, limits=ClusterLimits(max_nodes=2), clock=lambda: now[0])
    a = NodeInfo("a", Role.EDGE, "127.0.0.1:1")
    lease = cluster.register(a)
    with pytest.raises(AlreadyExists):
        cluster.register(NodeInfo("a", Role.EDGE, "127.0.0.1:9"))
    with pytest.raises(PermissionDenied):
        cluster.deregister("a", "wrong")
    cluster.register(NodeInfo("b", Role.EDGE, "127.0.0.1:2"))
    with pytest.raises(LimitExceeded):
        cluster.register(NodeInfo("c", Role.EDGE, "127.0.0.1:3"))
    with pytest.raises(InvalidInput):
        cluster.register(NodeInfo("a", Role.EDGE, "127.0.0.1:99999"))
    assert cluster.place(Role.EDGE).node_id == "a"
    cluster.mark_suspect("a")
    assert cluster.place(Role.EDGE).node_id == "b"
    assert [v.suspect for v in cluster.nodes()] == [True, False]
    cluster.heartbeat("a", lease, Load())  # a heartbeat clears the suspicion
    assert cluster.place(Role.EDGE).node_id == "a"
    now[0] = 11  # both stale: not placed, listed only with include_stale; the id may be taken
    assert cluster.live() == [] and len(cluster.nodes(include_stale=True)) == 2
    other = cluster.register(NodeInfo("a", Role.EDGE, "127.0.0.1:9"))
    assert other != lease
    with pytest.raises(PermissionDenied):
        cluster.heartbeat("a", lease, Load())
    now[0] = 42  # b expired and is gone entirely; a (re-registered at 11) too
    assert cluster.nodes(include_stale=True) == []
    with pytest.raises(NotFound):
        cluster.heartbeat("b", "x", Load())


def test_a_node_restarted_at_its_address_takes_its_entry_over_after_a_missed_heartbeat() -> None:
    now = [0.0]
    cluster = Cluster(ttl_s=15, restart_after_s=7.5, clock=lambda: now[0])
    lease = cluster.register(NodeInfo("c", Role.CLOUD, "127.0.0.1:7"))
    now[0] = 7.0  # within a heartbeat and a half: the holder may still be alive
    with pytest.raises(AlreadyExists, match=r"7\.5 s when registering at its address"):
        cluster.register(NodeInfo("c", Role.CLOUD, "127.0.0.1:7"))
    now[0] = 7.5
    with pytest.raises(AlreadyExists):  # another address still waits for the TTL
        cluster.register(NodeInfo("c", Role.CLOUD, "127.0.0.1:8"))
    restarted = cluster.register(NodeInfo("c", Role.CLOUD, "127.0.0.1:7"))
    assert restarted != lease and [n.address for n in cluster.live()] == ["127.0.0.1:7"]
    with pytest.raises(PermissionDenied):
        cluster.heartbeat("c", lease, Load())
    now[0] = 20.0  # silent again: another model at the address is not the same node restarted
    with pytest.raises(AlreadyExists):
        cluster.register(NodeInfo("c", Role.CLOUD, "127.0.0.1:7", models=("other",)))


def test_the_public_instance_label_does_not_move_a_live_node() -> None:
    """The instance label is in status replies: copying it must not take a live entry elsewhere."""
    cluster = Cluster(ttl_s=15)
    lease = cluster.register(NodeInfo("n", Role.EDGE, "127.0.0.1:5"), instance="inst-1")
    with pytest.raises(AlreadyExists):
        cluster.register(NodeInfo("n", Role.EDGE, "6.6.6.6:7000"), instance="inst-1")
    assert cluster.register(NodeInfo("n", Role.EDGE, "127.0.0.1:5"), instance="inst-1") == lease  # its own process
    assert [n.address for n in cluster.live()] == ["127.0.0.1:5"]


# Failover through real edge daemons ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fleet(tmp_path_factory, make_tiny_pair):
    """Coordinator (auth on), three edges and, registered after them, a cloud.

    Nodes heartbeat every 30 s, so a suspect mark stays until the test is over, and the edges
    learn of the cloud only by asking the coordinator when a request names it.
    """
    root = tmp_path_factory.mktemp("fleet")
    folders = make_tiny_pair(root, (21, 22))
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                                  "--heartbeat-interval-s", "30", "--node-ttl-s", "120",
                                                  *AUTH_ARGS])
        edges = {}
        for name in ("edge-a", "edge-b", "edge-c"):
            edges[name] = group.start(name, ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]),
                                             "--dtype", "fp32", "--threads", "1", "--node-id", name,
                                             "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                                             "--max-tokens-limit", "64", *AUTH_ARGS])
        client = Client(coordinator.address, security=CLIENT, timeout_s=120)
        client.wait_for_nodes(3)
        cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]), "--dtype", "fp32",
                                      "--threads", "1", "--listen", "127.0.0.1:0", "--coordinator",
                                      coordinator.address, *AUTH_ARGS])
        client.wait_for_nodes(4)
        try:
            yield {"client": client, "coordinator": coordinator, "edges": edges, "cloud": cloud}
        finally:
            for edge in edges.values():  # a frozen edge cannot stop gracefully
                if edge.process.poll() is None:
                    os.killpg(edge.process.pid, signal.SIGCONT)
            client.close()


def _generate(client: Client, policy: str = "slm-only") -> Summary:
    events = list(client.generate("def fib(n):", max_tokens=8, policy=policy))
    assert isinstance(events[-1], Summary)
    return events[-1]


def _settled(fleet) -> None:
    """Wait until the coordinator has closed its forwarded streams (the client stops reading at the summary)."""
    deadline = time.monotonic() + 10
    while call(fleet["coordinator"].address, CLIENT, "GetClusterStatus", pb.GetClusterStatusRequest()).active_requests:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def _suspects(fleet) -> set[str]:
    """Suspect nodes as the SDK reports them, after checking that the coordinator's reply agrees."""
    raw = {n.info.node_id for n in cluster_nodes(fleet["coordinator"].address, CLIENT).values() if n.suspect}
    seen = {n.node_id for n in fleet["client"].status(include_stale=True) if n.suspect}
    assert seen == raw
    return seen


def test_edge_accepts_a_cloud_registered_after_its_last_heartbeat(fleet) -> None:
    summary = _generate(fleet["client"], policy="llm-only")
    assert summary.cloud_round_trips > 0 and summary.cloud_node_id == "cloud-0"


def test_sigkilled_edge_fails_over_at_once_and_is_suspect(fleet) -> None:
    client = fleet["client"]
    first = _generate(client).edge_node_id
    _settled(fleet)  # so that the next request, not a late end of this one, finds the edge dead
    victim = fleet["edges"][first]
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    started = time.monotonic()
    second = _generate(client)
    assert second.edge_node_id != first and time.monotonic() - started < 5
    assert first in _suspects(fleet)
    assert f"failing over to edge node {second.edge_node_id}" in fleet["coordinator"].log_path.read_text()
    # Later requests go straight to a live edge.
    assert _generate(client).edge_node_id == second.edge_node_id


def test_hung_edge_is_noticed_by_keepalive_and_failed_over(fleet) -> None:
    client = fleet["client"]
    first = _generate(client).edge_node_id
    _settled(fleet)
    frozen = fleet["edges"][first]
    os.killpg(frozen.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        second = _generate(client)
        took = time.monotonic() - started
        assert second.edge_node_id != first
        assert took <= 12, f"a hung edge took {took:.1f} s to be noticed"
        assert first in _suspects(fleet)
    finally:
        os.killpg(frozen.process.pid, signal.SIGCONT)


def test_edge_whose_cloud_died_finishes_degraded_and_is_not_suspect(fleet) -> None:
    """A dead cloud costs no request: the edge finishes it SLM-only (degraded) and stays placeable."""
    client = fleet["client"]
    edge = _generate(client).edge_node_id
    _settled(fleet)
    cloud = fleet["cloud"]
    cloud.kill()
    summary = _generate(client, policy="llm-only")
    assert summary.degraded_tokens == summary.total_tokens > 0 and summary.cloud_failures >= 1
    _settled(fleet)
    assert edge not in _suspects(fleet)
    assert _generate(client).edge_node_id == edge
