"""Shared gRPC plumbing for the daemons and the client SDK.

Message-size limits and keepalive options, optional TLS, bearer-token authentication (a
server interceptor that answers UNAUTHENTICATED, a client interceptor that attaches the
token) and ``start_server``, which binds (port 0 allowed) and returns the real port.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
KEEPALIVE_TIME_MS = 30_000  # ping an idle connection this often
KEEPALIVE_TIMEOUT_MS = 10_000  # and drop it when a ping goes unanswered this long
AUTH_METADATA_KEY = "authorization"

ChannelOptions = list[tuple[str, Any]]


@dataclass(frozen=True)
class SecurityConfig:
    """TLS and token settings of one process (all optional; the default is plaintext, no auth).

    A server uses ``tls_cert_path`` + ``tls_key_path``; a client verifies servers against
    ``tls_ca_path`` (a client with no CA but a cert uses the system roots); both sides use
    ``auth_token``. ``tls_server_name`` overrides the name checked against the server's
    certificate (for dialing an IP address with a cert issued to a host name).
    """

    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_ca_path: str | None = None
    auth_token: str | None = None
    tls_server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be given together")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token is empty")

    @property
    def server_tls(self) -> bool:
        return self.tls_cert_path is not None

    @property
    def client_tls(self) -> bool:
        return self.tls_ca_path is not None or self.tls_cert_path is not None


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> ChannelOptions:
    """Options for ``grpc.aio.server``: size limits, and accept the clients' keepalive pings."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_ping_strikes", 0),
    ]


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                    server_name: str | None = None) -> ChannelOptions:
    """Options for a client channel: size limits and keepalive (notice dead links early)."""
    options: ChannelOptions = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
    ]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    return options


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read TLS {what} {str(path)!r}: {exc.strerror}") from exc


def server_credentials(cert_path: str | Path, key_path: str | Path) -> grpc.ServerCredentials:
    """TLS credentials of a server from PEM certificate (chain) and private key files."""
    return grpc.ssl_server_credentials([(_read(key_path, "key"), _read(cert_path, "certificate"))])


def channel_credentials(ca_path: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS credentials of a client: trust the PEM CA bundle at ``ca_path`` (None: system roots)."""
    roots = _read(ca_path, "CA bundle") if ca_path is not None else None
    return grpc.ssl_channel_credentials(root_certificates=roots)


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (for a call made on a channel without the interceptor)."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call without ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    The request is not deserialized before the check. ``exempt`` lists full method names
    (``/package.Service/Method``) that need no token, e.g. health checks.
    """

    def __init__(self, token: str, exempt: Iterable[str] = ()) -> None:
        if not token:
            raise ValueError("auth token is empty")
        self._expected = f"Bearer {token}".encode()
        self._exempt = frozenset(exempt)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in self._exempt:
            return handler
        presented = _metadata_value(handler_call_details.invocation_metadata, AUTH_METADATA_KEY)
        if presented is not None and hmac.compare_digest(presented.encode(), self._expected):
            return handler
        why = "missing" if presented is None else "invalid"
        log.warning("rejected %s: %s bearer token", handler_call_details.method, why)
        return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                              f"{why} bearer token: send metadata 'authorization: Bearer <token>'")


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key.lower() == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that fails every call with ``code``."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class _TokenMetadata:
    """Adds the bearer token to a call's metadata (works with and without TLS)."""

    def __init__(self, token: str) -> None:
        self._pair = auth_metadata(token)[0]

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        metadata.add(*self._pair)
        return details._replace(metadata=metadata)


# grpc.aio files each interceptor under ONE call kind, so every kind gets its own class.
class _TokenUnaryUnary(_TokenMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _TokenUnaryStream(_TokenMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):
        return await continuation(self._details(client_call_details), request)


class _TokenStreamUnary(_TokenMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


class _TokenStreamStream(_TokenMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return await continuation(self._details(client_call_details), request_iterator)


def client_interceptors(security: SecurityConfig) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors a client channel needs for ``security`` (the token on every kind of call)."""
    token = security.auth_token
    if not token:
        return []
    return [kind(token) for kind in (_TokenUnaryUnary, _TokenUnaryStream, _TokenStreamUnary, _TokenStreamStream)]


def create_channel(target: str, security: SecurityConfig | None = None, *,
                   max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    """A ``grpc.aio`` channel to ``target`` with limits, keepalive, TLS and token as configured."""
    security = security or SecurityConfig()
    options = channel_options(max_message_bytes, security.tls_server_name)
    interceptors = client_interceptors(security)
    if security.client_tls:
        return grpc.aio.secure_channel(target, channel_credentials(security.tls_ca_path), options=options,
                                       interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)


def create_server(security: SecurityConfig | None = None, *,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  interceptors: Sequence[grpc.aio.ServerInterceptor] = ()) -> grpc.aio.Server:
    """A ``grpc.aio`` server with limits and keepalive, and token auth when configured."""
    security = security or SecurityConfig()
    chain = list(interceptors)
    if security.auth_token:
        chain.insert(0, TokenAuthInterceptor(security.auth_token))
    return grpc.aio.server(options=server_options(max_message_bytes), interceptors=chain)


async def start_server(server: grpc.aio.Server, listen: str, security: SecurityConfig | None = None) -> int:
    """Bind ``listen`` (``host:port``, port 0 = any free port), TLS if configured; start; return the port."""
    security = security or SecurityConfig()
    try:
        if security.server_tls:
            assert security.tls_cert_path is not None and security.tls_key_path is not None
            port = server.add_secure_port(listen, server_credentials(security.tls_cert_path,
                                                                     security.tls_key_path))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen!r}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {listen!r}")
    await server.start()
    log.info("gRPC server listening on %s (port %d, %s%s)", listen, port,
             "TLS" if security.server_tls else "plaintext", ", token auth" if security.auth_token else "")
    return port
