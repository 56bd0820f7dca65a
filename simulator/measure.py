"""Loopback measurement tools for links: an echo server with a ping client, and a bulk server
for throughput either way. Used by the tests and the fidelity benchmark."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field

_UPLOAD, _DOWNLOAD = b"U", b"D"


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """A TCP echo server; read its port from ``server.sockets[0].getsockname()[1]``."""
    return await asyncio.get_running_loop().create_server(_Echo, host, port)


class Pinger:
    """One TCP connection to an echo server; ``rtts_ms`` sends sequential pings over it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout_s: float) -> None:
        self.reader, self.writer, self.timeout_s = reader, writer, timeout_s

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout_s: float = 30.0) -> Pinger:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, timeout_s)

    async def rtts_ms(self, count: int, *, payload_bytes: int = 32) -> list[float]:
        payload = b"p" * payload_bytes
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            self.writer.write(payload)
            await asyncio.wait_for(self.reader.readexactly(payload_bytes), self.timeout_s)
            rtts.append((time.perf_counter() - start) * 1e3)
        return rtts

    def close(self) -> None:
        self.writer.close()


async def ping_rtts_ms(host: str, port: int, count: int, *, payload_bytes: int = 32,
                       timeout_s: float = 30.0) -> list[float]:
    """Round-trip times (ms) of ``count`` sequential pings over one TCP connection to an echo server."""
    pinger = await Pinger.connect(host, port, timeout_s=timeout_s)
    try:
        return await pinger.rtts_ms(count, payload_bytes=payload_bytes)
    finally:
        pinger.close()


@dataclass
class Transfer:
    """Bytes seen by a receiver and when (loop time of each read)."""

    first_s: float | None = None
    first_bytes: int = 0
    last_s: float = 0.0
    total_bytes: int = 0

    def seen(self, size: int, t: float) -> None:
        if self.first_s is None:
            self.first_s, self.first_bytes = t, size
        self.last_s = t
        self.total_bytes += size

    @property
    def rate_mbps(self) -> float:
        """Rate after the first read (so neither latency nor the first burst counts)."""
        if self.first_s is None or self.last_s <= self.first_s:
            return 0.0
        return (self.total_bytes - self.first_bytes) * 8 / (self.last_s - self.first_s) / 1e6


class _Bulk(asyncio.Protocol):
    def __init__(self, server: BulkServer) -> None:
        self.server = server
        self.header = b""
        self.mode: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.mode is None:
            self.header += data
            if len(self.header) < 9:
                return
            self.mode, size = self.header[:1], struct.unpack("!Q", self.header[1:9])[0]
            data = self.header[9:]
            if self.mode == _DOWNLOAD:
                self.transport.write(bytes(size))
                self.transport.write_eof()
                return
        if data:
            self.server.upload.seen(len(data), asyncio.get_running_loop().time())

    def eof_received(self) -> bool:
        if self.mode == _UPLOAD:
            self.transport.write(b"OK")
        self.transport.close()
        return False


@dataclass
class BulkServer:
    """Sends ``D``+size bytes on request; counts ``U`` uploads into ``upload``."""

    server: asyncio.Server | None = None
    upload: Transfer = field(default_factory=Transfer)

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0) -> BulkServer:
        bulk = cls()
        bulk.server = await asyncio.get_running_loop().create_server(lambda: _Bulk(bulk), host, port)
        return bulk

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def _upload_one(host: str, port: int, size: int, timeout_s: float) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_UPLOAD + struct.pack("!Q", size))
    chunk = bytes(65536)
    sent = 0
    while sent < size:
        piece = chunk[: min(len(chunk), size - sent)]
        writer.write(piece)
        sent += len(piece)
        await writer.drain()
    writer.write_eof()
    await asyncio.wait_for(reader.read(), timeout_s)
    writer.close()


async def _download_one(host: str, port: int, size: int, transfer: Transfer) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(_DOWNLOAD + struct.pack("!Q", size))
    loop = asyncio.get_running_loop()
    while True:
        data = await reader.read(1 << 18)
        if not data:
            break
        transfer.seen(len(data), loop.time())
    writer.close()


async def measure_rate_mbps(bulk: BulkServer, host: str, port: int, total_bytes: int, *,
                            connections: int = 1, direction: str = "uplink",
                            timeout_s: float = 60.0) -> float:
    """Aggregate goodput (Mbit/s) of ``connections`` parallel transfers through ``host:port``
    (a link whose upstream is ``bulk``), ``uplink`` (towards the server) or ``downlink``."""
    each = total_bytes // connections
    if direction == "uplink":
        bulk.upload = Transfer()
        jobs = [_upload_one(host, port, each, timeout_s) for _ in range(connections)]
        await asyncio.wait_for(asyncio.gather(*jobs), timeout_s)
        return bulk.upload.rate_mbps
    transfer = Transfer()
    jobs = [_download_one(host, port, each, transfer) for _ in range(connections)]
    await asyncio.wait_for(asyncio.gather(*jobs), timeout_s)
    return transfer.rate_mbps
