"""Shared gRPC plumbing for the daemons and the client SDK.

Message-size limits, keepalive and reconnect-backoff options, optional TLS and mutual TLS
(a listener that requires client certificates signed by ``tls_client_ca_path``; a channel that
presents ``tls_client_cert_path``), bearer-token authentication (a server interceptor that
answers UNAUTHENTICATED, also for methods that do not exist, a client interceptor that attaches
the token; a second, node token for the methods only nodes may call), a server interceptor that
answers INVALID_ARGUMENT for request bytes that are not the method's protobuf message (and maps
an exception a handler let escape through ``errors.status_for``, never UNKNOWN), and
``start_server``, which binds (port 0 allowed) and returns the real port.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from edgecloud import metrics
from edgecloud.errors import status_for

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
    certificate (for dialing an IP address with a cert issued to a host name). Mutual TLS: a
    server with ``tls_client_ca_path`` requires every client to present a certificate signed by
    that CA; a client with ``tls_client_cert_path`` + ``tls_client_key_path`` presents one.
    """

    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_ca_path: str | None = None
    auth_token: str | None = None
    tls_server_name: str | None = None
    node_token: str | None = None  # the node credential: registry calls to the coordinator
    tls_client_ca_path: str | None = None  # server: require client certificates signed by this CA
    tls_client_cert_path: str | None = None  # client: the certificate presented when dialling
    tls_client_key_path: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert_path is None) != (self.tls_key_path is None):
            raise ValueError("tls_cert_path and tls_key_path must be given together")
        if (self.tls_client_cert_path is None) != (self.tls_client_key_path is None):
            raise ValueError("tls_client_cert_path and tls_client_key_path must be given together")
        if self.tls_client_ca_path is not None and self.tls_cert_path is None:
            raise ValueError("tls_client_ca_path (mutual TLS) needs a TLS listener: give tls_cert_path "
                             "and tls_key_path too")
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
        return (self.tls_ca_path is not None or self.tls_cert_path is not None
                or self.tls_client_cert_path is not None)

    @property
    def mutual_tls(self) -> bool:
        """Whether this process's listener requires client certificates."""
        return self.tls_client_ca_path is not None


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


def server_credentials(cert_path: str | Path, key_path: str | Path,
                       client_ca_path: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS credentials of a server from PEM certificate (chain) and private key files.

    With ``client_ca_path`` (mutual TLS) a client must present a certificate signed by that CA,
    or the handshake fails.
    """
    pairs = [(_read(key_path, "key"), _read(cert_path, "certificate"))]
    if client_ca_path is None:
        return grpc.ssl_server_credentials(pairs)
    return grpc.ssl_server_credentials(pairs, root_certificates=_read(client_ca_path, "client CA bundle"),
                                       require_client_auth=True)


def channel_credentials(ca_path: str | Path | None = None, client_cert_path: str | Path | None = None,
                        client_key_path: str | Path | None = None) -> grpc.ChannelCredentials:
    """TLS credentials of a client: trust the PEM CA bundle at ``ca_path`` (None: system roots);
    with ``client_cert_path`` + ``client_key_path``, present that certificate (mutual TLS)."""
    if (client_cert_path is None) != (client_key_path is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    roots = _read(ca_path, "CA bundle") if ca_path is not None else None
    if client_cert_path is None or client_key_path is None:
        return grpc.ssl_channel_credentials(root_certificates=roots)
    return grpc.ssl_channel_credentials(root_certificates=roots,
                                        private_key=_read(client_key_path, "client key"),
                                        certificate_chain=_read(client_cert_path, "client certificate"))


def security_channel_credentials(security: SecurityConfig) -> grpc.ChannelCredentials:
    """The channel credentials ``security`` describes (its CA, and its client certificate if any)."""
    return channel_credentials(security.tls_ca_path, security.tls_client_cert_path, security.tls_client_key_path)


def auth_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (for a call made on a channel without the interceptor)."""
    return ((AUTH_METADATA_KEY, f"Bearer {token}"),)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Rejects every call without ``authorization: Bearer <token>`` with UNAUTHENTICATED.

    The request is not deserialized before the check. ``exempt`` lists full method names
    (``/package.Service/Method``) that need no token, e.g. health checks. ``node_methods``
    need ``node_token`` instead of ``token`` (the client token there: PERMISSION_DENIED);
    ``token`` None leaves the other methods open. A method that does not exist is checked like
    any other (either token admits it) before it is answered UNIMPLEMENTED, so that a caller
    without a token learns nothing about which methods exist.
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
        if method in self._exempt:
            return handler
        if handler is None:
            return self._unknown(handler_call_details)
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


    def _unknown(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """None (UNIMPLEMENTED) for a caller with a valid token, else a handler answering UNAUTHENTICATED."""
        if self._expected is None:
            return None  # no client token configured: the server's other methods are open too
        presented = _metadata_value(details.invocation_metadata, AUTH_METADATA_KEY)
        given = presented.encode() if presented is not None else b""
        for expected in (self._expected, self._node_expected):
            if presented is not None and expected is not None and hmac.compare_digest(given, expected):
                return None
        log.warning("rejected a call of an unknown method: %s bearer token",
                    "missing" if presented is None else "invalid")
        # stream-stream reads no request: it fits a call of any kind
        return grpc.stream_stream_rpc_method_handler(_aborter(grpc.StatusCode.UNAUTHENTICATED, (
            f"{'missing' if presented is None else 'invalid'} bearer token: "
            "send metadata 'authorization: Bearer <token>'")))


def _aborter(code: grpc.StatusCode, details: str) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[None]]:
    async def abort(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, details)

    return abort


def _metadata_value(metadata: Sequence[tuple[str, Any]] | None, key: str) -> str | None:
    for item_key, value in metadata or ():
        if item_key.lower() == key:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def _abort_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, details: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that fails every call with ``code``."""
    abort = _aborter(code, details)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class _Malformed:
    """What a request deserializer returns for bytes that are not its message (it must not raise:
    grpc answers an exception there with UNKNOWN and the exception's text)."""

    __slots__ = ("details",)

    def __init__(self, details: str) -> None:
        self.details = details


def _safe_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    owner = getattr(deserialize, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "full_name", "request")

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, and whatever a parser may raise on hostile bytes
            log.warning("malformed %s (%d bytes): %s", name, len(data), type(exc).__name__)
            return _Malformed(f"malformed request: {len(data)} bytes that are not a valid {name} message")

    return parse


async def _answer_escaped(exc: Exception, method: str, context: grpc.aio.ServicerContext) -> None:
    """Abort with the status ``errors.status_for`` maps an exception a handler let escape to."""
    code, details = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s raised %s", method, type(exc).__name__, exc_info=exc)
    await context.abort(code, details or code.name.lower())


async def _checked_requests(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
        yield request


async def _checked(request: Any, context: grpc.aio.ServicerContext, request_streaming: bool) -> Any:
    """The request (or a checking iterator over a request stream); aborts on a malformed one."""
    if request_streaming:
        return _checked_requests(request, context)
    if isinstance(request, _Malformed):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
    return request


def _final_code(context: grpc.aio.ServicerContext, cancelled: bool) -> grpc.StatusCode:
    """The status a served call ended with (for the metrics)."""
    if cancelled:
        return grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.OK)


@contextlib.asynccontextmanager
async def _served(method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Count and time the call (``metrics``), map an escaped exception to its status."""
    cancelled = False
    with metrics.served(method) as call:
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):  # GeneratorExit: a stream closed by its client
            cancelled = True
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _answer_escaped(exc, method, context)
        finally:
            call.code = _final_code(context, cancelled)


def _unary_behavior(inner: Callable, method: str, request_streaming: bool) -> Callable:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _served(method, context):
            request = await _checked(request, context, request_streaming)
            result = inner(request, context)
            return await result if inspect.isawaitable(result) else result

    return behavior


def _streaming_behavior(inner: Callable, method: str, request_streaming: bool) -> Callable:
    async def behavior(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _served(method, context):
            request = await _checked(request, context, request_streaming)
            result = inner(request, context)
            if hasattr(result, "__aiter__"):
                async with contextlib.aclosing(result) as stream:  # a cancelled call closes the handler's
                    async for item in stream:
                        yield item
            elif inspect.isawaitable(result):
                await result  # the writer API (context.write)
            else:
                for item in result:
                    yield item

    return behavior


_MAKERS = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
           (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}


def _guarded(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """``handler`` with a deserializer that never raises and a behavior that answers malformed
    requests INVALID_ARGUMENT and escaped exceptions by ``errors.status_for``."""
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    inner = {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
             (True, False): handler.stream_unary, (True, True): handler.stream_stream}[kind]
    wrap = _streaming_behavior if kind[1] else _unary_behavior
    deserializer = handler.request_deserializer
    return _MAKERS[kind](wrap(inner, method, kind[0]),
                         request_deserializer=_safe_deserializer(deserializer) if deserializer else None,
                         response_serializer=handler.response_serializer)


class RequestGuardInterceptor(grpc.aio.ServerInterceptor):
    """Answers request bytes that do not parse as the method's message with INVALID_ARGUMENT (grpc
    itself says UNKNOWN and names the parser's exception), and an exception a handler let escape
    with the status ``errors.status_for`` gives it; the server keeps serving either way."""

    def __init__(self) -> None:
        self._guarded: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._guarded.get(method)  # only registered methods get here: bounded
        if cached is None or cached[0] is not handler:
            cached = (handler, _guarded(handler, method))
            self._guarded[method] = cached
        return cached[1]


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
        return grpc.aio.secure_channel(target, security_channel_credentials(security), options=options,
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
    """A ``grpc.aio`` server with limits and keepalive, token auth when configured, and the request
    guard (malformed requests: INVALID_ARGUMENT) on every method.

    ``node_methods`` (full method names) take ``security.node_token`` instead of the client token.
    """
    security = security or SecurityConfig()
    chain = [*interceptors, RequestGuardInterceptor()]
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
            port = server.add_secure_port(listen, server_credentials(security.tls_cert_path, security.tls_key_path,
                                                                     security.tls_client_ca_path))
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {listen!r}: {exc}") from exc
    if port == 0:
        raise OSError(f"cannot listen on {listen!r}")
    await server.start()
    log.info("gRPC server listening on %s (port %d, %s%s)", listen, port,
             ("mutual TLS" if security.mutual_tls else "TLS") if security.server_tls else "plaintext",
             ", token auth" if security.auth_token else "")
    return port
