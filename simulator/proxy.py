"""The shaping TCP proxy: one listening port per link, each accepted connection joined to the
upstream, both directions shaped by the link model.

Every chunk read gets a delivery time from the model and is written when that time comes (one
timer per direction, not a sleep per chunk), so latency does not cut throughput. Loss shows up
as what TCP would show, retransmission delay; outages stall connections or reset them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
from collections.abc import Generator
from typing import Any

from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.link_model import DirectionModel, LinkModel
from edgecloud.simulator.profiles import LinkProfile, profile_to_dict
from edgecloud.simulator.stats import DirectionStats, LinkStats

log = logging.getLogger(__name__)

MAX_TIMER_LEAD_S = 0.002
MAX_PENDING_BYTES = 4 << 20  # per direction of a connection, before the proxy stops reading
CONNECT_TIMEOUT_S = 10.0

_EOF = object()
_CLOSE = object()


def parse_address(text: str | tuple[str, int], key: str = "address") -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) or a ``(host, port)`` pair → ``(host, port)``."""
    if isinstance(text, tuple):
        host, port = text
    else:
        if not isinstance(text, str) or ":" not in text:
            raise ConfigError(key, f"must be HOST:PORT, got {text!r}")
        host, _, port_text = text.rpartition(":")
        host = host.strip("[]")
        if not port_text.isdigit():
            raise ConfigError(key, f"port must be an integer in HOST:PORT, got {text!r}")
        port = int(port_text)
    if not host or not 0 <= port <= 65535:
        raise ConfigError(key, f"bad address {text!r}")
    return host, port


class TimerLead:
    """How early to set timers so that they fire on time, learnt as the running median of how
    late they fire (the event loop wakes 0–1 ms late: epoll's timeout has ms resolution)."""

    STEP_S = 10e-6

    def __init__(self, initial_s: float = 0.0005) -> None:
        self.lead_s = initial_s

    def observe(self, late_s: float) -> None:
        if late_s > self.lead_s:
            self.lead_s = min(MAX_TIMER_LEAD_S, self.lead_s + self.STEP_S)
        else:
            self.lead_s = max(0.0, self.lead_s - self.STEP_S)


def _reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP RST (SO_LINGER 0), like a middlebox that lost the connection's state."""
    if transport is None or transport.is_closing():
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()  # type: ignore[attr-defined]


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (the client's or the upstream's)."""

    def __init__(self, conn: _Connection, role: str) -> None:
        self.conn = conn
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.pipe_from(self).feed(data)

    def eof_received(self) -> bool:
        self.conn.pipe_from(self).feed_end(_EOF)
        return True  # keep the other half open

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.conn.pipe_to(self).update_flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.conn.pipe_to(self).update_flow()


class _Pipe:
    """One direction of one connection: chunks queued with their delivery times."""

    def __init__(self, loop: asyncio.AbstractEventLoop, model: DirectionModel | None, stats: DirectionStats,
                 src: _Side, dst: _Side, lead: TimerLead) -> None:
        self.loop = loop
        self.lead = lead
        self.timer_at = 0.0
        self.model = model
        self.stats = stats
        self.src = src
        self.dst = dst
        self.queue: collections.deque[tuple[float, Any]] = collections.deque()
        self.pending = 0
        self.last_s = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.recheck: asyncio.TimerHandle | None = None
        self.paused = False
        self.ended = False
        self.eof_delivered = False
        self.on_eof: Any = None

    def feed(self, data: bytes) -> None:
        model = self.model
        if model is None or self.ended:
            return
        if not self.queue and model.passthrough:
            if self.dst.transport is not None and not self.dst.transport.is_closing():
                self.dst.transport.write(data)
                self.stats.passed(len(data))
            return
        now = self.loop.time()
        step = model.chunk_bytes()
        pieces = [data] if len(data) <= step else [data[i:i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            delivery = model.send(len(piece), now)
            deliver = delivery.deliver_s if delivery.deliver_s > self.last_s else self.last_s
            self.last_s = deliver
            self.queue.append((deliver, piece))
            self.pending += len(piece)
            self.stats.observe(len(piece), delivery.queue_s, delivery.lost_segments)
        self._arm()
        self.update_flow()

    def feed_end(self, marker: object) -> None:
        """Queue a half-close (``_EOF``) or close (``_CLOSE``) behind the bytes already queued."""
        if self.ended:
            return
        if marker is _CLOSE:
            self.ended = True
        latency = self.model.profile.latency_ms * 1e-3 if self.model is not None else 0.0
        self.last_s = max(self.last_s, self.loop.time() + latency)
        self.queue.append((self.last_s, marker))
        self._arm()

    def discard(self) -> None:
        """The destination is gone: drop everything."""
        self.ended = True
        self.queue.clear()
        self.pending = 0
        for handle in (self.timer, self.recheck):
            if handle is not None:
                handle.cancel()
        self.timer = self.recheck = None

    def _arm(self) -> None:
        if self.timer is None and self.queue:
            self.timer_at = self.queue[0][0] - self.lead.lead_s
            if self.timer_at <= self.loop.time():
                self.timer_at = 0.0  # due already: not a measure of timer lateness
            self.timer = self.loop.call_at(self.timer_at, self._flush)

    def _flush(self) -> None:
        self.timer = None
        transport = self.dst.transport
        if transport is None or transport.is_closing():
            self.discard()
            return
        now = self.loop.time()
        if self.timer_at:
            self.lead.observe(now - self.timer_at)
        horizon = now + self.lead.lead_s
        out: list[bytes] = []
        while self.queue and self.queue[0][0] <= horizon:
            _, item = self.queue.popleft()
            if item is _EOF or item is _CLOSE:
                if out:
                    transport.write(b"".join(out))
                    out = []
                if item is _CLOSE:
                    transport.close()
                    self.discard()
                    return
                if transport.can_write_eof():
                    try:
                        transport.write_eof()
                    except OSError as exc:
                        # The peer reset the connection before the loop saw it (ENOTCONN from
                        # shutdown(2), e.g. a daemon stopped at the end of a run): it is gone.
                        log.debug("cannot half-close the %s side: %s", self.dst.role, exc)
                        self.discard()
                        _reset(transport)
                        return
                self.eof_delivered = True
                if self.on_eof is not None:
                    self.on_eof()
                if transport.is_closing():
                    return
                continue
            out.append(item)
            self.pending -= len(item)
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        self._arm()
        self.update_flow()

    def update_flow(self) -> None:
        """Pause reading the source while the destination, the queue or the rate limiter is full."""
        source = self.src.transport
        if source is None or self.model is None:
            return
        now = self.loop.time()
        full = self.dst.write_paused or self.pending > MAX_PENDING_BYTES
        wait = self.model.clear_s(now) - now - self.model.backlog_allowed_s()
        if full or wait > 0:
            if not self.paused:
                source.pause_reading()
                self.paused = True
            if not full and self.recheck is None:
                self.recheck = self.loop.call_at(now + wait, self._recheck)
        elif self.paused:
            self.paused = False
            source.resume_reading()

    def _recheck(self) -> None:
        self.recheck = None
        self.update_flow()


class _Connection:
    """A client connection joined to its own upstream connection."""

    def __init__(self, proxy: ShapingProxy) -> None:
        self.proxy = proxy
        self.loop = proxy.loop
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.models: dict[str, DirectionModel] | None = None
        self.up = _Pipe(self.loop, None, proxy.stats.uplink, self.client, self.upstream, proxy.timer_lead)
        self.down = _Pipe(self.loop, None, proxy.stats.downlink, self.upstream, self.client, proxy.timer_lead)
        self.task: asyncio.Task[None] | None = None
        self.counted = False
        self.up.on_eof = self.down.on_eof = self._half_closed

    def _half_closed(self) -> None:
        """Both directions half-closed and delivered: close both sockets."""
        if self.up.eof_delivered and self.down.eof_delivered:
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.up if side is self.client else self.down

    def pipe_to(self, side: _Side) -> _Pipe:
        return self.down if side is self.client else self.up

    def side_made(self, side: _Side) -> None:
        if side is self.upstream:
            self._wire()
            return
        if self.proxy.refusing():
            _reset(self.client.transport)
            self.proxy.stats.connections_reset += 1
            return
        assert self.client.transport is not None
        self.client.transport.pause_reading()
        self.proxy.connections.add(self)
        self.proxy.stats.connections_total += 1
        self.proxy.stats.connections_active += 1
        self.counted = True
        self.task = self.loop.create_task(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        host, port = self.proxy.upstream
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: self.upstream, host, port),
                                   CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            log.warning("link %s: cannot reach upstream %s:%d: %s", self.proxy.name, host, port, exc)
            self.proxy.stats.connections_failed += 1
            _reset(self.client.transport)
            return
        if self.client.lost:
            _reset(self.upstream.transport)

    def _wire(self) -> None:
        """The upstream socket is up (its bytes may follow at once): give both pipes their models."""
        self.models = self.proxy.model.for_connection(self.loop.time())
        self.up.model = self.models["uplink"]
        self.down.model = self.models["downlink"]
        if self.client.transport is not None and not self.client.lost:
            self.client.transport.resume_reading()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        other = self.upstream if side is self.client else self.client
        self.pipe_to(side).discard()
        if exc is not None:
            self.pipe_from(side).discard()
            _reset(other.transport)
        elif not other.lost:
            self.pipe_from(side).feed_end(_CLOSE)
        if self.client.lost and (self.upstream.lost or self.upstream.transport is None):
            self._done()

    def _done(self) -> None:
        if self.counted:
            self.counted = False
            self.proxy.stats.connections_active -= 1
        self.proxy.connections.discard(self)
        if self.models is not None:
            self.proxy.model.release(self.models)
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def reset(self) -> None:
        """Both sockets closed with RST (reset-mode outage, proxy shutdown)."""
        self.up.discard()
        self.down.discard()
        _reset(self.client.transport)
        _reset(self.upstream.transport)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.upstream.transport is None:
            self._done()


class _Opening:
    """``await ShapingProxy.create(...)`` or ``async with ShapingProxy.create(...) as link``."""

    def __init__(self, proxy: ShapingProxy) -> None:
        self.proxy = proxy

    def __await__(self) -> Generator[Any, None, ShapingProxy]:
        return self.proxy.start().__await__()

    async def __aenter__(self) -> ShapingProxy:
        return await self.proxy.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.proxy.close()


class ShapingProxy:
    """One shaped link: ``listen`` → ``upstream`` with ``profile`` applied to each direction.

    Construct with ``create`` (no I/O in ``__init__``); ``port`` is the port actually bound.
    ``set_profile`` changes the profile of open and future connections at once. Use it from the
    event loop's thread.
    """

    def __init__(self, *, listen: str | tuple[str, int], upstream: str | tuple[str, int],
                 profile: LinkProfile | None = None, name: str = "link") -> None:
        self.name = name
        self.listen = parse_address(listen, "listen")
        self.upstream = parse_address(upstream, "upstream")
        self.initial_profile = profile or LinkProfile()
        self._profile = self.initial_profile
        self.stats = LinkStats()
        self.timer_lead = TimerLead()
        self.connections: set[_Connection] = set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._outage_timer: asyncio.TimerHandle | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.model: LinkModel = None  # type: ignore[assignment]

    @classmethod
    def create(cls, *, listen: str | tuple[str, int] = ("127.0.0.1", 0), upstream: str | tuple[str, int],
               profile: LinkProfile | None = None, name: str = "link") -> _Opening:
        """Start a proxy: ``link = await ShapingProxy.create(...)`` or ``async with ... as link``."""
        return _Opening(cls(listen=listen, upstream=upstream, profile=profile, name=name))

    async def start(self) -> ShapingProxy:
        self.loop = asyncio.get_running_loop()
        self.model = LinkModel(self._profile, self.loop.time())
        host, port = self.listen
        self._server = await self.loop.create_server(lambda: _Connection(self).client, host, port,
                                                     reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._watch_outages()
        return self

    async def close(self) -> None:
        """Stop listening and reset every open connection."""
        if self._outage_timer is not None:
            self._outage_timer.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.reset()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    @property
    def address(self) -> str:
        return f"{self.listen[0]}:{self.port}"

    @property
    def profile(self) -> LinkProfile:
        return self._profile

    def set_profile(self, profile: LinkProfile) -> None:
        """Apply ``profile`` from now on (open connections included)."""
        self._profile = profile
        if self.model is not None:
            self.model.set_profile(profile, self.loop.time())
            self._watch_outages()

    def refusing(self) -> bool:
        """True while a reset-mode outage is running: new connections get an RST."""
        if self.model is None or self._profile.outages.mode != "reset":
            return False
        return self.model.outages.down_interval(self.loop.time()) is not None

    def _watch_outages(self) -> None:
        if self._outage_timer is not None:
            self._outage_timer.cancel()
            self._outage_timer = None
        if self._profile.outages.mode != "reset" or not self._profile.outages.any:
            return
        upcoming = self.model.outages.next_outage(self.loop.time())
        if upcoming is not None:
            self._outage_timer = self.loop.call_at(upcoming[0], self._outage_begins, upcoming)

    def _outage_begins(self, interval: tuple[float, float]) -> None:
        log.info("link %s: outage for %.3f s, resetting %d connections", self.name,
                 interval[1] - interval[0], len(self.connections))
        self.stats.connections_reset += len(self.connections)
        for conn in list(self.connections):
            conn.reset()
        upcoming = self.model.outages.next_outage(interval[1] + 1e-6)
        self._outage_timer = None
        if upcoming is not None:
            self._outage_timer = self.loop.call_at(upcoming[0], self._outage_begins, upcoming)

    def describe(self) -> dict[str, Any]:
        """JSON-ready state of the link (control API)."""
        return {"name": self.name, "listen": self.address, "upstream": f"{self.upstream[0]}:{self.upstream[1]}",
                "profile": profile_to_dict(self._profile), "stats": self.stats.as_dict()}
