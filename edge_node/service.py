"""EdgeNode gRPC servicer: translates proto <-> ``EdgeEngine`` requests and events, nothing else."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from edgecloud import __version__
from edgecloud.edge_node.cloud_client import CloudUnavailable, GrpcCloudLink
from edgecloud.edge_node.engine import EdgeEngine, GenerationRequest, RequestError
from edgecloud.routing.policies import POLICIES
from edgecloud.routing.router import CLOUD, Accounting
from edgecloud.v1 import common_pb2, generation_pb2
from edgecloud.v1 import edge_node_pb2 as pb
from edgecloud.v1 import edge_node_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LinkFactory = Callable[[str, GenerationRequest], GrpcCloudLink]


def request_from_proto(msg: generation_pb2.GenerateRequest, *, default_prefetch: bool = False) -> GenerationRequest:
    """Domain request from the wire; ``RequestError`` for what the proto allows but we don't serve."""
    if msg.messages:
        raise RequestError("multi-turn 'messages' are not served yet; send 'prompt'")
    return GenerationRequest(
        prompt=msg.prompt, max_tokens=msg.max_tokens, policy=msg.policy or "slm-only",
        threshold=msg.threshold if msg.HasField("threshold") else None,
        target_cloud_share=msg.target_cloud_share if msg.HasField("target_cloud_share") else None,
        temperature=msg.temperature, seed=msg.seed if msg.HasField("seed") else 0,
        chat=msg.chat if msg.HasField("chat") else True, assistant_prefix=msg.assistant_prefix,
        stop=tuple(msg.stop), draft_window=msg.draft_window,
        cloud_prefetch=msg.cloud_prefetch if msg.HasField("cloud_prefetch") else default_prefetch)


FINISH_REASONS = {"length": generation_pb2.FINISH_REASON_LENGTH, "eos": generation_pb2.FINISH_REASON_EOS,
                  "stop": generation_pb2.FINISH_REASON_STOP}


def summary_to_proto(acc: Accounting, *, policy: str, threshold: float,
                     edge_node_id: str) -> generation_pb2.GenerationSummary:
    return generation_pb2.GenerationSummary(
        edge_tokens=acc.edge_tokens, cloud_tokens=acc.cloud_tokens, checked_tokens=acc.checked_tokens,
        drafted_tokens=acc.drafted_tokens, cloud_round_trips=acc.round_trips, bytes_up=acc.bytes_up,
        bytes_down=acc.bytes_down, edge_compute_s=acc.edge_compute_s, cloud_compute_s=acc.cloud_compute_s,
        network_s=acc.network_s, wall_s=acc.wall_s, cloud_share=acc.cloud_share,
        finish_reason=FINISH_REASONS.get(acc.finish_reason, generation_pb2.FINISH_REASON_UNSPECIFIED),
        prompt_tokens=acc.prompt_tokens, policy=policy, threshold=threshold, window_sizes=acc.window_sizes,
        edge_node_id=edge_node_id, cloud_background_calls=acc.background_calls)


class EdgeNodeServicer(pb_grpc.EdgeNodeServicer):
    def __init__(self, engine: EdgeEngine, *, node_id: str, model_name: str, default_cloud: str | None,
                 link_factory: LinkFactory, default_prefetch: bool = False) -> None:
        self.engine = engine
        self.default_prefetch = default_prefetch
        self.node_id = node_id
        self.model_name = model_name
        self.default_cloud = default_cloud
        self.link_factory = link_factory
        self.active_requests = 0
        self.started = time.monotonic()

    async def Generate(self, request: generation_pb2.GenerateRequest, context):
        try:
            domain = request_from_proto(request, default_prefetch=self.default_prefetch)
            policy = self.engine.validate(domain)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        cloud_address = request.cloud_address or self.default_cloud
        if policy.name != "slm-only" and not cloud_address:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"policy {policy.name!r} needs a cloud node, and this edge node knows none "
                                "(start it with --cloud or send the request through the coordinator)")
        links: list[GrpcCloudLink] = []

        def make_link(req: GenerationRequest) -> GrpcCloudLink:
            links.append(self.link_factory(cloud_address or "", req))
            return links[-1]

        self.active_requests += 1
        index = 0
        try:
            async for item in self.engine.generate(domain, make_link, policy=policy):
                if isinstance(item, Accounting):
                    summary = summary_to_proto(item, policy=policy.name, threshold=policy.threshold,
                                               edge_node_id=self.node_id)
                    yield generation_pb2.GenerateEvent(token_id=-1, index=index, summary=summary)
                    break
                source = common_pb2.SOURCE_CLOUD if item.source == CLOUD else common_pb2.SOURCE_EDGE
                yield generation_pb2.GenerateEvent(text=item.text, token_id=item.token_id, source=source,
                                                   checked=item.checked, index=index)
                index += item.token_id >= 0
        except CloudUnavailable as exc:
            log.warning("request failed: %s", exc)
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        finally:
            self.active_requests -= 1
            for link in links:
                await link.close()

    async def GetStatus(self, request: pb.GetEdgeStatusRequest, context) -> pb.EdgeStatus:
        return pb.EdgeStatus(
            node_id=self.node_id, models=[self.model_name], capabilities=[common_pb2.CAPABILITY_HYBRID_ROUTING],
            load=common_pb2.NodeLoad(active_requests=self.active_requests), policies=list(POLICIES),
            max_tokens_limit=self.engine.max_tokens_limit, default_cloud_address=self.default_cloud or "",
            uptime_s=time.monotonic() - self.started, version=__version__)
