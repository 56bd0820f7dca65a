"""The edge's ``CloudLink`` over gRPC: one cloud session per request, rebuilt if evicted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import grpc

from edgecloud.routing.router import LinkVerdict
from edgecloud.v1 import cloud_node_pb2 as pb
from edgecloud.v1 import cloud_node_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class CloudUnavailable(RuntimeError):
    """The cloud node could not verify (unreachable, deadline exceeded, or refused)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


class GrpcCloudLink:
    """Verifies draft windows on a cloud node.

    The session is opened by the first ``Verify`` itself (``open_with``), so a request that
    never needs the cloud costs nothing and one that does pays no extra round trip. If the
    cloud evicted the session, it is reopened and every token the cloud had is replayed.
    """

    def __init__(self, stub: pb_grpc.CloudNodeStub, *, temperature: float = 0.0, seed: int | None = None,
                 timeout_s: float = 60.0, prefetch_batch_tokens: int = 8) -> None:
        self.stub = stub
        self.options = pb.AcceptanceOptions(rule=pb.ACCEPTANCE_RULE_EXACT_MATCH, temperature=temperature,
                                            seed=seed)
        self.timeout_s = timeout_s
        self.prefetch_batch_tokens = prefetch_batch_tokens
        self.session_id = ""
        self._cloud_tokens: list[int] = []  # what the cloud's session holds, for a replay
        self.replays = 0
        self._pushed = 0  # leading tokens of the router's unseen list already pushed in the background
        self._push: asyncio.Task | None = None
        self._background = {"calls": 0, "bytes_up": 0, "bytes_down": 0}

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
        self._cloud_tokens += tokens
        self._background["calls"] += 1
        self._background["bytes_up"] += request.ByteSize()
        self._background["bytes_down"] += reply.ByteSize()

    async def _settle_push(self, context: list[int]) -> list[int]:
        """Wait for a background push; return the part of ``context`` the cloud still lacks."""
        pushed, self._pushed = self._pushed, 0
        if self._push is None:
            return context
        push, self._push = self._push, None
        try:
            await push
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.warning("background context push failed (%s); replaying into a new session", exc)
            replay, self._cloud_tokens, self.session_id = self._cloud_tokens + context, [], ""
            self.replays += 1
            return replay
        return context[pushed:]

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        context = await self._settle_push(context)
        request = self._request(context, draft)
        started = time.perf_counter()
        try:
            reply = await self._call(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or not self.session_id:
                raise CloudUnavailable(f"cloud verification failed: {exc.code().name}: {exc.details()}",
                                       exc.code()) from exc
            log.warning("cloud session %s is gone (%s); replaying %d tokens", self.session_id, exc.details(),
                        len(self._cloud_tokens))
            self.replays += 1
            self.session_id = ""
            request = self._request(self._cloud_tokens + context, draft)
            reply = await self._call(request)
            self._cloud_tokens = []
        rtt = time.perf_counter() - started
        self.session_id = reply.session_id
        self._cloud_tokens += [*context, *draft[:reply.accepted]]
        background, self._background = self._background, {"calls": 0, "bytes_up": 0, "bytes_down": 0}
        return LinkVerdict(accepted=reply.accepted, next_token=reply.next_token_id, cloud_compute_s=reply.compute_s,
                           network_s=max(0.0, rtt - reply.compute_s),
                           bytes_up=request.ByteSize() + background["bytes_up"],
                           bytes_down=reply.ByteSize() + background["bytes_down"],
                           background_calls=background["calls"])

    def _request(self, context: list[int], draft: list[int]) -> pb.VerifyRequest:
        request = pb.VerifyRequest(session_id=self.session_id, context_token_ids=context, draft_token_ids=draft)
        if not self.session_id:
            request.open_with.CopyFrom(self.options)
        return request

    async def _call(self, request: pb.VerifyRequest) -> pb.VerifyResponse:
        try:
            return await self.stub.Verify(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError:
            raise
        except Exception as exc:  # e.g. a closed channel
            raise CloudUnavailable(f"cloud verification failed: {exc}", grpc.StatusCode.UNAVAILABLE) from exc

    async def close(self) -> None:
        """Close the cloud session (best effort: the cloud evicts idle sessions anyway)."""
        if self._push is not None:
            self._push.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await self._push
            self._push = None
        if self.session_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.CloseSession(pb.CloseSessionRequest(session_id=self.session_id), timeout=5.0)
            self.session_id = ""
