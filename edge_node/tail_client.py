"""The edge's ``TailLink`` over gRPC: hidden states at the cut, encoded by an activation codec, to
``CloudNode.RunTail``; the cloud keeps the tail session, the edge sends one position per step."""

from __future__ import annotations

import contextlib
import time

import grpc
import torch

from edgecloud.activations import activation_to_proto
from edgecloud.edge_node.cloud_client import CloudUnavailable
from edgecloud.edge_node.split_engine import TailGone, TailReply
from edgecloud.v1 import cloud_node_pb2 as pb
from edgecloud.v1 import cloud_node_pb2_grpc as pb_grpc

OUT_OF_STEP = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION})


def tail_request_bytes(hidden: torch.Tensor, codec: str) -> int:
    """Bytes of a RunTail request carrying ``hidden`` encoded by ``codec``."""
    return pb.RunTailRequest(hidden_states=activation_to_proto(hidden, codec), session_id="x" * 32,
                             past_tokens=1000, last_position_only=True, omit_logits=True).ByteSize()


class GrpcTailLink:
    """Runs the tail of the model cut after ``start_layer`` layers on a cloud node."""

    def __init__(self, stub: pb_grpc.CloudNodeStub, *, start_layer: int, codec: str, timeout_s: float = 60.0,
                 model: str = "") -> None:
        self.stub = stub
        self.start_layer = start_layer
        self.codec = codec
        self.timeout_s = timeout_s
        self.model = model
        self._session_id = ""

    async def run(self, hidden: torch.Tensor, past_tokens: int, *, session_id: str, end: bool = False) -> TailReply:
        self._session_id = session_id
        request = pb.RunTailRequest(model=self.model, start_layer=self.start_layer,
                                    hidden_states=activation_to_proto(hidden, self.codec), session_id=session_id,
                                    past_tokens=past_tokens, last_position_only=True, omit_logits=True,
                                    end_session=end)
        started = time.perf_counter()
        try:
            reply = await self.stub.RunTail(request, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in OUT_OF_STEP:
                raise TailGone(exc.details()) from None
            raise CloudUnavailable.from_rpc(exc) from None
        elapsed = time.perf_counter() - started
        if len(reply.next_token_ids) != 1:
            raise CloudUnavailable(f"cloud node answered {len(reply.next_token_ids)} next tokens for one sequence")
        return TailReply(next_token=reply.next_token_ids[0], compute_s=reply.compute_s,
                         bytes_up=request.ByteSize(), bytes_down=reply.ByteSize(),
                         network_s=max(0.0, elapsed - reply.compute_s), session_tokens=reply.session_tokens)

    async def close(self) -> None:
        """Drop the cloud's tail session (best effort: it expires anyway)."""
        if self._session_id:
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self.stub.CloseSession(pb.CloseSessionRequest(session_id=self._session_id),
                                             timeout=min(self.timeout_s, 5.0))
            self._session_id = ""
