"""The coordinator daemon: registry and client-facing API over gRPC."""

from __future__ import annotations

from edgecloud import rpc
from edgecloud.coordinator.config import CoordinatorConfig
from edgecloud.coordinator.registry import NodeRegistry
from edgecloud.coordinator.service import CoordinatorServicer
from edgecloud.daemon import serve_until_stopped
from edgecloud.v1 import coordinator_pb2_grpc


async def serve(config: CoordinatorConfig) -> None:
    servicer = CoordinatorServicer(NodeRegistry(ttl_s=config.node_ttl_s), security=config.security,
                                   heartbeat_interval_s=config.heartbeat_interval_s,
                                   request_timeout_s=config.request_timeout_s)
    server = rpc.create_server(config.security)
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(servicer, server)

    async def stopping() -> None:
        await servicer.close()

    await serve_until_stopped("coordinator", server, config.listen, config.security, on_stopping=stopping)
