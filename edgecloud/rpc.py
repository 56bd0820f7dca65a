"""Shared gRPC plumbing for the daemons and the client SDK.

Message-size limits, keepalive and reconnect-backoff options, optional TLS, bearer-token
authentication (a server interceptor that answers UNAUTHENTICATED, a client interceptor that
attaches the token; a second, node token for the methods only nodes may call) and
``start_server``, which binds (port 0 allowed) and returns the real port.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
# A hung peer is noticed within KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS (10 s): every connection,
# idle or not, is pinged this often and dropped when a ping goes unanswered this long.
KEEPALIVE_TIME_MS = 5_000
KEEPALIVE_TIMEOUT_MS = 5_000
# A peer back on its port is dialled again within about MAX_RECONNECT_BACKOFF_MS (grpc's
# default grows to 120 s, so a cached channel kept failing for many seconds after an outage).
INITIAL_RECONNECT_BACKOFF_MS = 500
MAX_RECONNECT_BACKOFF_MS = 1_500
# How long one connection attempt (TCP + TLS + HTTP/2 handshake) may take: a hung peer whose
# kernel still accepts TCP fails over in this long (grpc's default is 20 s).
CONNECT_TIMEOUT_MS = 5_000
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
    node_token: str | None = None  # the node credential: registry calls to the coordinator

    def __post_init__(self) -> None:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be given together")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token is empty")
        if self.node_token is not None and not self.node_token.strip():
            raise ValueError("node_token is empty")
        if self.node_token is not None and self.node_token == self.auth_token:
            raise ValueError("the node token must differ from the client auth token "
                             "(a client must not be able to register nodes)")

    def as_node(self) -> SecurityConfig:
        """The settings a node dials the coordinator's registry with: the node token as its bearer token."""
        return replace(self, auth_token=self.node_token, node_token=None)

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
        # Accept the clients' pings every KEEPALIVE_TIME_MS, with or without calls in flight
        # (a stricter server answers them with GOAWAY too_many_pings).
        ("grpc.http2.min_recv_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
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
        # Any ping (not only keepalive's: grpc also pings after a cancelled stream) times out this
        # soon; grpc's default of 60 s let a hung peer hold a request for a minute.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ("grpc.min_reconnect_backoff_ms", CONNECT_TIMEOUT_MS),
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
    (``/package.Service/Method``) that need no token, e.g. health checks. ``node_methods``
    need ``node_token`` instead of ``token`` (the client token there: PERMISSION_DENIED);
    ``token`` None leaves the other methods open.
    """

    def __init__(self, token: str | None, exempt: Iterable[str] = (), *, node_token: str | None = None,
                 node_methods: Iterable[str] = ()) -> None:
        if token is not None and not token:
            raise ValueError("auth token is empty")
        if node_token is not None and not node_token:
            raise ValueError("node token is empty")
        if token is None and node_token is None:
            raise ValueError("token auth needs a client token or a node token")
        self._expected = f"Bearer {token}".encode() if token is not None else None
        self._node_expected = f"Bearer {node_token}".encode() if node_token is not None else None
        self._exempt = frozenset(exempt)
        self._node_methods = frozenset(node_methods) if node_token is not None else frozenset()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._exempt:
            return handler
        node_method = method in self._node_methods
        expected = self._node_expected if node_method else self._expected
        if expected is None:
            return handler
        presented = _metadata_value(handler_call_details.invocation_metadata, AUTH_METADATA_KEY)
        given = presented.encode() if presented is not None else b""
        if presented is not None and hmac.compare_digest(given, expected):
            return handler
        if node_method and self._expected is not None and hmac.compare_digest(given, self._expected):
            log.warning("rejected %s: a client token where the node token is needed", method)
            return _abort_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                  "this method needs the node token, not the client token")
        why = "missing" if presented is None else "invalid"
        what = "node token" if node_method else "bearer token"
        log.warning("rejected %s: %s %s", method, why, what)
        return _abort_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                              f"{why} {what}: send metadata 'authorization: Bearer <token>'")


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


class ChannelPool:
    """Channels to peers, one per address, shared by all calls to it; beyond ``max_channels`` the
    least recently used is closed (gracefully, so its calls in flight finish)."""

    def __init__(self, security: SecurityConfig | None = None, *, max_channels: int,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_channels < 1:
            raise ValueError(f"max_channels must be at least 1, not {max_channels}")
        self.security = security
        self.max_channels = max_channels
        self.max_message_bytes = max_message_bytes
        self._channels: OrderedDict[str, grpc.aio.Channel] = OrderedDict()
        self._closing: set[asyncio.Task] = set()

    def get(self, address: str) -> grpc.aio.Channel:
        """The channel to ``address``, opened on first use."""
        if address not in self._channels:
            self._channels[address] = create_channel(address, self.security, max_message_bytes=self.max_message_bytes)
            while len(self._channels) > self.max_channels:
                _, channel = self._channels.popitem(last=False)
                task = asyncio.get_running_loop().create_task(channel.close(grace=30.0))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
        self._channels.move_to_end(address)
        return self._channels[address]

    def peek(self, address: str) -> grpc.aio.Channel | None:
        """The open channel to ``address``, if there is one (opens nothing)."""
        return self._channels.get(address)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def create_server(security: SecurityConfig | None = None, *,
                  max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                  interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
                  node_methods: Iterable[str] = ()) -> grpc.aio.Server:
    """A ``grpc.aio`` server with limits and keepalive, and token auth when configured.

    ``node_methods`` (full method names) take ``security.node_token`` instead of the client token.
    """
    security = security or SecurityConfig()
    chain = list(interceptors)
    node_methods = tuple(node_methods) if security.node_token else ()
    if security.auth_token or node_methods:
        chain.insert(0, TokenAuthInterceptor(security.auth_token, node_token=security.node_token,
                                             node_methods=node_methods))
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
