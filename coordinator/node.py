"""The coordinator daemon: the cluster (registry, placement, accounting) and the client-facing API over gRPC."""

from __future__ import annotations

from edgecloud import rpc
from edgecloud.coordinator.cluster import Cluster, ClusterLimits, Role
from edgecloud.coordinator.config import NODE_STATUS_OVERHEAD_BYTES, CoordinatorConfig
from edgecloud.coordinator.service import NODE_METHODS, CoordinatorServicer
from edgecloud.coordinator.telemetry import CoordinatorTelemetry
from edgecloud.daemon import serve_until_stopped
from edgecloud.metrics import bind_gauge
from edgecloud.processes import announce_endpoint
from edgecloud.v1 import coordinator_pb2_grpc


def build_cluster(config: CoordinatorConfig) -> Cluster:
    """The domain object for ``config``; ValueError when a full registry would not fit one status reply."""
    limits = ClusterLimits(max_nodes=config.max_nodes)
    # UTF-8 text is at most 4 bytes a character.
    status_bytes = config.max_nodes * (4 * limits.max_node_chars + NODE_STATUS_OVERHEAD_BYTES)
    if status_bytes > config.max_message_bytes:
        most = config.max_message_bytes // (4 * limits.max_node_chars + NODE_STATUS_OVERHEAD_BYTES)
        raise ValueError(f"--max-nodes {config.max_nodes} would not fit GetClusterStatus in "
                         f"--max-message-mib {config.max_message_mib:g} (at most {most} nodes)")
    return Cluster(ttl_s=config.node_ttl_s, expiry_s=config.node_expiry_s, limits=limits,
                   restart_after_s=1.5 * config.heartbeat_interval_s)


async def serve(config: CoordinatorConfig) -> None:
    servicer = CoordinatorServicer(build_cluster(config), security=config.security,
                                   heartbeat_interval_s=config.heartbeat_interval_s,
                                   request_timeout_s=config.request_timeout_s,
                                   max_message_bytes=config.max_message_bytes)
    server = rpc.create_server(config.security, max_message_bytes=config.max_message_bytes,
                               node_methods=NODE_METHODS)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)
    openai = None
    if config.openai_listen is not None:
        from edgecloud.coordinator.openai_api import OpenAIServer

        openai = OpenAIServer(config.openai_listen, config.security, request_timeout_s=config.request_timeout_s,
                              max_message_bytes=config.max_message_bytes)
        openai.attach(server)  # its private socket to this server, bound with the gRPC listener

    cluster = servicer.cluster
    bind_gauge("active_requests", "Generations being forwarded now.", lambda: cluster.totals.active_requests)
    for role in Role:
        bind_gauge(f"live_{role.value}_nodes", f"Placeable {role.value} nodes.", lambda role=role: len(cluster.live(role)))

    telemetry = CoordinatorTelemetry(cluster, mqtt=config.mqtt, embedded_listen=config.mqtt_listen,
                                     cluster_name=config.cluster)

    async def started(_address: str) -> None:
        if openai is not None:
            announce_endpoint("openai", await openai.start())  # printed before the READY line
        await telemetry.start()

    async def stopping() -> None:
        await telemetry.close()
        if openai is not None:
            await openai.close()
        await servicer.close()

    try:
        await serve_until_stopped("coordinator", server, config.listen, config.security, on_started=started,
                                  on_stopping=stopping, metrics_listen=config.metrics_listen)
    finally:
        if openai is not None:
            await openai.close()  # also when the gRPC listener never started
