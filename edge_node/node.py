"""The edge node daemon: load the SLM, serve EdgeNode over gRPC, register with the coordinator."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import torch

from edgecloud import rpc
from edgecloud.daemon import CoordinatorAgent, NodeIdentity, serve_node
from edgecloud.edge_node.cloud_failover import CloudHealth, FailoverCloudLink
from edgecloud.edge_node.config import EdgeConfig
from edgecloud.edge_node.engine import EdgeEngine, EngineLimits, GenerationRequest
from edgecloud.edge_node.service import EdgeNodeServicer
from edgecloud.edge_node.split_engine import CutChooser, SplitEngine
from edgecloud.edge_node.tail_client import GrpcTailLink, tail_request_bytes
from edgecloud.kernels.codecs import parse_codec
from edgecloud.links import LinkTable, MeasuredLink
from edgecloud.metrics import bind_gauge
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.loader import load_model, model_display_name, resolve_source
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.reward import RewardHead
from edgecloud.split.llm import check_cut, step_bytes, time_decode_step
from edgecloud.v1 import cloud_node_pb2, cloud_node_pb2_grpc, common_pb2, edge_node_pb2_grpc

log = logging.getLogger(__name__)


MAX_MESSAGE_BYTES = 4 * 2**20  # requests carry text, not tensors
MAX_CLOUD_CHANNELS = 8
PROBE_TIMEOUT_S = 1.0  # a cloud that was down is retried only once it answers a status call this fast


class CloudChannels:
    """gRPC channels to cloud nodes, one per address, shared by all requests to it (the least
    recently used is closed beyond ``max_channels``), and what this edge knows of the clouds' health.

    ``candidates()``: the clouds a request may move to when its own is down.
    """

    def __init__(self, security: rpc.SecurityConfig, timeout_s: float, max_channels: int = MAX_CLOUD_CHANNELS,
                 *, candidates: Callable[[], Collection[str]] = tuple, health: CloudHealth | None = None) -> None:
        self.timeout_s = timeout_s
        self.candidates = candidates
        self.health = health or CloudHealth()
        self._pool = rpc.ChannelPool(security, max_channels=max_channels)

    def stub(self, address: str) -> cloud_node_pb2_grpc.CloudNodeStub:
        return cloud_node_pb2_grpc.CloudNodeStub(self._pool.get(address))

    def link(self, address: str, request: GenerationRequest) -> FailoverCloudLink:
        return FailoverCloudLink(address, self.stub, self.health, candidates=self.candidates, probe=self.answers,
                                 temperature=request.temperature, seed=request.seed, timeout_s=self.timeout_s)

    async def answers(self, address: str) -> bool:
        """Whether the cloud at ``address`` answers a status call within ``PROBE_TIMEOUT_S``."""
        try:
            await self.stub(address).GetStatus(cloud_node_pb2.GetCloudStatusRequest(), timeout=PROBE_TIMEOUT_S)
        except Exception:  # an RPC error, or a channel the pool closed meanwhile (grpc's UsageError)
            return False
        return True

    def tail_link(self, address: str, cut: int, codec: str) -> GrpcTailLink:
        """A link to the tail of the split model, cut after ``cut`` layers, on the cloud node at ``address``."""
        stub = cloud_node_pb2_grpc.CloudNodeStub(self._pool.get(address))
        return GrpcTailLink(stub, start_layer=cut, codec=codec, timeout_s=self.timeout_s)

    async def close(self) -> None:
        await self._pool.close()


def load_split(config: EdgeConfig) -> SplitEngine | None:
    """The split model and its cut chooser, when the node is asked to serve one (``ValueError`` for bad
    cuts or codecs). The edge's layer times are measured here, once."""
    if not config.split_model:
        return None
    for codec in config.split_codecs:
        parse_codec(codec)
    folder = resolve_source(config.split_model)
    log.info("loading %s for split computing", folder)
    model = load_model(folder, dtype=parse_dtype(config.dtype))
    layers = model.config.num_layers
    cuts = config.split_cuts or tuple(range(0, layers + 1, max(1, layers // 4)))
    for cut in cuts:
        check_cut(model, cut)
    edge_times = time_decode_step(model)
    log.info("split model: %d layers, %.2f ms per layer per token here; cuts %s, codecs %s", layers,
             edge_times.layer_s * 1e3, cuts, ", ".join(config.split_codecs))
    chooser = CutChooser(model, cuts, config.split_codecs, edge_times=edge_times,
                         bytes_per_step=step_bytes(model, config.split_codecs, tail_request_bytes),
                         cloud_speedup=config.split_cloud_speedup)
    return SplitEngine(model, Tokenizer.from_folder(folder), chooser)


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
    agents: list[CoordinatorAgent] = []  # the coordinator link, once serve_node has started it

    def allowed_clouds() -> set[str]:
        registered = agents[0].cloud_addresses if agents else ()
        return {*config.allowed_clouds, *registered}

    def failover_clouds() -> set[str]:  # where a request whose cloud is down may move
        return {*allowed_clouds(), *([config.cloud] if config.cloud else [])}

    channels = CloudChannels(config.security, config.cloud_timeout_s, candidates=failover_clouds)

    async def refresh_clouds() -> None:
        if agents:
            await agents[0].refresh()

    split = load_split(config)
    links = LinkTable()  # RTT and bandwidth to each cloud, from verify calls (link telemetry)
    servicer = EdgeNodeServicer(engine, node_id=config.node_id, model_name=model_name, default_cloud=config.cloud,
                                link_factory=lambda address, request: MeasuredLink(channels.link(address, request),
                                                                                    links),
                                default_prefetch=config.cloud_prefetch,
                                allowed_clouds=allowed_clouds, refresh_clouds=refresh_clouds, split=split,
                                tail_link_factory=channels.tail_link, clouds_down=channels.health.down)
    server = rpc.create_server(config.security, max_message_bytes=MAX_MESSAGE_BYTES)
    edge_node_pb2_grpc.add_EdgeNodeServicer_to_server(servicer, server)
    # Threshold calibration (a minute of SLM work the first time) starts now, off the event loop,
    # so that the first request asking for a target cloud share does not wait for all of it.
    warm_up = asyncio.create_task(asyncio.to_thread(engine.calibration_features))

    bind_gauge("slm_queue_depth", "SLM forwards waiting for the scheduler.", lambda: engine.scheduler.depth)

    def load() -> common_pb2.NodeLoad:
        return common_pb2.NodeLoad(active_requests=servicer.active_requests,
                                   max_sessions=limits.max_active_requests)

    async def stopping() -> None:
        warm_up.cancel()
        await channels.close()

    identity = NodeIdentity(config.node_id, common_pb2.NODE_ROLE_EDGE, model_name, tuple(servicer.capabilities),
                            str(model.device))
    await serve_node("edge", server, identity, listen=config.listen, security=config.security, load=load,
                     coordinator=config.coordinator, heartbeat_interval_s=config.heartbeat_interval_s,
                     advertise=config.advertise, on_stopping=stopping, on_agent=agents.append, mqtt=config.mqtt,
                     links=links.peers, metrics_listen=config.metrics_listen)
