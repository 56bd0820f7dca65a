"""The edge's ``CloudLink`` over gRPC: one cloud session per request, rebuilt if evicted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc

from edgecloud.errors import DomainError, clip
from edgecloud.routing.router import LinkVerdict
from edgecloud.v1 import cloud_node_pb2 as pb
from edgecloud.v1 import cloud_node_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

# The cloud's answer that the edge passes on as it is (the request itself is at fault); anything else
# means the cloud cannot serve this request now.
PASSED_ON = frozenset({grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED})


class CloudUnavailable(DomainError):
    """The cloud node could not verify; ``code`` is what the edge answers its caller with."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> CloudUnavailable:
        code = exc.code() if exc.code() in PASSED_ON else grpc.StatusCode.UNAVAILABLE
        return cls(f"cloud node: {exc.code().name}: {clip(exc.details(), 300)}", code)


class _SessionGone(Exception):
    """The cloud no longer has this request's session (evicted or expired): replay it."""


class GrpcCloudLink:
    """Verifies draft windows on a cloud node.

    The session is opened by the first ``Verify`` itself (``open_with``), so a request that
    never needs the cloud costs nothing and one that does pays no extra round trip. If the
    cloud dropped the session, a new one is opened with every token the cloud had replayed.
    ``cloud_tokens`` is the edge's record of the cloud session; after every verification it is
    checked against the length the cloud reports.
    """

    def __init__(self, stub: pb_grpc.CloudNodeStub, *, temperature: float = 0.0, seed: int | None = None,
                 timeout_s: float = 60.0, prefetch_batch_tokens: int = 8) -> None:
        self.stub = stub
        self.options = pb.AcceptanceOptions(rule=pb.ACCEPTANCE_RULE_EXACT_MATCH, temperature=temperature,
                                            seed=seed)
        self.timeout_s = timeout_s
        self.prefetch_batch_tokens = prefetch_batch_tokens
        self.session_id = ""
        self.cloud_tokens: list[int] = []  # what the cloud's session holds, for a replay
        self.replays = 0
        self._pushed = 0  # leading tokens of the router's unseen list already pushed in the background
        self._push: asyncio.Task | None = None
        self._background = _Background()
        self._restart = False  # the next verify rebuilds the session from scratch

    def prefetch(self, unseen: list[int]) -> None:
        """Push unseen context in the background (OpenSession with it, then Extend), a batch at a time."""
        if self._push is not None and not self._push.done():
            return
        if len(unseen) - self._pushed < self.prefetch_batch_tokens:
            return
        tokens = unseen[self._pushed:]
        self._pushed = len(unseen)
        self._push = asyncio.create_task(self._push_context(tokens))

    async def _push_context(self, tokens: list[int]) -> None:
        if not self.session_id:
            request = pb.OpenSessionRequest(prompt_token_ids=tokens, acceptance=self.options)
            reply = await self.stub.OpenSession(request, timeout=self.timeout_s)
            self.session_id = reply.session_id
        else:
            request = pb.ExtendRequest(session_id=self.session_id, token_ids=tokens)
            reply = await self.stub.Extend(request, timeout=self.timeout_s)
        self.cloud_tokens += tokens
        self._check_length(reply.session_tokens)
        self._background.add(request.ByteSize(), reply.ByteSize(), reply.compute_s)

    async def _settle_push(self, context: list[int]) -> list[int]:
        """Wait for a background push; return the part of ``context`` the cloud still lacks."""
        pushed, self._pushed = self._pushed, 0
        if self._push is None:
            return context
        push, self._push = self._push, None
        try:
            await push
        except (grpc.aio.AioRpcError, DomainError, OSError) as exc:
            log.warning("background context push failed (%s); replaying into a new session", exc)
            return self._replay(context)
        return context[pushed:]

    def _replay(self, context: list[int]) -> list[int]:
        """Forget the cloud session; the context that rebuilds it: every token it held, then ``context``."""
        replay, self.cloud_tokens, self.session_id = self.cloud_tokens + context, [], ""
        self.replays += 1
        return replay

    def rebuild(self, unseen: list[int]) -> asyncio.Task:
        """After ``restart``: open the new session in the background with every token the old one held
        plus ``unseen`` (the router's, which keeps growing meanwhile; the next ``verify`` sends the rest).
        If it fails, that ``verify`` replays synchronously."""
        if self._push is not None and not self._push.done():
            return self._push
        history = [*self.cloud_tokens, *unseen]
        self._restart = False
        self._pushed = len(unseen)
        self._push = asyncio.create_task(self._reopen(history))
        return self._push

    async def _reopen(self, history: list[int]) -> None:
        request = pb.OpenSessionRequest(prompt_token_ids=history, acceptance=self.options)
        reply = await self.stub.OpenSession(request, timeout=self.timeout_s)
        self.session_id, self.cloud_tokens = reply.session_id, history
        self.replays += 1
        self._check_length(reply.session_tokens)
        self._background.add(request.ByteSize(), reply.ByteSize(), reply.compute_s)

    def restart(self, stub: pb_grpc.CloudNodeStub | None = None) -> None:
        """After a failed call (the cloud may or may not have applied it): the next ``verify`` opens a new
        session, on ``stub`` if given (another cloud node), with every token the old one held."""
        if self._push is not None:
            self._push.cancel()
            self._push = None
        self._pushed = 0
        self._restart = True
        self.session_id = ""  # the old one is left to expire (its cloud may be gone)
        if stub is not None:
            self.stub = stub

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        context = await self._settle_push(context)
        if self._restart:
            self._restart = False
            context = self._replay(context)
        started = time.perf_counter()
        request = self._request(context, draft)
        bytes_up = request.ByteSize()
        try:
            reply = await self._call(request)
        except _SessionGone:
            log.warning("cloud session %s is gone; replaying %d tokens", self.session_id,
                        len(self.cloud_tokens) + len(context))
            context = self._replay(context)  # the whole session, not just what is new
            request = self._request(context, draft)
            bytes_up += request.ByteSize()
            reply = await self._call(request)
        rtt = time.perf_counter() - started
        self.session_id = reply.session_id
        self.cloud_tokens += [*context, *draft[:reply.accepted]]
        self._check_length(reply.session_tokens)
        background, self._background = self._background, _Background()
        return LinkVerdict(accepted=reply.accepted, next_token=reply.next_token_id,
                           cloud_compute_s=reply.compute_s + background.compute_s,
                           network_s=max(0.0, rtt - reply.compute_s),
                           bytes_up=bytes_up + background.bytes_up,
                           bytes_down=reply.ByteSize() + background.bytes_down,
                           background_calls=background.calls)

    async def settle(self) -> LinkVerdict:
        """Wait for a background push still running; the pushes' cost since the last verdict."""
        if self._push is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, DomainError, OSError):
                await self._push
        background, self._background = self._background, _Background()
        return LinkVerdict(accepted=0, next_token=-1, cloud_compute_s=background.compute_s,
                           bytes_up=background.bytes_up, bytes_down=background.bytes_down,
                           background_calls=background.calls)

    def _check_length(self, session_tokens: int) -> None:
        if session_tokens != len(self.cloud_tokens):
            raise CloudUnavailable(f"cloud session {self.session_id} holds {session_tokens} tokens but the edge "
                                   f"sent {len(self.cloud_tokens)}", grpc.StatusCode.INTERNAL)

    def _request(self, context: list[int], draft: list[int]) -> pb.VerifyRequest:
        request = pb.VerifyRequest(session_id=self.session_id, context_token_ids=context, draft_token_ids=draft)
        if not self.session_id:
            request.open_with.CopyFrom(self.options)
        return request

    async def _call(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        try:
            return await self.stub.Verify(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND and request.session_id:
                raise _SessionGone from exc
            raise CloudUnavailable.from_rpc(exc) from exc
        except Exception as exc:  # e.g. a closed channel
            raise CloudUnavailable(f"cloud verification failed: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        """Close the cloud session (best effort: the cloud expires idle sessions anyway)."""
        if self._push is not None:
            self._push.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError, DomainError):
                await self._push
            self._push = None
        if self.session_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.CloseSession(pb.CloseSessionRequest(session_id=self.session_id), timeout=5.0)
            self.session_id = ""


@dataclass
class _Background:
    """Context pushes overlapped with drafting since the last verdict."""

    calls: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    compute_s: float = 0.0

    def add(self, bytes_up: int, bytes_down: int, compute_s: float) -> None:
        self.calls += 1
        self.bytes_up += bytes_up
        self.bytes_down += bytes_down
        self.compute_s += compute_s
