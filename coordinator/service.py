"""Coordinator gRPC servicer: registry calls and request forwarding, translated to/from proto."""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict

import grpc

from edgecloud import __version__, rpc
from edgecloud.coordinator.registry import NodeInfo, NodeRegistry, NoNodeAvailable, Role
from edgecloud.routing.policies import POLICIES
from edgecloud.v1 import common_pb2, edge_node_pb2_grpc, generation_pb2
from edgecloud.v1 import coordinator_pb2 as pb
from edgecloud.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ROLES = {common_pb2.NODE_ROLE_EDGE: Role.EDGE, common_pb2.NODE_ROLE_CLOUD: Role.CLOUD}
MAX_SESSIONS_KEPT = 10_000


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, registry: NodeRegistry, *, security: rpc.SecurityConfig, heartbeat_interval_s: float = 5.0,
                 request_timeout_s: float = 3600.0, max_tokens_limit: int = 4096) -> None:
        self.registry = registry
        self.security = security
        self.heartbeat_interval_s = heartbeat_interval_s
        self.request_timeout_s = request_timeout_s
        self.max_tokens_limit = max_tokens_limit
        self.started = time.monotonic()
        self.active_requests = 0
        self.sessions: OrderedDict[str, generation_pb2.GenerationSummary] = OrderedDict()  # per-session accounting
        self.totals = {"requests": 0, "round_trips": 0, "tokens": 0}
        self._nodes: dict[str, tuple[common_pb2.NodeInfo, common_pb2.NodeLoad]] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}

    # Registry -------------------------------------------------------------------------------------------

    async def RegisterNode(self, request: pb.RegisterNodeRequest, context) -> pb.RegisterNodeResponse:
        node = request.node
        if node.role not in ROLES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node role must be EDGE or CLOUD")
        try:
            self.registry.register(NodeInfo(node.node_id, ROLES[node.role], node.address, tuple(node.models),
                                            active_sessions=request.load.active_requests,
                                            max_sessions=request.load.max_sessions))
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._nodes[node.node_id] = (node, request.load)
        log.info("registered %s node %s at %s (%s)", ROLES[node.role].value, node.node_id, node.address,
                 ", ".join(node.models))
        return pb.RegisterNodeResponse(heartbeat_interval_s=self.heartbeat_interval_s,
                                       node_ttl_s=self.registry.ttl_s)

    async def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatResponse:
        load = request.load
        if not self.registry.heartbeat(request.node_id, active_sessions=load.active_requests + load.active_sessions,
                                       tokens_per_s=load.tokens_per_s):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"node {request.node_id!r} is not registered")
        info, _ = self._nodes[request.node_id]
        self._nodes[request.node_id] = (info, load)
        return pb.HeartbeatResponse(heartbeat_interval_s=self.heartbeat_interval_s)

    async def DeregisterNode(self, request: pb.DeregisterNodeRequest, context) -> pb.DeregisterNodeResponse:
        self.registry.remove(request.node_id)
        self._nodes.pop(request.node_id, None)
        return pb.DeregisterNodeResponse()

    async def GetClusterStatus(self, request: pb.GetClusterStatusRequest, context) -> pb.ClusterStatus:
        live = {n.node_id: n for n in self.registry.live()}
        now = time.monotonic()
        nodes = []
        for node_id, (info, load) in sorted(self._nodes.items()):
            entry = live.get(node_id)
            if entry is None and not request.include_stale:
                continue
            nodes.append(pb.NodeStatus(info=info, load=load, live=entry is not None,
                                       last_seen_s_ago=now - entry.last_seen if entry else -1.0))
        return pb.ClusterStatus(nodes=nodes, active_requests=self.active_requests,
                                uptime_s=now - self.started, version=__version__,
                                requests_served=self.totals["requests"],
                                cloud_round_trips=self.totals["round_trips"], output_tokens=self.totals["tokens"])

    # Generation -----------------------------------------------------------------------------------------

    def _check(self, request: generation_pb2.GenerateRequest) -> str | None:
        """What is wrong with a request, before any node is bothered (None: nothing)."""
        if not request.prompt.strip() and not request.messages:
            return "prompt is empty"
        if not 0 < request.max_tokens <= self.max_tokens_limit:
            return f"max_tokens must be in [1, {self.max_tokens_limit}], got {request.max_tokens}"
        if request.policy and request.policy not in POLICIES:
            return f"unknown policy {request.policy!r}; known: {', '.join(POLICIES)}"
        return None

    def _place(self, request: generation_pb2.GenerateRequest) -> tuple[NodeInfo, NodeInfo | None]:
        if request.edge_node_id:
            edge = next((n for n in self.registry.live(Role.EDGE) if n.node_id == request.edge_node_id), None)
            if edge is None:
                raise NoNodeAvailable(f"edge node {request.edge_node_id!r} is not live")
        else:
            edge = self.registry.place(Role.EDGE, request.edge_model or None)
        needs_cloud = (request.policy or "slm-only") != "slm-only"
        cloud = self.registry.place(Role.CLOUD, request.cloud_model or None) if needs_cloud else None
        return edge, cloud

    def _edge_stub(self, address: str) -> edge_node_pb2_grpc.EdgeNodeStub:
        if address not in self._channels:
            self._channels[address] = rpc.create_channel(address, self.security)
        return edge_node_pb2_grpc.EdgeNodeStub(self._channels[address])

    async def Generate(self, request: generation_pb2.GenerateRequest, context):
        if (problem := self._check(request)) is not None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            edge, cloud = self._place(request)
        except NoNodeAvailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        forwarded = generation_pb2.GenerateRequest()
        forwarded.CopyFrom(request)
        forwarded.cloud_address = cloud.address if cloud else ""
        session_id = request.session_id or uuid.uuid4().hex
        self.active_requests += 1
        try:
            stream = self._edge_stub(edge.address).Generate(forwarded, timeout=self.request_timeout_s)
            async for event in stream:
                if event.HasField("summary"):
                    event.summary.edge_node_id = edge.node_id
                    event.summary.cloud_node_id = cloud.node_id if cloud else ""
                    self._account(session_id, event.summary)
                yield event
        except grpc.aio.AioRpcError as exc:
            log.warning("request %s on %s failed: %s %s", session_id, edge.node_id, exc.code().name, exc.details())
            await context.abort(exc.code(), f"edge node {edge.node_id}: {exc.details()}")
        finally:
            self.active_requests -= 1

    def _account(self, session_id: str, summary: generation_pb2.GenerationSummary) -> None:
        self.totals["requests"] += 1
        self.totals["round_trips"] += summary.cloud_round_trips
        self.totals["tokens"] += summary.edge_tokens + summary.cloud_tokens
        self.sessions[session_id] = summary
        self.sessions.move_to_end(session_id)
        while len(self.sessions) > MAX_SESSIONS_KEPT:
            self.sessions.popitem(last=False)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
