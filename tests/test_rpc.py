"""gRPC plumbing against a real grpc.aio server on port 0: token auth, TLS, size limits."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import grpc.aio
import pytest
import torch

from edgecloud import rpc
from edgecloud.rpc import SecurityConfig
from edgecloud.v1 import cloud_node_pb2 as cloud_pb
from edgecloud.v1 import cloud_node_pb2_grpc as cloud_grpc
from edgecloud.v1 import common_pb2, edge_node_pb2_grpc, generation_pb2
from edgecloud.wire import WireError, tensor_from_proto, tensor_to_proto

TOKEN = "s3cret-token"
TIMEOUT_S = 10.0


class EchoCloud(cloud_grpc.CloudNodeServicer):
    """A tiny CloudNode: GetStatus answers, RunTail doubles the tensor it gets."""

    async def GetStatus(self, request, context):
        return cloud_pb.CloudStatus(node_id="test-cloud", sessions=0)

    async def RunTail(self, request, context):
        try:
            hidden = tensor_from_proto(request.hidden_states, max_bytes=rpc.DEFAULT_MAX_MESSAGE_BYTES,
                                       expected_shape=(None, None, None))
        except WireError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"hidden_states: {exc}")
        return cloud_pb.RunTailResponse(logits=tensor_to_proto(hidden * 2))

    async def CloseSession(self, request, context):
        await context.abort(grpc.StatusCode.NOT_FOUND, f"session {request.session_id!r} not found")


class CountingEdge(edge_node_pb2_grpc.EdgeNodeServicer):
    """A tiny EdgeNode whose Generate streams max_tokens events (a server-streaming method)."""

    async def Generate(self, request, context):
        for i in range(request.max_tokens):
            yield generation_pb2.GenerateEvent(text=str(i), token_id=i, source=common_pb2.SOURCE_EDGE, index=i)


@asynccontextmanager
async def serving(security: SecurityConfig, *, max_message_bytes: int = rpc.DEFAULT_MAX_MESSAGE_BYTES
                  ) -> AsyncIterator[int]:
    server = rpc.create_server(security, max_message_bytes=max_message_bytes)
    cloud_grpc.add_CloudNodeServicer_to_server(EchoCloud(), server)
    edge_node_pb2_grpc.add_EdgeNodeServicer_to_server(CountingEdge(), server)
    port = await rpc.start_server(server, "127.0.0.1:0", security)
    try:
        yield port
    finally:
        await server.stop(None)


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _status(port: int, client: SecurityConfig, **call_kwargs) -> cloud_pb.CloudStatus:
    async with rpc.create_channel(f"127.0.0.1:{port}", client) as channel:
        stub = cloud_grpc.CloudNodeStub(channel)
        return await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S, **call_kwargs)


def test_port_zero_and_plaintext_call() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig()) as port:
            assert port > 0
            assert (await _status(port, SecurityConfig())).node_id == "test-cloud"

    run(scenario)


def test_token_auth() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig(auth_token=TOKEN)) as port:
            for client in (SecurityConfig(), SecurityConfig(auth_token="wrong")):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _status(port, client)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "bearer token" in info.value.details()
            assert (await _status(port, SecurityConfig(auth_token=TOKEN))).node_id == "test-cloud"
            # Metadata attached by hand works as well as the channel interceptor.
            status = await _status(port, SecurityConfig(), metadata=rpc.auth_metadata(TOKEN))
            assert status.node_id == "test-cloud"

    run(scenario)


def test_token_auth_on_a_stream() -> None:
    async def generate(port: int, client: SecurityConfig) -> list[str]:
        async with rpc.create_channel(f"127.0.0.1:{port}", client) as channel:
            stub = edge_node_pb2_grpc.EdgeNodeStub(channel)
            call = stub.Generate(generation_pb2.GenerateRequest(prompt="hi", max_tokens=3), timeout=TIMEOUT_S)
            return [event.text async for event in call]

    async def scenario() -> None:
        async with serving(SecurityConfig(auth_token=TOKEN)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await generate(port, SecurityConfig())
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert await generate(port, SecurityConfig(auth_token=TOKEN)) == ["0", "1", "2"]

    run(scenario)


def test_unauthenticated_before_the_handler_runs() -> None:
    """A streaming-free call with a bad body is refused for the token, not parsed."""
    async def scenario() -> None:
        async with serving(SecurityConfig(auth_token=TOKEN)) as port, \
                grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/edgecloud.v1.CloudNode/RunTail")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call(b"\xff\xff not a protobuf", timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

    run(scenario)


def test_size_limit_gives_resource_exhausted() -> None:
    limit = 64 * 1024

    async def scenario() -> None:
        async with serving(SecurityConfig(), max_message_bytes=limit) as port, \
                rpc.create_channel(f"127.0.0.1:{port}") as channel:
            stub = cloud_grpc.CloudNodeStub(channel)
            small = torch.ones(1, 2, 8)
            reply = await stub.RunTail(cloud_pb.RunTailRequest(hidden_states=tensor_to_proto(small)),
                                       timeout=TIMEOUT_S)
            assert torch.equal(tensor_from_proto(reply.logits, max_bytes=limit), small * 2)
            big = torch.ones(1, 4, limit // 8)  # 2x the limit
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RunTail(cloud_pb.RunTailRequest(hidden_states=tensor_to_proto(big)), timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The server keeps serving.
            await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S)

    run(scenario)


def test_bad_tensor_and_gone_session_status_codes() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig()) as port, rpc.create_channel(f"127.0.0.1:{port}") as channel:
            stub = cloud_grpc.CloudNodeStub(channel)
            bad = tensor_to_proto(torch.ones(2, 3))  # rank 2, the tail wants rank 3
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.RunTail(cloud_pb.RunTailRequest(hidden_states=bad), timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected rank 3" in info.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.CloseSession(cloud_pb.CloseSessionRequest(session_id="gone"), timeout=TIMEOUT_S)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND

    run(scenario)


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway EC certificate for localhost / 127.0.0.1 that is its own CA.

    Made with the ``cryptography`` package when installed, else with the ``openssl`` command.
    """
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key_path), "-out", str(cert_path), "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=30)
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_with_token(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server = SecurityConfig(tls_cert_path=str(cert), tls_key_path=str(key), auth_token=TOKEN)

    async def scenario() -> None:
        async with serving(server) as port:
            client = SecurityConfig(tls_ca_path=str(cert), auth_token=TOKEN)
            assert (await _status(port, client)).node_id == "test-cloud"
            by_name = SecurityConfig(tls_ca_path=str(cert), auth_token=TOKEN, tls_server_name="localhost")
            assert (await _status(port, by_name)).node_id == "test-cloud"
            with pytest.raises(grpc.aio.AioRpcError) as info:  # TLS without the token
                await _status(port, SecurityConfig(tls_ca_path=str(cert)))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as info:  # plaintext to a TLS port
                await _status(port, SecurityConfig(auth_token=TOKEN), wait_for_ready=False)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    run(scenario)


def test_security_config_validation(tmp_path: Path) -> None:
    assert not SecurityConfig().server_tls and not SecurityConfig().client_tls
    with pytest.raises(ValueError, match="together"):
        SecurityConfig(tls_cert_path="cert.pem")
    with pytest.raises(ValueError, match="empty"):
        SecurityConfig(auth_token=" ")
    with pytest.raises(ValueError, match=r"cannot read TLS (key|certificate)"):
        rpc.server_credentials(tmp_path / "missing.pem", tmp_path / "missing.key")


def test_options_carry_the_limit() -> None:
    for options in (rpc.server_options(1234), rpc.channel_options(1234)):
        opts = dict(options)
        assert opts["grpc.max_send_message_length"] == opts["grpc.max_receive_message_length"] == 1234
        assert opts["grpc.keepalive_time_ms"] > 0


def test_options_notice_a_hung_peer_and_reconnect_quickly() -> None:
    channel, server = dict(rpc.channel_options()), dict(rpc.server_options())
    assert channel["grpc.keepalive_time_ms"] + channel["grpc.keepalive_timeout_ms"] <= 10_000
    assert channel["grpc.http2.ping_timeout_ms"] <= 5_000 and channel["grpc.keepalive_permit_without_calls"] == 1
    assert channel["grpc.max_reconnect_backoff_ms"] <= 2_000
    # The server accepts the clients' keepalive pings (else GOAWAY too_many_pings).
    assert server["grpc.http2.min_recv_ping_interval_without_data_ms"] <= channel["grpc.keepalive_time_ms"]
    assert server["grpc.keepalive_permit_without_calls"] == 1


def test_cached_channel_reaches_a_restarted_server_quickly() -> None:
    """After a 10 s outage, grpc's default backoff (1 s growing 1.6x) waits up to ~6 s more; ours ~1.5 s."""
    outage_s = 10.0

    async def start(port: int) -> tuple[grpc.aio.Server, int]:
        server = rpc.create_server(SecurityConfig())
        cloud_grpc.add_CloudNodeServicer_to_server(EchoCloud(), server)
        return server, await rpc.start_server(server, f"127.0.0.1:{port}")

    async def scenario() -> None:
        server, port = await start(0)
        async with rpc.create_channel(f"127.0.0.1:{port}") as channel:
            stub = cloud_grpc.CloudNodeStub(channel)
            await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S)
            await server.stop(None)
            down_until = asyncio.get_running_loop().time() + outage_s
            while asyncio.get_running_loop().time() < down_until:  # requests keep failing during the outage
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=1.0)
                await asyncio.sleep(0.5)
            server, _ = await start(port)
            try:
                back = asyncio.get_running_loop().time()
                await stub.GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S, wait_for_ready=True)
                took = asyncio.get_running_loop().time() - back
                assert took < 2.5, f"the cached channel needed {took:.1f} s to reach the restarted server"
            finally:
                await server.stop(None)

    run(scenario)


def test_channel_pool_reuses_channels_and_closes_the_least_recently_used() -> None:
    async def scenario() -> None:
        async with serving(SecurityConfig()) as port_a, serving(SecurityConfig()) as port_b:
            pool = rpc.ChannelPool(max_channels=1)
            first = pool.get(f"127.0.0.1:{port_a}")
            assert pool.get(f"127.0.0.1:{port_a}") is first
            status = await cloud_grpc.CloudNodeStub(first).GetStatus(cloud_pb.GetCloudStatusRequest(),
                                                                       timeout=TIMEOUT_S)
            assert status.node_id == "test-cloud"
            second = pool.get(f"127.0.0.1:{port_b}")  # beyond max_channels: the first is closed
            assert pool.peek(f"127.0.0.1:{port_a}") is None and pool.peek(f"127.0.0.1:{port_b}") is second
            await asyncio.sleep(0.1)
            with pytest.raises(grpc.aio.UsageError):
                await cloud_grpc.CloudNodeStub(first).GetStatus(cloud_pb.GetCloudStatusRequest(), timeout=TIMEOUT_S)
            await pool.close()
        with pytest.raises(ValueError, match="max_channels"):
            rpc.ChannelPool(max_channels=0)

    run(scenario)
