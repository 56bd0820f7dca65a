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
    never needs the cloud costs nothing and one that does pays no extra round trip.
    ``cloud_tokens`` is the edge's record of the session's history: every token the cloud has
    accepted into it (context pushed or verified, accepted drafts). It only ever grows on a
    successful call, and is never cleared: when there is no live session (``session_id`` empty:
    the first call, an eviction, ``restart`` after a failed call), the next call opens one with
    the whole history, so a failed replay loses nothing. After every call the session's length is
    checked against it. ``_pushed`` counts the leading tokens of the router's unseen list that a
    background push has already added to the history (the router keeps them until a verification
    succeeds).
    """

    def __init__(self, stub: pb_grpc.CloudNodeStub, *, temperature: float = 0.0, seed: int | None = None,
                 timeout_s: float = 60.0, prefetch_batch_tokens: int = 8) -> None:
        self.stub = stub
        self.options = pb.AcceptanceOptions(rule=pb.ACCEPTANCE_RULE_EXACT_MATCH, temperature=temperature,
                                            seed=seed)
        self.timeout_s = timeout_s
        self.prefetch_batch_tokens = prefetch_batch_tokens
        self.session_id = ""
        self.cloud_tokens: list[int] = []  # the session's history, as the edge knows it
        self.replays = 0  # sessions opened again with a history (after an eviction or a failure)
        self._pushed = 0  # leading tokens of the router's unseen list already in the history
        self._push: asyncio.Task | None = None
        self._background = _Background()

    def prefetch(self, unseen: list[int]) -> None:
        """Push unseen context in the background (OpenSession with it, then Extend), a batch at a time."""
        if len(unseen) - self._pushed >= self.prefetch_batch_tokens:
            self.rebuild(unseen)

    def rebuild(self, unseen: list[int]) -> asyncio.Task:
        """Push the part of ``unseen`` (the router's list, which keeps growing meanwhile) not yet in the
        history, in the background, unless a push is running (that one is returned). With no live session
        (after ``restart``) this opens one with the whole history; the next ``verify`` sends the rest,
        and opens the session itself if the push failed."""
        if self._push is None or self._push.done():
            self._push = asyncio.create_task(self._push_context(unseen[self._pushed:]))
        return self._push

    async def _push_context(self, tokens: list[int]) -> None:
        if not self.session_id:
            request = pb.OpenSessionRequest(prompt_token_ids=[*self.cloud_tokens, *tokens], acceptance=self.options)
            reply = await self.stub.OpenSession(request, timeout=self.timeout_s)
            self.replays += bool(self.cloud_tokens)
            self.session_id = reply.session_id
        else:
            request = pb.ExtendRequest(session_id=self.session_id, token_ids=tokens)
            reply = await self.stub.Extend(request, timeout=self.timeout_s)
        self.cloud_tokens += tokens
        self._pushed += len(tokens)
        self._check_length(reply.session_tokens)
        self._background.add(request.ByteSize(), reply.ByteSize(), reply.compute_s)

    async def _settle_push(self, context: list[int]) -> list[int]:
        """Wait for a background push; the part of ``context`` (the router's unseen list) not in the history."""
        if self._push is not None:
            push, self._push = self._push, None
            try:
                await push
            except Exception as exc:  # an RPC error, a length mismatch, a channel closed meanwhile
                log.warning("background context push failed (%s); opening the session again with its history", exc)
                self.session_id = ""  # it may be half-made, or gone
        return context[self._pushed:]

    def restart(self, stub: pb_grpc.CloudNodeStub | None = None) -> None:
        """After a failed call (the cloud may or may not have applied it): the next call opens a new
        session, on ``stub`` if given (another cloud node), with the whole history."""
        if self._push is not None:
            self._push.cancel()
            self._push = None
        self.session_id = ""  # the old one is left to expire (its cloud may be gone)
        if stub is not None:
            self.stub = stub

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        context = await self._settle_push(context)
        started = time.perf_counter()
        request = self._request(context, draft)
        bytes_up = request.ByteSize()
        try:
            reply = await self._call(request)
        except _SessionGone:
            log.warning("cloud session %s is gone; replaying %d tokens", self.session_id,
                        len(self.cloud_tokens) + len(context))
            self.session_id = ""
            request = self._request(context, draft)  # the whole history, not just what is new
            bytes_up += request.ByteSize()
            reply = await self._call(request)
        rtt = time.perf_counter() - started
        self.replays += not request.session_id and bool(self.cloud_tokens)
        self.session_id = reply.session_id
        self.cloud_tokens += [*context, *draft[:reply.accepted]]
        self._pushed = 0  # the router sent its unseen list: it starts a new one
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
            with contextlib.suppress(Exception):  # as in _settle_push: a failed push costs the request nothing
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
        """The call for ``context`` (new tokens) and ``draft``; with no live session, one that opens it
        with the whole history first."""
        if self.session_id:
            return pb.VerifyRequest(session_id=self.session_id, context_token_ids=context, draft_token_ids=draft)
        request = pb.VerifyRequest(context_token_ids=[*self.cloud_tokens, *context], draft_token_ids=draft)
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
