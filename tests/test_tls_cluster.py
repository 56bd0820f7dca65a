"""Coordinator, cloud and edge as real processes with mutual TLS and both tokens, certificates from
``edgecloud certs dev``: every listener refuses a call without credentials, plaintext fails against
TLS, the client token cannot register a node, and the SDK connects with the CA file."""

from __future__ import annotations

import grpc
import pytest

from edgecloud import Client, rpc
from edgecloud.certs import write_dev_certificates
from edgecloud.client import EdgecloudError
from edgecloud.processes import DaemonGroup
from edgecloud.rpc import SecurityConfig
from edgecloud.v1 import common_pb2, coordinator_pb2

TOKEN = "fuzzy-client-token"
NODE_TOKEN = "fuzzy-node-token"
STATUS = {"coordinator": ("/edgecloud.v1.Coordinator/GetClusterStatus", coordinator_pb2.GetClusterStatusRequest),
          "edge": ("/edgecloud.v1.EdgeNode/GetStatus", None), "cloud": ("/edgecloud.v1.CloudNode/GetStatus", None)}


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory, make_tiny_pair, start_tiny_nodes):
    root = tmp_path_factory.mktemp("tls")
    certs = write_dev_certificates(root / "certs", ["localhost", "127.0.0.1"])
    folders = make_tiny_pair(root, (21, 22))
    flags = ["--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key), "--tls-ca", str(certs.ca_cert),
             "--tls-client-ca", str(certs.ca_cert), "--tls-client-cert", str(certs.node_cert),
             "--tls-client-key", str(certs.node_key), "--auth-token", TOKEN, "--node-token", NODE_TOKEN]
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator, cloud, edge = start_tiny_nodes(group, folders, node_args=flags, max_tokens=16)
        full = SecurityConfig(tls_ca_path=str(certs.ca_cert), auth_token=TOKEN,
                              tls_client_cert_path=str(certs.client_cert), tls_client_key_path=str(certs.client_key))
        client = Client(coordinator.address, security=full, timeout_s=120)
        client.wait_for_nodes(2)
        yield {"certs": certs, "full": full, "client": client,
               "addresses": {"coordinator": coordinator.address, "edge": edge.address, "cloud": cloud.address}}
        client.close()


def _raw(target: str, security: SecurityConfig | None, method: str, *, token: str | None = None,
         payload: bytes = b"") -> grpc.StatusCode:
    """The status of one call of ``method`` with raw bytes (security None: a plaintext channel)."""
    if security is None:
        channel = grpc.insecure_channel(target)
    else:
        channel = grpc.secure_channel(target, rpc.security_channel_credentials(security))
    try:
        channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
            payload, timeout=10, metadata=rpc.auth_metadata(token) if token else None)
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()
    return grpc.StatusCode.OK


def test_every_listener_refuses_calls_without_credentials(secure_cluster) -> None:
    full: SecurityConfig = secure_cluster["full"]
    no_client_cert = SecurityConfig(tls_ca_path=full.tls_ca_path)
    for name, address in secure_cluster["addresses"].items():
        method = STATUS[name][0]
        assert _raw(address, full, method, token=TOKEN) == grpc.StatusCode.OK, name
        assert _raw(address, full, method) == grpc.StatusCode.UNAUTHENTICATED, name
        assert _raw(address, full, method, token="wrong") == grpc.StatusCode.UNAUTHENTICATED, name
        unknown = method.rsplit("/", 1)[0] + "/NoSuchMethod"
        assert _raw(address, full, unknown) == grpc.StatusCode.UNAUTHENTICATED, name
        assert _raw(address, full, unknown, token=TOKEN) == grpc.StatusCode.UNIMPLEMENTED, name
        assert _raw(address, full, method, token=TOKEN, payload=b"\xff") == grpc.StatusCode.INVALID_ARGUMENT
        # TLS without a client certificate, and plaintext, do not get through the handshake
        assert _raw(address, no_client_cert, method, token=TOKEN) == grpc.StatusCode.UNAVAILABLE, name
        assert _raw(address, None, method, token=TOKEN) == grpc.StatusCode.UNAVAILABLE, name


def test_a_client_token_cannot_register_a_node(secure_cluster) -> None:
    node = common_pb2.NodeInfo(node_id="intruder", role=common_pb2.NODE_ROLE_CLOUD, address="127.0.0.1:1")
    request = coordinator_pb2.RegisterNodeRequest(node=node).SerializeToString()
    address = secure_cluster["addresses"]["coordinator"]
    method = "/edgecloud.v1.Coordinator/RegisterNode"
    full = secure_cluster["full"]
    assert _raw(address, full, method, token=TOKEN, payload=request) == grpc.StatusCode.PERMISSION_DENIED
    assert _raw(address, full, method, payload=request) == grpc.StatusCode.UNAUTHENTICATED
    assert "intruder" not in [n.node_id for n in secure_cluster["client"].status()]


def test_the_sdk_generates_over_mutual_tls(secure_cluster) -> None:
    client: Client = secure_cluster["client"]
    events = list(client.generate("def fib(n):", max_tokens=6, policy="llm-only"))
    summary = events[-1]
    assert summary.edge_tokens + summary.cloud_tokens >= 1
    assert summary.cloud_round_trips >= 1  # edge -> cloud over mutual TLS too
    certs = secure_cluster["certs"]
    without_token = Client(secure_cluster["addresses"]["coordinator"], timeout_s=10,
                           security=SecurityConfig(tls_ca_path=str(certs.ca_cert),
                                                   tls_client_cert_path=str(certs.client_cert),
                                                   tls_client_key_path=str(certs.client_key)))
    try:
        with pytest.raises(EdgecloudError) as info:
            without_token.status()
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        without_token.close()
