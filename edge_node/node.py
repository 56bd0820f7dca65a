"""The edge node daemon: load the SLM, serve EdgeNode over gRPC, register with the coordinator."""

from __future__ import annotations

import asyncio
import logging

import torch

from edgecloud import rpc
from edgecloud.daemon import CoordinatorAgent, NodeIdentity, serve_node
from edgecloud.edge_node.cloud_client import GrpcCloudLink
from edgecloud.edge_node.config import EdgeConfig
from edgecloud.edge_node.engine import EdgeEngine, EngineLimits, GenerationRequest
from edgecloud.edge_node.service import EdgeNodeServicer
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.loader import load_model, model_display_name, resolve_source
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.reward import RewardHead
from edgecloud.v1 import cloud_node_pb2_grpc, common_pb2, edge_node_pb2_grpc

log = logging.getLogger(__name__)


MAX_MESSAGE_BYTES = 4 * 2**20  # requests carry text, not tensors
MAX_CLOUD_CHANNELS = 8


class CloudChannels:
    """gRPC channels to cloud nodes, one per address, shared by all requests to it (the least
    recently used is closed beyond ``max_channels``)."""

    def __init__(self, security: rpc.SecurityConfig, timeout_s: float, max_channels: int = MAX_CLOUD_CHANNELS) -> None:
        self.timeout_s = timeout_s
        self._pool = rpc.ChannelPool(security, max_channels=max_channels)

    def link(self, address: str, request: GenerationRequest) -> GrpcCloudLink:
        stub = cloud_node_pb2_grpc.CloudNodeStub(self._pool.get(address))
        return GrpcCloudLink(stub, temperature=request.temperature, seed=request.seed, timeout_s=self.timeout_s)

    async def close(self) -> None:
        await self._pool.close()


async def serve(config: EdgeConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    folder = resolve_source(config.model)
    log.info("loading %s", folder)
    model = load_model(folder, dtype=parse_dtype(config.dtype))
    model_name = model_display_name(config.model)
    reward_head = RewardHead.load(config.reward_head) if config.reward_head else None
    limits = EngineLimits(max_tokens=config.max_tokens_limit, max_prompt_tokens=config.max_prompt_tokens,
                          max_active_requests=config.max_active_requests)
    engine = EdgeEngine(model, Tokenizer.from_folder(folder), limits=limits, reward_head=reward_head,
                        model_name=model_name)
    channels = CloudChannels(config.security, config.cloud_timeout_s)
    agents: list[CoordinatorAgent] = []  # the coordinator link, once serve_node has started it

    def allowed_clouds() -> set[str]:
        registered = agents[0].cloud_addresses if agents else ()
        return {*config.allowed_clouds, *registered}

    async def refresh_clouds() -> None:
        if agents:
            await agents[0].refresh()

    servicer = EdgeNodeServicer(engine, node_id=config.node_id, model_name=model_name, default_cloud=config.cloud,
                                link_factory=channels.link, default_prefetch=config.cloud_prefetch,
                                allowed_clouds=allowed_clouds, refresh_clouds=refresh_clouds)
    server = rpc.create_server(config.security, max_message_bytes=MAX_MESSAGE_BYTES)
    edge_node_pb2_grpc.add_EdgeNodeServicer_to_server(servicer, server)
    # Threshold calibration (a minute of SLM work the first time) starts now, off the event loop,
    # so that the first request asking for a target cloud share does not wait for all of it.
    warm_up = asyncio.create_task(asyncio.to_thread(engine.calibration_features))

    def load() -> common_pb2.NodeLoad:
        return common_pb2.NodeLoad(active_requests=servicer.active_requests,
                                   max_sessions=limits.max_active_requests)

    async def stopping() -> None:
        warm_up.cancel()
        await channels.close()

    identity = NodeIdentity(config.node_id, common_pb2.NODE_ROLE_EDGE, model_name,
                            (common_pb2.CAPABILITY_HYBRID_ROUTING,), str(model.device))
    await serve_node("edge", server, identity, listen=config.listen, security=config.security, load=load,
                     coordinator=config.coordinator, heartbeat_interval_s=config.heartbeat_interval_s,
                     advertise=config.advertise, on_stopping=stopping, on_agent=agents.append)
