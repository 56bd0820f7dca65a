"""Coordinator gRPC servicer: translates proto <-> ``Cluster`` calls and forwards generation
streams to edge nodes; the decisions (validation, leases, placement, accounting) are the
``Cluster``'s."""

from __future__ import annotations

import logging
import time

import grpc

from edgecloud import __version__, rpc
from edgecloud.coordinator.cluster import Cluster, Compute, Load, NodeInfo, NodeView, Role, check_request
from edgecloud.errors import DomainError, InvalidInput, Unavailable, clip, status_for
from edgecloud.routing.policies import POLICIES
from edgecloud.split.llm import SPLIT_POLICY
from edgecloud.v1 import common_pb2, edge_node_pb2, edge_node_pb2_grpc, generation_pb2
from edgecloud.v1 import coordinator_pb2 as pb
from edgecloud.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

ROLES = {common_pb2.NODE_ROLE_EDGE: Role.EDGE, common_pb2.NODE_ROLE_CLOUD: Role.CLOUD}
ROLE_PROTOS = {role: number for number, role in ROLES.items()}
SERVICE = "/edgecloud.v1.Coordinator/"
# The methods only nodes call: they take the node token, not the client token.
NODE_METHODS = tuple(SERVICE + name for name in ("RegisterNode", "Heartbeat", "DeregisterNode"))
PROBE_TIMEOUT_S = 1.5  # how long a node that just failed a request has to answer GetStatus


# proto <-> domain ---------------------------------------------------------------------------------------

def node_from_proto(msg: common_pb2.NodeInfo) -> NodeInfo:
    if msg.role not in ROLES:
        raise InvalidInput("node role must be EDGE or CLOUD")
    c = msg.compute
    return NodeInfo(node_id=msg.node_id, role=ROLES[msg.role], address=msg.address, models=tuple(msg.models),
                    capabilities=tuple(msg.capabilities), labels=dict(msg.labels), version=msg.version,
                    compute=Compute(device=c.device, cpu_cores=c.cpu_cores, memory_bytes=c.memory_bytes,
                                    accelerator=c.accelerator, tokens_per_s=c.tokens_per_s, gflops=c.gflops))


def node_to_proto(info: NodeInfo) -> common_pb2.NodeInfo:
    c = info.compute
    return common_pb2.NodeInfo(
        node_id=info.node_id, role=ROLE_PROTOS[info.role], address=info.address, models=list(info.models),
        capabilities=list(info.capabilities), labels=dict(info.labels), version=info.version,
        compute=common_pb2.ComputeProfile(device=c.device, cpu_cores=c.cpu_cores, memory_bytes=c.memory_bytes,
                                          accelerator=c.accelerator, tokens_per_s=c.tokens_per_s, gflops=c.gflops))


def load_from_proto(msg: common_pb2.NodeLoad) -> Load:
    return Load(active_sessions=msg.active_sessions, max_sessions=msg.max_sessions,
                active_requests=msg.active_requests, tokens_per_s=msg.tokens_per_s, kv_bytes=msg.kv_bytes,
                cpu_utilization=msg.cpu_utilization, memory_used_bytes=msg.memory_used_bytes)


def load_to_proto(load: Load) -> common_pb2.NodeLoad:
    return common_pb2.NodeLoad(active_sessions=load.active_sessions, max_sessions=load.max_sessions,
                               active_requests=load.active_requests, tokens_per_s=load.tokens_per_s,
                               kv_bytes=load.kv_bytes, cpu_utilization=load.cpu_utilization,
                               memory_used_bytes=load.memory_used_bytes)


def status_to_proto(view: NodeView) -> pb.NodeStatus:
    return pb.NodeStatus(info=node_to_proto(view.info), load=load_to_proto(view.load), live=view.live,
                         last_seen_s_ago=view.last_seen_s_ago, suspect=view.suspect)


class EdgeChannels:
    """Cached channels to edge nodes, one per address (least recently used closed beyond ``max_channels``)."""

    def __init__(self, security: rpc.SecurityConfig, *, max_message_bytes: int, max_channels: int) -> None:
        self._pool = rpc.ChannelPool(security, max_channels=max_channels, max_message_bytes=max_message_bytes)

    def stub(self, address: str) -> edge_node_pb2_grpc.EdgeNodeStub:
        return edge_node_pb2_grpc.EdgeNodeStub(self._pool.get(address))

    async def reachable(self, address: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        """Whether the node at ``address`` answers now. After an UNAVAILABLE this tells a node that
        said so itself (e.g. about its own cloud) from one that cannot be reached (refused, reset,
        keepalive timeout, hung). A channel that is not READY answers at once; a READY one (its
        state may lag a transport that just failed) is asked for its status."""
        channel = self._pool.peek(address)
        if channel is None or channel.get_state() != grpc.ChannelConnectivity.READY:
            return False
        try:
            await edge_node_pb2_grpc.EdgeNodeStub(channel).GetStatus(edge_node_pb2.GetEdgeStatusRequest(),
                                                                      timeout=timeout_s, wait_for_ready=False)
        except grpc.aio.AioRpcError:
            return False
        return True

    async def close(self) -> None:
        await self._pool.close()


class CoordinatorServicer(pb_grpc.CoordinatorServicer):
    def __init__(self, cluster: Cluster, *, security: rpc.SecurityConfig, heartbeat_interval_s: float = 5.0,
                 request_timeout_s: float = 3600.0, max_tokens_limit: int = 4096,
                 max_message_bytes: int = 4 * 2**20) -> None:
        self.cluster = cluster
        self.heartbeat_interval_s = heartbeat_interval_s
        self.request_timeout_s = request_timeout_s
        self.max_tokens_limit = max_tokens_limit
        self.started = time.monotonic()
        self.edges = EdgeChannels(security, max_message_bytes=max_message_bytes,
                                  max_channels=cluster.limits.max_nodes)

    # Registry -------------------------------------------------------------------------------------------

    async def RegisterNode(self, request: pb.RegisterNodeRequest, context) -> pb.RegisterNodeResponse:
        try:
            info = node_from_proto(request.node)
            lease = self.cluster.register(info, load_from_proto(request.load), lease=request.lease)
        except DomainError as exc:
            log.warning("refused registration of %s: %s", clip(request.node.node_id), exc)
            await context.abort(*status_for(exc))
        log.info("registered %s node %s at %s (%s)", info.role.value, info.node_id, info.address,
                 ", ".join(info.models))
        return pb.RegisterNodeResponse(heartbeat_interval_s=self.heartbeat_interval_s, node_ttl_s=self.cluster.ttl_s,
                                       lease=lease, cloud_addresses=self.cluster.cloud_addresses())

    async def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatResponse:
        try:
            self.cluster.heartbeat(request.node_id, request.lease, load_from_proto(request.load))
        except DomainError as exc:
            await context.abort(*status_for(exc))
        return pb.HeartbeatResponse(heartbeat_interval_s=self.heartbeat_interval_s,
                                    cloud_addresses=self.cluster.cloud_addresses())

    async def DeregisterNode(self, request: pb.DeregisterNodeRequest, context) -> pb.DeregisterNodeResponse:
        try:
            self.cluster.deregister(request.node_id, request.lease)
        except DomainError as exc:
            await context.abort(*status_for(exc))
        log.info("deregistered node %s", clip(request.node_id))
        return pb.DeregisterNodeResponse()

    async def GetClusterStatus(self, request: pb.GetClusterStatusRequest, context) -> pb.ClusterStatus:
        totals = self.cluster.totals
        return pb.ClusterStatus(nodes=[status_to_proto(v) for v in self.cluster.nodes(include_stale=request.include_stale)],
                                active_requests=totals.active_requests, uptime_s=time.monotonic() - self.started,
                                version=__version__, requests_served=totals.requests,
                                cloud_round_trips=totals.round_trips, output_tokens=totals.tokens)

    # Generation -----------------------------------------------------------------------------------------

    def _edge(self, request: generation_pb2.GenerateRequest, tried: list[str]) -> NodeInfo:
        if request.edge_node_id:
            return self.cluster.get_live(request.edge_node_id, Role.EDGE)
        return self.cluster.place(Role.EDGE, request.edge_model or None, exclude=tried,
                                  capability=_needs(request.policy, Role.EDGE))

    def _cloud(self, request: generation_pb2.GenerateRequest) -> NodeInfo | None:
        """The cloud for ``request`` (None for slm-only). With none live, a token-routing request goes
        to the last known one: the edge serves it degraded (SLM-only) and resumes routing when the
        cloud answers again. A split request cannot run without its tail: UNAVAILABLE."""
        if (request.policy or "slm-only") == "slm-only":
            return None
        model, capability = request.cloud_model or None, _needs(request.policy, Role.CLOUD)
        try:
            return self.cluster.place(Role.CLOUD, model, capability=capability)
        except Unavailable:
            cloud = None if request.policy == SPLIT_POLICY else self.cluster.last_known(Role.CLOUD, model)
            if cloud is None:
                raise
            log.warning("no live cloud node: %s goes to %s (last heard of), served degraded until it answers",
                        request.policy, cloud.node_id)
            return cloud

    async def Generate(self, request: generation_pb2.GenerateRequest, context):
        try:
            check_request(prompt=request.prompt, has_messages=bool(request.messages), max_tokens=request.max_tokens,
                          policy=request.policy, policies=[*POLICIES, SPLIT_POLICY],
                          max_tokens_limit=self.max_tokens_limit)
            cloud = self._cloud(request)
            edge = self._edge(request, [])
        except DomainError as exc:
            await context.abort(*status_for(exc))
        forwarded = generation_pb2.GenerateRequest()
        forwarded.CopyFrom(request)
        forwarded.cloud_address = cloud.address if cloud else ""
        tried: list[str] = []
        self.cluster.request_started()
        try:
            while True:
                streamed = False
                try:
                    stream = self.edges.stub(edge.address).Generate(forwarded, timeout=self.request_timeout_s)
                    async for event in stream:
                        if event.HasField("summary"):
                            event.summary.edge_node_id = edge.node_id
                            event.summary.cloud_node_id = cloud.node_id if cloud else ""
                            self.cluster.account(round_trips=event.summary.cloud_round_trips,
                                                 tokens=event.summary.edge_tokens + event.summary.cloud_tokens)
                        streamed = True
                        yield event
                    return
                except grpc.aio.AioRpcError as exc:
                    details = clip(exc.details() or "", 300)
                    log.warning("request on %s failed after %s: %s %s", edge.node_id,
                                "some tokens" if streamed else "no tokens", exc.code().name, details)
                    unreachable = (exc.code() == grpc.StatusCode.UNAVAILABLE
                                   and not await self.edges.reachable(edge.address))
                    if not unreachable:
                        await context.abort(exc.code(), f"edge node {edge.node_id}: {details}")
                    self.cluster.mark_suspect(edge.node_id)
                    log.warning("edge node %s at %s is unreachable: suspect until its next heartbeat",
                                edge.node_id, edge.address)
                    if streamed or request.edge_node_id:
                        await context.abort(exc.code(), f"edge node {edge.node_id} became unreachable: {details}")
                    tried.append(edge.node_id)
                try:
                    edge = self._edge(request, tried)
                except DomainError as exc:
                    await context.abort(*status_for(exc))
                log.info("failing over to edge node %s", edge.node_id)
        finally:
            self.cluster.request_finished()

    async def close(self) -> None:
        await self.edges.close()


def _needs(policy: str, role: Role) -> int | None:
    """The capability a node of ``role`` must have for ``policy`` (None: any node of the role)."""
    if policy != SPLIT_POLICY:
        return None
    return common_pb2.CAPABILITY_SPLIT_HEAD if role == Role.EDGE else common_pb2.CAPABILITY_SPLIT_TAIL
