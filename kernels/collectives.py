"""Allreduce over ZeroMQ for tensor parallelism across devices: a star (the default) and a ring.

Star: the master (rank 0) binds a ROUTER; workers (ranks 1..N-1) connect DEALERs. Each step the
workers send their tensor, the master sums all N and sends the sum back: two latency steps
whatever N is, which is what counts on edge links, where per-message latency dwarfs
bandwidth for decode-sized tensors. Ring: each rank sends chunks to the next, N-1 steps of
reduce-scatter then N-1 of all-gather (2(N-1) latency steps, 2(N-1)/N of the bytes per link).

Frames are multipart, a fixed header then the raw buffer (``frames.Header``; zero-copy on both
sides, never pickle). Every call has a timeout: a peer that sends nothing in time raises
``PeerTimeout`` naming it. Every frame carries the step id; a late frame from an aborted step is
dropped, never summed into a later one. ``compress=True`` sends Q80 partial sums (``q80``: 3.76x
fewer bytes than fp32; each compression adds at most ``q80.error_bound`` to a value).

The star sums in float32 whatever the tensor's dtype; the ring's partial sums travel in the tensor's
dtype (rounded at each hop for fp16/bf16). The result comes back in that dtype, in memory of its own.

Frames are validated and size-bounded and nothing is unpickled. Without keys, peers are not
authenticated (a rank is who it says it is; messages from connections outside the group are
dropped): trusted networks only. With ``keys`` (``curve.GroupKeys``, the star only) every link is
encrypted with ZeroMQ CURVE and only holders of the group's member key can join (``curve``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
import zmq

from edgecloud.kernels import frames, q80
from edgecloud.kernels.curve import GroupKeys, secure_master, secure_worker
from edgecloud.kernels.frames import Q80, RAW, FrameError, Header, tensor_view

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # one tensor's payload; bigger frames are refused by ZeroMQ itself
ZERO_COPY_BYTES = 64 * 1024  # below this a copy is cheaper than ZeroMQ's zero-copy bookkeeping (pyzmq's advice)


class CollectiveError(RuntimeError):
    """An allreduce that could not complete; the message names the peer and the step."""


class PeerTimeout(CollectiveError):
    """A peer sent nothing within the timeout (dead, hung, or unreachable)."""


def _payload(tensor: torch.Tensor, codec: int) -> tuple[torch.Tensor | bytes, int]:
    """What goes on the wire for ``tensor`` (a contiguous tensor's own memory for RAW) and its size."""
    if codec == Q80:
        data = q80.encode(tensor)
        return data, len(data)
    flat = tensor.detach().contiguous().reshape(-1)
    return flat, flat.numel() * flat.element_size()


def _send(socket: zmq.Socket, header: Header, body: torch.Tensor | bytes | None, prefix: Sequence[bytes] = ()) -> None:
    parts = [*prefix, header.pack()]
    if body is None:
        socket.send_multipart(parts)
        return
    if isinstance(body, torch.Tensor):  # ZeroMQ reads the tensor's memory
        body = memoryview(body.view(torch.uint8).numpy()) if body.dtype == torch.bfloat16 else memoryview(body.numpy())
    socket.send_multipart([*parts, body], copy=len(body) < ZERO_COPY_BYTES)


def _values(header: Header, body: zmq.Frame | bytes, numel: int, dtype: torch.dtype, codec: int) -> torch.Tensor:
    """The tensor a frame carries, as float32 (numel,), after checking it is the one expected."""
    if header.numel != numel or header.dtype != dtype or header.codec != codec:
        raise FrameError(f"rank {header.rank} sent {header.numel} {header.dtype} values (codec {header.codec}); "
                         f"this step takes {numel} {dtype} (codec {codec})")
    buffer = body.buffer if isinstance(body, zmq.Frame) else memoryview(body)
    if codec == Q80:
        if header.nbytes != len(buffer):
            raise FrameError(f"rank {header.rank}: header says {header.nbytes} bytes, frame has {len(buffer)}")
        return q80.decode(buffer, numel)
    expected = numel * dtype.itemsize
    if header.nbytes != expected or len(buffer) != expected:
        raise FrameError(f"rank {header.rank}: {len(buffer)} bytes for {numel} {dtype} values (expected {expected})")
    if dtype == torch.bfloat16:
        return tensor_view(buffer, torch.uint8).view(torch.bfloat16).float()
    return tensor_view(buffer, dtype).float()


class _Peer:
    """Common parts: a ZeroMQ context and socket with bounded message sizes, the step counter, timeouts."""

    def __init__(self, rank: int, world_size: int, timeout_s: float, compress: bool, max_bytes: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a group of {world_size}")
        self.rank, self.world_size, self.timeout_s = rank, world_size, timeout_s
        self.codec = Q80 if compress else RAW
        self.max_bytes = max_bytes
        self.step = 0
        self.dropped_late = 0  # frames from earlier (aborted) steps that were dropped
        self.dropped_strangers = 0  # messages from connections that are not in the group
        self._context = zmq.Context.instance()
        self._sockets: list[zmq.Socket] = []

    def _socket(self, kind: int) -> zmq.Socket:
        socket = self._context.socket(kind)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.MAXMSGSIZE, self.max_bytes + 4096)
        socket.setsockopt(zmq.SNDHWM, 1000)
        socket.setsockopt(zmq.RCVHWM, 1000)
        self._sockets.append(socket)
        return socket

    def _check(self, tensor: torch.Tensor) -> None:
        if tensor.dtype not in frames.DTYPE_CODES:
            raise TypeError(f"allreduce takes float32, float16 or bfloat16 tensors, not {tensor.dtype}")
        if tensor.numel() * tensor.element_size() > self.max_bytes:
            raise ValueError(f"a tensor of {tensor.numel() * tensor.element_size()} bytes exceeds the "
                             f"{self.max_bytes}-byte limit")

    @staticmethod
    def _recv(socket: zmq.Socket, deadline: float | None, who: str, what: str) -> list[bytes | zmq.Frame]:
        """The next multipart message on ``socket`` before ``deadline`` (None: however long it takes;
        PeerTimeout naming ``who`` if none). Small frames come as bytes; a payload that its header says
        is large comes as a zero-copy Frame.
        """
        timeout_ms = -1 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
        socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
        try:
            parts: list[bytes | zmq.Frame] = [socket.recv()]
        except zmq.Again:
            raise PeerTimeout(f"{who} sent nothing for {what} within the timeout") from None
        while socket.getsockopt(zmq.RCVMORE):  # the rest of a message is already here
            last = parts[-1]
            large = isinstance(last, bytes) and frames.payload_bytes(last) >= ZERO_COPY_BYTES
            parts.append(socket.recv(copy=not large))
        return parts

    def _current(self, socket: zmq.Socket, deadline: float | None, who: str, what: str, stale_kind: int
                 ) -> tuple[Header, list[bytes | zmq.Frame]]:
        """The next message of this step or later: those of earlier (aborted) steps and ``stale_kind``
        ones (a repeated hello or welcome) are dropped."""
        while True:
            raw, *rest = self._recv(socket, deadline, who, what)
            header = self._header(raw)
            if header.step < self.step or header.kind == stale_kind:
                self.dropped_late += 1
                if deadline is not None and time.monotonic() > deadline:  # a stream of stale frames: time is up
                    raise PeerTimeout(f"{who} sent only stale frames for {what} within the timeout")
                continue
            return header, rest

    @staticmethod
    def _header(raw: bytes | zmq.Frame) -> Header:
        try:
            return Header.unpack(raw)
        except FrameError as exc:
            raise CollectiveError(str(exc)) from exc

    def close(self) -> None:
        for socket in self._sockets:
            socket.close(linger=0)
        self._sockets.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StarAllreduce(_Peer):
    """One rank of a star: ``StarAllreduce.master(bind, N)`` or ``StarAllreduce.worker(address, rank, N)``.

    ``connect()`` (each side, before the first step) waits until all N are there; then every rank calls
    ``allreduce`` for the same tensors in the same order. ``keys``: CURVE (``curve.GroupKeys``).
    """

    def __init__(self, rank: int, world_size: int, address: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 compress: bool = False, max_bytes: int = DEFAULT_MAX_BYTES, keys: GroupKeys | None = None) -> None:
        super().__init__(rank, world_size, timeout_s, compress, max_bytes)
        self._authenticator = None
        self._own_context = keys is not None
        if keys is not None:  # a context of its own: its ZAP handler serves this master alone
            self._context = zmq.Context()
        try:
            self._open(rank, address, keys)
        except BaseException:  # a bad address or keys: leave no socket, ZAP thread or context behind
            self.close()
            raise

    def _open(self, rank: int, address: str, keys: GroupKeys | None) -> None:
        if rank == 0:
            self._router = self._socket(zmq.ROUTER)
            if keys is not None:
                self._authenticator = secure_master(self._router, self._context, keys)
            # no ROUTER_HANDOVER: a second connection calling itself rank k cannot take rank k's route
            self._router.bind(address)
            self.address = self._router.getsockopt_string(zmq.LAST_ENDPOINT)
            self._identities: dict[int, bytes] = {}
        else:
            self._dealer = self._socket(zmq.DEALER)
            self._dealer.setsockopt(zmq.IDENTITY, f"rank-{rank}".encode())
            if keys is not None:
                secure_worker(self._dealer, keys)
            self._dealer.connect(address)
            self.address = address

    def close(self) -> None:
        super().close()
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if self._own_context:
            self._context.term()
            self._own_context = False

    @classmethod
    def master(cls, bind: str, world_size: int, **kwargs) -> StarAllreduce:
        """Rank 0, bound to ``bind`` (``tcp://127.0.0.1:*`` picks a free port; read ``.address``)."""
        return cls(0, world_size, bind, **kwargs)

    @classmethod
    def worker(cls, address: str, rank: int, world_size: int, **kwargs) -> StarAllreduce:
        return cls(rank, world_size, address, **kwargs)

    def connect(self, timeout_s: float | None = None) -> None:
        """Wait until the whole group is there (the master: every worker's hello; a worker: the welcome)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        if self.rank == 0:
            while len(self._identities) < self.world_size - 1:
                missing = sorted(set(range(1, self.world_size)) - set(self._identities))
                try:
                    identity, raw, *_ = self._recv(self._router, deadline, f"worker(s) {missing}", "the hello")
                except PeerTimeout as exc:
                    raise PeerTimeout(f"workers {missing} of {self.world_size} never joined {self.address}") from exc
                header = self._header(raw)
                if header.kind != frames.HELLO:
                    continue
                if header.world_size != self.world_size or not 1 <= header.rank < self.world_size:
                    raise CollectiveError(f"a worker says it is rank {header.rank} of {header.world_size}; "
                                          f"this group has {self.world_size}")
                self._identities[header.rank] = identity
            self._to_workers(Header(frames.WELCOME, 0, self.world_size, 0), None)
            return
        _send(self._dealer, Header(frames.HELLO, self.rank, self.world_size, 0), None)
        while True:
            raw, *_ = self._recv(self._dealer, deadline, f"the master at {self.address}", "the welcome")
            if self._header(raw).kind == frames.WELCOME:
                return

    def allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``tensor`` (same shape and dtype on all), as a new tensor."""
        self._check(tensor)
        self.step += 1
        deadline = time.monotonic() + self.timeout_s
        if self.world_size == 1:
            return tensor.detach().clone()
        if self.rank == 0:
            return self._master_step(tensor, deadline)
        # a worker waits longer than the master, which knows who failed and says so in its abort
        return self._worker_step(tensor, deadline + self.timeout_s)

    def broadcast(self, tensor: torch.Tensor | None, *, wait_s: float | None = None) -> torch.Tensor:
        """The master's ``tensor`` on every rank (a step of its own, never compressed). The master passes the
        tensor; a worker passes None and gets it back 1-D (any size within ``max_bytes``), waiting
        ``wait_s`` at most (None: until the master sends; a worker waiting for its next command)."""
        self.step += 1
        if self.rank == 0:
            if tensor is None:
                raise ValueError("the master broadcasts a tensor")
            self._check(tensor)
            body, nbytes = _payload(tensor, RAW)
            header = Header(frames.RESULT, 0, self.world_size, self.step, tensor.numel(), nbytes, tensor.dtype)
            self._to_workers(header, body)
            return tensor
        deadline = None if wait_s is None else time.monotonic() + wait_s
        header, body = self._from_master(deadline)
        if header.numel * header.dtype.itemsize > self.max_bytes:
            raise CollectiveError(f"the master broadcast {header.numel} values, over the {self.max_bytes}-byte limit")
        return _values(header, body, header.numel, header.dtype, RAW).to(header.dtype, copy=True)

    def _master_step(self, tensor: torch.Tensor, deadline: float) -> torch.Tensor:
        total = tensor.detach().reshape(-1).float().clone()  # (numel,)
        pending = set(range(1, self.world_size))
        members = set(self._identities.values())
        try:
            while pending:
                identity, raw, *body = self._recv(self._router, deadline, self._ranks(pending), f"step {self.step}")
                if identity not in members:  # not in the group: dropped unread, it cannot spoil the step
                    self.dropped_strangers += 1
                    continue
                header = self._header(raw)
                if header.step < self.step or header.kind == frames.HELLO:  # from an aborted step, or a re-join
                    self.dropped_late += 1
                    continue
                if header.kind != frames.CONTRIBUTE or header.step != self.step or header.rank not in pending or \
                        len(body) != 1 or identity != self._identities.get(header.rank):
                    raise CollectiveError(f"unexpected frame from rank {header.rank} at step {self.step} "
                                          f"(kind {header.kind}, step {header.step})")
                values = _values(header, body[0], tensor.numel(), tensor.dtype, self.codec)
                if self.codec == Q80 and not bool(torch.isfinite(values).all()):
                    raise CollectiveError(f"rank {header.rank} sent non-finite values at step {self.step}")
                total += values
                pending.discard(header.rank)
            result = total.to(tensor.dtype)
            body, nbytes = _payload(result, self.codec)  # Q80 refuses sums too large for its scales
        except (CollectiveError, FrameError, ValueError) as exc:
            self._abort(str(exc))
            if isinstance(exc, CollectiveError):
                raise
            raise CollectiveError(f"step {self.step}: {exc}") from exc
        header = Header(frames.RESULT, 0, self.world_size, self.step, tensor.numel(), nbytes, tensor.dtype, self.codec)
        self._to_workers(header, body)
        if self.codec == Q80:  # every rank gets the same sum: the master's too goes through the codec
            result = q80.decode(body, tensor.numel()).to(tensor.dtype)
        elif result.numel() * result.element_size() >= ZERO_COPY_BYTES:
            result = result.clone()  # ZeroMQ may still be reading the sent one: the caller gets its own
        return result.view(tensor.shape)

    def _worker_step(self, tensor: torch.Tensor, deadline: float) -> torch.Tensor:
        body, nbytes = _payload(tensor, self.codec)
        _send(self._dealer, Header(frames.CONTRIBUTE, self.rank, self.world_size, self.step, tensor.numel(), nbytes,
                                   tensor.dtype, self.codec), body)
        header, body = self._from_master(deadline)
        values = _values(header, body, tensor.numel(), tensor.dtype, self.codec)
        return values.to(tensor.dtype, copy=True).view(tensor.shape)  # its own memory, not the frame's

    def _from_master(self, deadline: float | None) -> tuple[Header, bytes | zmq.Frame]:
        """The master's result for this step (frames of earlier steps dropped; an abort raised)."""
        header, rest = self._current(self._dealer, deadline, f"the master at {self.address}", f"step {self.step}",
                                     frames.WELCOME)
        if header.kind == frames.ABORT and header.step == self.step:
            raise CollectiveError(f"the master aborted step {self.step}: {bytes(rest[0]).decode(errors='replace')}")
        if header.kind != frames.RESULT or header.step != self.step or len(rest) != 1:
            raise CollectiveError(f"unexpected frame from the master at step {self.step} "
                                  f"(kind {header.kind}, step {header.step})")
        return header, rest[0]

    def _abort(self, reason: str) -> None:
        """Tell every worker this step is off (the ones waiting fail at once, with the reason)."""
        self._to_workers(Header(frames.ABORT, 0, self.world_size, self.step), reason[:500].encode())

    def _to_workers(self, header: Header, body: torch.Tensor | bytes | None) -> None:
        """The same message to every worker (the master only)."""
        for identity in self._identities.values():
            _send(self._router, header, body, [identity])

    def _ranks(self, ranks: set[int]) -> str:
        return "worker " + ", ".join(f"rank {r}" for r in sorted(ranks))


class RingAllreduce(_Peer):
    """One rank of a ring on the same transport: each rank binds a PULL for its predecessor's chunks and
    connects a PUSH to its successor. ``RingAllreduce(rank, N, bind)`` then ``connect(next_address)``."""

    def __init__(self, rank: int, world_size: int, bind: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 compress: bool = False, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        super().__init__(rank, world_size, timeout_s, compress, max_bytes)
        self._pull = self._socket(zmq.PULL)
        self._pull.bind(bind)
        self.address = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._push = self._socket(zmq.PUSH)
        self._next_address = ""

    def connect(self, next_address: str, timeout_s: float | None = None) -> None:
        """Connect to the successor's address, then pass a hello round the ring: when it comes back,
        every rank is there."""
        self._next_address = next_address
        self._push.connect(next_address)
        if self.world_size == 1:
            return
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        _send(self._push, Header(frames.HELLO, self.rank, self.world_size, 0), None)
        raw, *_ = self._recv(self._pull, deadline, f"the ring before rank {self.rank}", "the hello")
        if self._header(raw).kind != frames.HELLO:
            raise CollectiveError("the ring's first frame is not a hello")

    def allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self._check(tensor)
        self.step += 1
        n, rank = self.world_size, self.rank
        total = tensor.detach().reshape(-1).float().clone()  # (numel,)
        if n == 1:
            return total.to(tensor.dtype).view(tensor.shape)
        chunks = list(torch.tensor_split(total, n))  # views of total
        deadline = time.monotonic() + self.timeout_s
        relay: bytes = b""  # Q80 all-gather: the bytes received, passed on as they are (re-encoding drifts)
        for part in range(2 * (n - 1)):  # reduce-scatter, then all-gather
            reducing = part < n - 1
            send_index = (rank - part) % n if reducing else (rank + 1 - (part - n + 1)) % n
            recv_index = (send_index - 1) % n
            outgoing = chunks[send_index]
            if reducing or self.codec != Q80:
                body, nbytes = _payload(outgoing.to(tensor.dtype), self.codec)
            elif part == n - 1:  # the chunk this rank reduced: encoded once, kept as every other rank gets it
                body = q80.encode(outgoing.to(tensor.dtype))
                nbytes = len(body)
                outgoing.copy_(q80.decode(body, outgoing.numel()))
            else:
                body, nbytes = relay, len(relay)
            _send(self._push, Header(frames.CHUNK, rank, n, self.step, outgoing.numel(), nbytes, tensor.dtype,
                                     self.codec, part), body)
            incoming, raw = self._chunk(part, chunks[recv_index].numel(), tensor.dtype, deadline)
            if reducing:
                chunks[recv_index] += incoming
            else:
                chunks[recv_index].copy_(incoming)
                relay = bytes(raw.buffer if isinstance(raw, zmq.Frame) else raw) if self.codec == Q80 else b""
        return total.to(tensor.dtype).view(tensor.shape)

    def _chunk(self, part: int, numel: int, dtype: torch.dtype, deadline: float
               ) -> tuple[torch.Tensor, bytes | zmq.Frame]:
        """The predecessor's chunk for this part: its values and the frame they came in."""
        previous = (self.rank - 1) % self.world_size
        header, body = self._current(self._pull, deadline, f"rank {previous}", f"step {self.step} part {part}",
                                     frames.HELLO)
        if header.kind != frames.CHUNK or header.step != self.step or header.part != part or len(body) != 1 \
                or header.rank != previous:
            raise CollectiveError(f"unexpected frame from rank {header.rank} at step {self.step} part {part}")
        return _values(header, body[0], numel, dtype, self.codec), body[0]
