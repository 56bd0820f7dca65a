"""CloudNode gRPC servicer: translates proto <-> ``SessionStore`` calls, nothing else."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from edgecloud import __version__
from edgecloud.activations import activation_from_proto
from edgecloud.cloud_node.sessions import SessionInputError, SessionNotFound, SessionStore
from edgecloud.cloud_node.tail_sessions import TailStore
from edgecloud.errors import DomainError, clip, status_for
from edgecloud.v1 import cloud_node_pb2 as pb
from edgecloud.v1 import cloud_node_pb2_grpc as pb_grpc
from edgecloud.v1 import common_pb2
from edgecloud.wire import tensor_to_proto, token_ids

log = logging.getLogger(__name__)


class CloudNodeServicer(pb_grpc.CloudNodeServicer):
    def __init__(self, store: SessionStore, *, node_id: str, model_name: str,
                 max_message_bytes: int, tails: TailStore | None = None) -> None:
        self.store = store
        self.tails = tails
        self.node_id = node_id
        self.model_name = model_name
        self.max_message_bytes = max_message_bytes
        self.started = time.monotonic()

    def _tokens(self, ids) -> list[int]:
        return token_ids(ids, max_len=self.store.limits.max_window_tokens,
                         vocab_size=self.store.model.config.vocab_size)

    async def _check_model(self, model: str, context: grpc.aio.ServicerContext) -> None:
        if model and model != self.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"model {clip(model)} is not served here; this node serves {self.model_name!r}")

    @staticmethod
    def _sampling(options: pb.AcceptanceOptions) -> dict:
        """Session options from the wire (``SessionInputError`` for a rule this node does not run)."""
        if options.rule not in (pb.ACCEPTANCE_RULE_UNSPECIFIED, pb.ACCEPTANCE_RULE_EXACT_MATCH):
            known = options.rule in pb.AcceptanceRule.values()
            name = pb.AcceptanceRule.Name(options.rule) if known else f"#{options.rule} (unknown)"
            raise SessionInputError(f"acceptance rule {name} is not served; this node runs EXACT_MATCH")
        return {"temperature": options.temperature, "seed": options.seed if options.HasField("seed") else None}

    async def OpenSession(self, request: pb.OpenSessionRequest, context) -> pb.OpenSessionResponse:
        await self._check_model(request.model, context)
        try:
            prompt = self._tokens(request.prompt_token_ids)
            options = {**self._sampling(request.acceptance), "session_id": request.session_id or None}
            if prompt:
                verdict = await asyncio.to_thread(self.store.start, prompt, [], **options)
                sid, compute_s = verdict.session_id, verdict.compute_s
            else:
                sid, compute_s = self.store.open(**options), 0.0
        except DomainError as exc:
            await context.abort(*status_for(exc))
        limits = self.store.limits
        return pb.OpenSessionResponse(session_id=sid, session_tokens=len(prompt), compute_s=compute_s,
                                      vocab_size=self.store.model.config.vocab_size,
                                      max_window_tokens=limits.max_window_tokens,
                                      max_tokens_per_session=limits.max_tokens_per_session)

    async def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:
        try:
            self._close(request.session_id)
        except DomainError as exc:
            await context.abort(*status_for(exc))
        return pb.CloseSessionResponse()

    def _close(self, session_id: str) -> None:
        """Close a verify session, or else a tail session of that id (``SessionNotFound`` if neither)."""
        try:
            self.store.close(session_id)
        except SessionNotFound:
            if self.tails is None:
                raise
            self.tails.close(session_id)

    async def Extend(self, request: pb.ExtendRequest, context) -> pb.ExtendResponse:
        try:
            tokens = self._tokens(request.token_ids)
            verdict = await asyncio.to_thread(self.store.verify, request.session_id, tokens, [])
        except DomainError as exc:
            await context.abort(*status_for(exc))
        return pb.ExtendResponse(session_tokens=verdict.session_tokens, compute_s=verdict.compute_s)

    async def Verify(self, request: pb.VerifyRequest, context) -> pb.VerifyResponse:
        try:
            ctx = self._tokens(request.context_token_ids)
            draft = self._tokens(request.draft_token_ids)
            if not 0 <= request.want_top_k <= 64:
                raise SessionInputError(f"want_top_k must be in [0, 64], got {request.want_top_k}")
            if not request.session_id and request.HasField("open_with"):
                options = self._sampling(request.open_with)
                verdict = await asyncio.to_thread(self.store.start, ctx, draft, top_k=request.want_top_k,
                                                  **options)
            else:
                verdict = await asyncio.to_thread(self.store.verify, request.session_id, ctx, draft,
                                                  top_k=request.want_top_k)
        except DomainError as exc:
            await context.abort(*status_for(exc))
        return pb.VerifyResponse(
            llm_token_ids=verdict.llm_tokens, accepted=verdict.accepted, next_token_id=verdict.next_token,
            top_logprobs=[pb.TopLogprobs(token_ids=[t for t, _ in row], logprobs=[lp for _, lp in row])
                          for row in verdict.top_logprobs],
            compute_s=verdict.compute_s, session_tokens=verdict.session_tokens, session_id=verdict.session_id)

    async def RunTail(self, request: pb.RunTailRequest, context) -> pb.RunTailResponse:
        if self.tails is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "split computing is not served by this node")
        await self._check_model(request.model, context)
        cfg = self.store.model.config
        try:
            hidden = activation_from_proto(
                request.hidden_states, expected_shape=(None, None, cfg.hidden_size),
                max_bytes=self.tails.limits.max_window_tokens * cfg.hidden_size * 4)
            result = await asyncio.to_thread(
                self.tails.run, request.start_layer, hidden, session_id=request.session_id,
                past_tokens=request.past_tokens, last_only=request.last_position_only,
                want_logits=not request.omit_logits, end_session=request.end_session)
        except DomainError as exc:
            await context.abort(*status_for(exc))
        logits = None if result.logits is None else tensor_to_proto(result.logits)
        return pb.RunTailResponse(logits=logits, compute_s=result.compute_s, next_token_ids=result.next_tokens,
                                  session_tokens=result.session_tokens)

    async def GetStatus(self, request: pb.GetCloudStatusRequest, context) -> pb.CloudStatus:
        status = self.store.status()
        limits = self.store.limits
        capabilities = [common_pb2.CAPABILITY_VERIFY] + ([common_pb2.CAPABILITY_SPLIT_TAIL] if self.tails else [])
        return pb.CloudStatus(
            node_id=self.node_id, models=[self.model_name], sessions=status["sessions"],
            max_sessions=limits.max_sessions, kv_bytes=status["kv_bytes"], max_kv_bytes=limits.max_kv_bytes,
            max_tokens_per_session=limits.max_tokens_per_session, max_window_tokens=limits.max_window_tokens,
            evictions=status["evictions"], verify_calls=status["verify_calls"],
            max_message_bytes=self.max_message_bytes, capabilities=capabilities,
            uptime_s=time.monotonic() - self.started, version=__version__)

