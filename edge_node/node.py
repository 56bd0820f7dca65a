"""The edge node daemon: load the SLM, serve EdgeNode over gRPC, register with the coordinator."""

from __future__ import annotations

import logging

import grpc

from edgecloud import rpc
from edgecloud.daemon import NodeIdentity, serve_node
from edgecloud.edge_node.cloud_client import GrpcCloudLink
from edgecloud.edge_node.config import EdgeConfig
from edgecloud.edge_node.engine import EdgeEngine, GenerationRequest
from edgecloud.edge_node.service import EdgeNodeServicer
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.loader import load_model, model_display_name, resolve_source
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.reward import RewardHead
from edgecloud.v1 import cloud_node_pb2_grpc, common_pb2, edge_node_pb2_grpc

log = logging.getLogger(__name__)


class CloudChannels:
    """One gRPC channel per cloud address, shared by all requests to it."""

    def __init__(self, security: rpc.SecurityConfig, timeout_s: float) -> None:
        self.security = security
        self.timeout_s = timeout_s
        self._channels: dict[str, grpc.aio.Channel] = {}

    def link(self, address: str, request: GenerationRequest) -> GrpcCloudLink:
        if address not in self._channels:
            self._channels[address] = rpc.create_channel(address, self.security)
        stub = cloud_node_pb2_grpc.CloudNodeStub(self._channels[address])
        return GrpcCloudLink(stub, temperature=request.temperature, seed=request.seed, timeout_s=self.timeout_s)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


async def serve(config: EdgeConfig) -> None:
    folder = resolve_source(config.model)
    log.info("loading %s", folder)
    model = load_model(folder, dtype=parse_dtype(config.dtype))
    model_name = model_display_name(config.model)
    reward_head = RewardHead.load(config.reward_head) if config.reward_head else None
    engine = EdgeEngine(model, Tokenizer.from_folder(folder), max_tokens_limit=config.max_tokens_limit,
                        reward_head=reward_head, model_name=model_name)
    channels = CloudChannels(config.security, config.cloud_timeout_s)
    servicer = EdgeNodeServicer(engine, node_id=config.node_id, model_name=model_name, default_cloud=config.cloud,
                                link_factory=channels.link, default_prefetch=config.cloud_prefetch)
    server = rpc.create_server(config.security)
    edge_node_pb2_grpc.add_EdgeNodeServicer_to_server(servicer, server)

    def load() -> common_pb2.NodeLoad:
        return common_pb2.NodeLoad(active_requests=servicer.active_requests, max_sessions=1)

    identity = NodeIdentity(config.node_id, common_pb2.NODE_ROLE_EDGE, model_name,
                            common_pb2.CAPABILITY_HYBRID_ROUTING, str(model.device))
    await serve_node("edge", server, identity, listen=config.listen, security=config.security, load=load,
                     coordinator=config.coordinator, heartbeat_interval_s=config.heartbeat_interval_s,
                     advertise=config.advertise, on_stopping=channels.close)
