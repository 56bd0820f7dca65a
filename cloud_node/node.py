"""The cloud node daemon: load the LLM, serve CloudNode over gRPC, register with the coordinator."""

from __future__ import annotations

import logging

import torch

from edgecloud import rpc
from edgecloud.cloud_node.config import CloudConfig
from edgecloud.cloud_node.service import CloudNodeServicer
from edgecloud.cloud_node.sessions import SessionLimits, SessionStore
from edgecloud.cloud_node.tail_sessions import TailStore
from edgecloud.daemon import NodeIdentity, serve_node
from edgecloud.models.dtypes import parse_dtype
from edgecloud.models.loader import load_model, model_display_name, resolve_source
from edgecloud.v1 import cloud_node_pb2_grpc, common_pb2

log = logging.getLogger(__name__)


async def serve(config: CloudConfig) -> None:
    if config.threads:
        torch.set_num_threads(config.threads)
    folder = resolve_source(config.model)
    log.info("loading %s", folder)
    model = load_model(folder, dtype=parse_dtype(config.dtype))
    limits = SessionLimits(max_sessions=config.max_sessions, max_kv_bytes=config.max_kv_mib * 2**20,
                           max_tokens_per_session=config.max_tokens_per_session,
                           max_window_tokens=config.max_window_tokens,
                           idle_ttl_s=config.session_idle_ttl_s)
    store = SessionStore(model, limits)
    tails = TailStore(model, limits, store.model_lock, max_logits_bytes=rpc.DEFAULT_MAX_MESSAGE_BYTES // 2) \
        if config.split_tail else None
    model_name = model_display_name(config.model)
    server = rpc.create_server(config.security)
    cloud_node_pb2_grpc.add_CloudNodeServicer_to_server(
        CloudNodeServicer(store, node_id=config.node_id, model_name=model_name,
                          max_message_bytes=rpc.DEFAULT_MAX_MESSAGE_BYTES, tails=tails), server)

    def load() -> common_pb2.NodeLoad:
        status = store.status()
        return common_pb2.NodeLoad(active_sessions=status["sessions"], max_sessions=limits.max_sessions,
                                   kv_bytes=status["kv_bytes"])

    capabilities = (common_pb2.CAPABILITY_VERIFY, *((common_pb2.CAPABILITY_SPLIT_TAIL,) if tails else ()))
    identity = NodeIdentity(config.node_id, common_pb2.NODE_ROLE_CLOUD, model_name, capabilities,
                            str(model.device))
    await serve_node("cloud", server, identity, listen=config.listen, security=config.security, load=load,
                     coordinator=config.coordinator, heartbeat_interval_s=config.heartbeat_interval_s,
                     advertise=config.advertise, mqtt=config.mqtt, metrics_listen=config.metrics_listen)
