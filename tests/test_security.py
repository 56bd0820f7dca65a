"""Security plumbing against real grpc.aio servers on port 0: mutual TLS with ``certs dev``
certificates, unknown methods under token auth, malformed request bytes, escaped exceptions."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgecloud import rpc
from edgecloud.certs import DevCertificates, parse_hosts, usage, write_dev_certificates
from edgecloud.errors import NotFound
from edgecloud.rpc import SecurityConfig
from edgecloud.v1 import cloud_node_pb2 as cloud_pb
from edgecloud.v1 import cloud_node_pb2_grpc as cloud_grpc
from edgecloud.v1 import common_pb2, edge_node_pb2_grpc, generation_pb2

TOKEN = "client-token"
NODE_TOKEN = "node-token"
TIMEOUT_S = 10.0
STATUS = "/edgecloud.v1.CloudNode/GetStatus"
GENERATE = "/edgecloud.v1.EdgeNode/Generate"


class Cloud(cloud_grpc.CloudNodeServicer):
    """GetStatus answers; CloseSession lets a NotFound escape; Extend lets a plain bug escape."""

    async def GetStatus(self, request, context):
        return cloud_pb.CloudStatus(node_id="test-cloud")

    async def CloseSession(self, request, context):
        raise NotFound(f"session {request.session_id[:8]!r} not found")

    async def Extend(self, request, context):
        raise ZeroDivisionError("a bug")


class Edge(edge_node_pb2_grpc.EdgeNodeServicer):
    """Generate streams max_tokens events, then waits; records that a cancelled stream was closed."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def Generate(self, request, context):
        try:
            for i in range(request.max_tokens):
                yield generation_pb2.GenerateEvent(token_id=i, source=common_pb2.SOURCE_EDGE, index=i)
            if request.prompt == "hang":
                await asyncio.Event().wait()
        finally:
            self.closed.set()


@asynccontextmanager
async def serving(security: SecurityConfig, edge: Edge | None = None) -> AsyncIterator[str]:
    server = rpc.create_server(security)
    cloud_grpc.add_CloudNodeServicer_to_server(Cloud(), server)
    edge_node_pb2_grpc.add_EdgeNodeServicer_to_server(edge or Edge(), server)
    port = await rpc.start_server(server, "127.0.0.1:0", security)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


async def status(address: str, client: SecurityConfig) -> cloud_pb.CloudStatus:
    async with rpc.create_channel(address, client) as channel:
        return await cloud_grpc.CloudNodeStub(channel).GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S)


async def raw_call(address: str, method: str, payload: bytes, *, token: str | None = None,
                   stream: bool = False) -> grpc.aio.AioRpcError | None:
    """Send ``payload`` as the request bytes of ``method``; the error it got (None: OK)."""
    async with grpc.aio.insecure_channel(address) as channel:
        metadata = rpc.auth_metadata(token) if token else None
        try:
            if stream:
                call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
                async for _ in call(payload, timeout=TIMEOUT_S, metadata=metadata):
                    pass
            else:
                await channel.unary_unary(method, request_serializer=None, response_deserializer=None)(
                    payload, timeout=TIMEOUT_S, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            return exc
    return None


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> DevCertificates:
    return write_dev_certificates(tmp_path_factory.mktemp("certs"), ["localhost", "127.0.0.1"])


# certs dev ----------------------------------------------------------------------------------------------

def test_dev_certificates_files_modes_and_contents(certs: DevCertificates) -> None:
    for key in (certs.ca_key, certs.node_key, certs.client_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    node = x509.load_pem_x509_certificate(certs.node_cert.read_bytes())
    client = x509.load_pem_x509_certificate(certs.client_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for cert in (ca, node, client):
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert datetime.timedelta(days=30) < life <= datetime.timedelta(days=366)
    node.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    node_eku = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(node_eku)
    client_eku = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(client_eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_dev_certificates_hosts_are_checked() -> None:
    assert parse_hosts("localhost, 10.0.0.7,::1,edge-1.lan,localhost") == ("localhost", "10.0.0.7", "::1",
                                                                            "edge-1.lan")
    for bad in ("", "bad host", "a_b.lan", "-x.lan", "x" * 300):
        with pytest.raises(ValueError):
            parse_hosts(bad)


def test_certs_dev_command_writes_files_and_prints_the_flags(tmp_path: Path) -> None:
    out = tmp_path / "c"
    done = subprocess.run([sys.executable, "-m", "edgecloud", "certs", "dev", "--out", str(out),
                           "--hosts", "localhost,127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ca-key.pem", "ca.pem", "client-key.pem", "client.pem",
                                                     "node-key.pem", "node.pem"]
    for flag in ("--tls-cert", "--tls-key", "--tls-ca", "--tls-client-ca", "--tls-client-cert",
                 "--tls-client-key", "--auth-token", "--node-token"):
        assert flag in done.stdout
    assert str(out / "node.pem") in done.stdout
    bad = subprocess.run([sys.executable, "-m", "edgecloud", "certs", "dev", "--out", str(out), "--hosts", "a b"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "neither an IP address nor a host name" in bad.stderr


def test_usage_names_every_file(certs: DevCertificates) -> None:
    text = usage(certs)
    for path in (certs.ca_cert, certs.node_cert, certs.node_key, certs.client_cert, certs.client_key):
        assert str(path) in text


# mutual TLS ---------------------------------------------------------------------------------------------

def _server(certs: DevCertificates, *, mutual: bool) -> SecurityConfig:
    return SecurityConfig(tls_cert_path=str(certs.node_cert), tls_key_path=str(certs.node_key),
                          tls_client_ca_path=str(certs.ca_cert) if mutual else None)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(certs: DevCertificates, tmp_path: Path) -> None:
    other = write_dev_certificates(tmp_path / "other", ["127.0.0.1"])
    ca = str(certs.ca_cert)

    async def scenario() -> None:
        async with serving(_server(certs, mutual=True)) as address:
            with_cert = SecurityConfig(tls_ca_path=ca, tls_client_cert_path=str(certs.client_cert),
                                       tls_client_key_path=str(certs.client_key))
            assert (await status(address, with_cert)).node_id == "test-cloud"
            node_cert = SecurityConfig(tls_ca_path=ca, tls_client_cert_path=str(certs.node_cert),
                                       tls_client_key_path=str(certs.node_key))
            assert (await status(address, node_cert)).node_id == "test-cloud"
            foreign = SecurityConfig(tls_ca_path=ca, tls_client_cert_path=str(other.client_cert),
                                     tls_client_key_path=str(other.client_key))
            for client in (SecurityConfig(tls_ca_path=ca), foreign, SecurityConfig()):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await status(address, client)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with serving(_server(certs, mutual=False)) as address:  # one-way TLS takes any client
            assert (await status(address, SecurityConfig(tls_ca_path=ca))).node_id == "test-cloud"
            with pytest.raises(grpc.aio.AioRpcError) as info:  # the server is checked against the CA
                await status(address, SecurityConfig(tls_ca_path=str(other.ca_cert)))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_mutual_tls_settings_are_validated(certs: DevCertificates) -> None:
    with pytest.raises(ValueError, match="given together"):
        SecurityConfig(tls_client_cert_path=str(certs.client_cert))
    with pytest.raises(ValueError, match="needs a TLS listener"):
        SecurityConfig(tls_client_ca_path=str(certs.ca_cert))
    assert SecurityConfig(tls_client_cert_path="c", tls_client_key_path="k").client_tls
    with pytest.raises(ValueError, match="cannot read TLS client CA bundle"):
        rpc.server_credentials(certs.node_cert, certs.node_key, "/nonexistent/ca.pem")
    with pytest.raises(ValueError, match="cannot read TLS client key"):
        rpc.channel_credentials(certs.ca_cert, certs.client_cert, "/nonexistent/key.pem")


def test_daemon_flags_reach_the_security_config(certs: DevCertificates) -> None:
    import argparse

    from edgecloud.daemon_args import add_common_args, security_from_args

    parser = argparse.ArgumentParser()
    add_common_args(parser)
    args = parser.parse_args(["--tls-cert", str(certs.node_cert), "--tls-key", str(certs.node_key),
                              "--tls-ca", str(certs.ca_cert), "--tls-client-ca", str(certs.ca_cert),
                              "--tls-client-cert", str(certs.node_cert), "--tls-client-key", str(certs.node_key)])
    security = security_from_args(args)
    assert security.mutual_tls and security.tls_client_cert_path == str(certs.node_cert)
    assert security.tls_client_key_path == str(certs.node_key)
    assert security.as_node().tls_client_cert_path == str(certs.node_cert)  # the registry channel presents it too


# unknown methods ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_unknown_method_is_unauthenticated_without_a_token(stream: bool) -> None:
    security = SecurityConfig(auth_token=TOKEN, node_token=NODE_TOKEN)

    async def scenario() -> None:
        async with serving(security) as address:
            for method in ("/edgecloud.v1.CloudNode/NoSuchMethod", "/no.Such/Service", "/"):
                for token in (None, "wrong"):
                    exc = await raw_call(address, method, b"", token=token, stream=stream)
                    assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED, (method, token)
                    assert "bearer token" in exc.details()
                for token in (TOKEN, NODE_TOKEN):
                    exc = await raw_call(address, method, b"", token=token, stream=stream)
                    assert exc is not None and exc.code() == grpc.StatusCode.UNIMPLEMENTED, (method, token)

    run(scenario)


def test_unknown_method_without_auth_stays_unimplemented() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig()) as address:
            exc = await raw_call(address, "/edgecloud.v1.CloudNode/NoSuchMethod", b"")
            assert exc is not None and exc.code() == grpc.StatusCode.UNIMPLEMENTED

    run(scenario)


# malformed request bytes, escaped exceptions ------------------------------------------------------------

# wire-level garbage (any message): a bad tag, a short string, a cut varint, end-group, an 11-byte varint
MALFORMED = [b"\xff", b"\x0a\x05ab", b"\x08", b"\x0c", b"\x0f\x00", b"\x12" + b"\xff" * 11]


@pytest.mark.parametrize("token", [None, TOKEN])
def test_malformed_request_bytes_are_invalid_argument_and_the_server_serves_on(token: str | None) -> None:
    security = SecurityConfig(auth_token=token)

    async def scenario() -> None:
        async with serving(security) as address:
            for payload in MALFORMED:
                for method, stream in ((STATUS, False), (GENERATE, True)):
                    exc = await raw_call(address, method, payload, token=token, stream=stream)
                    assert exc is not None and exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, payload)
                    assert "malformed request" in exc.details() and len(exc.details()) < 200
            exc = await raw_call(address, GENERATE, b"\x0a\x02\xc3\x28", token=token, stream=True)
            assert exc is not None and exc.code() == grpc.StatusCode.INVALID_ARGUMENT  # prompt: bad UTF-8
            assert await raw_call(address, STATUS, b"", token=token) is None  # an empty message is valid
            assert (await status(address, SecurityConfig(auth_token=token))).node_id == "test-cloud"
            if token:  # the token is checked before the bytes are looked at
                exc = await raw_call(address, STATUS, b"\xff")
                assert exc is not None and exc.code() == grpc.StatusCode.UNAUTHENTICATED

    run(scenario)


def test_escaped_exceptions_get_their_mapped_status_not_unknown() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig()) as address, rpc.create_channel(address) as channel:
            stub = cloud_grpc.CloudNodeStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CloseSession(cloud_pb.CloseSessionRequest(session_id="abc"), timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND and "abc" in info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Extend(cloud_pb.ExtendRequest(), timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert info.value.details() == "internal error: ZeroDivisionError"  # no exception text
            assert (await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S)).node_id

    run(scenario)


def test_streams_pass_through_the_guard_and_cancellation_reaches_the_handler() -> None:
    async def scenario() -> None:
        edge = Edge()
        async with serving(SecurityConfig(), edge) as address, rpc.create_channel(address) as channel:
            stub = edge_node_pb2_grpc.EdgeNodeStub(channel)
            events = [e async for e in stub.Generate(generation_pb2.GenerateRequest(max_tokens=5), timeout=TIMEOUT_S)]
            assert [e.token_id for e in events] == [0, 1, 2, 3, 4]
            edge.closed.clear()
            call = stub.Generate(generation_pb2.GenerateRequest(max_tokens=1, prompt="hang"), timeout=TIMEOUT_S)
            assert (await call.read()).token_id == 0
            call.cancel()
            await asyncio.wait_for(edge.closed.wait(), 5)

    run(scenario)
