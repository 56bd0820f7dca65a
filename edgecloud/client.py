"""Client SDK: generate text through a coordinator (or straight from an edge node).

    from edgecloud import Client

    with Client("127.0.0.1:50051") as client:
        for event in client.generate("def fib(n):", max_tokens=64, policy="entropy", target_cloud_share=0.05):
            print(event.text, end="")
        print(client.last_summary)

``AsyncClient`` is the same API for asyncio code (``async for event in client.generate(...)``).
Every call has a deadline; failures raise ``EdgecloudError`` carrying the gRPC status code.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Literal

import grpc

from edgecloud import rpc
from edgecloud.loop_thread import LoopThread
from edgecloud.summary import Summary
from edgecloud.summary import from_proto as summary_from_proto
from edgecloud.v1 import common_pb2, generation_pb2
from edgecloud.v1 import coordinator_pb2 as coord_pb
from edgecloud.v1 import coordinator_pb2_grpc as coord_grpc
from edgecloud.v1 import edge_node_pb2 as edge_pb
from edgecloud.v1 import edge_node_pb2_grpc as edge_grpc

# "degraded": an edge token written while the cloud could not be reached (the request finished SLM-only there).
SOURCES = {common_pb2.SOURCE_EDGE: "edge", common_pb2.SOURCE_CLOUD: "cloud",
           common_pb2.SOURCE_EDGE_DEGRADED: "degraded"}
Target = Literal["auto", "coordinator", "edge"]


class EdgecloudError(RuntimeError):
    """A failed call: ``code`` is the gRPC status (INVALID_ARGUMENT, UNAVAILABLE, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class TokenEvent:
    """One generated token: its text, id and who produced it (``"edge"``, ``"cloud"``, or ``"degraded"``: the
    edge alone while the cloud could not be reached)."""

    text: str
    token_id: int  # -1: no token, only text held back for an incomplete character
    source: str
    checked: bool  # an edge token that the cloud verified
    index: int


@dataclass(frozen=True)
class NodeSummary:
    node_id: str
    role: str
    address: str
    models: tuple[str, ...]
    live: bool
    active_requests: int
    suspect: bool = False  # a forwarded request found it unreachable; cleared by its next heartbeat


@dataclass(frozen=True)
class EdgeDetails:
    """What an edge node says of itself (``AsyncClient.edge_status``, pointed at the edge)."""

    node_id: str
    models: tuple[str, ...]
    policies: tuple[str, ...]
    default_cloud: str
    active_requests: int
    clouds_down: tuple[str, ...]  # clouds it serves degraded (SLM-only) until a retry succeeds
    split_plan: str  # the split planner's latest decision and why ("" without a split model)
    uptime_s: float
    version: str


def build_request(prompt: str, *, max_tokens: int, policy: str, threshold: float | None,
                  target_cloud_share: float | None, temperature: float, seed: int | None, chat: bool,
                  assistant_prefix: str, stop: tuple[str, ...], session_id: str,
                  draft_window: int, cloud_prefetch: bool | None) -> generation_pb2.GenerateRequest:
    request = generation_pb2.GenerateRequest(prompt=prompt, max_tokens=max_tokens, policy=policy,
                                             temperature=temperature, chat=chat, assistant_prefix=assistant_prefix,
                                             stop=list(stop), session_id=session_id, draft_window=draft_window,
                                             batched_events=True)
    if threshold is not None:
        request.threshold = threshold
    if target_cloud_share is not None:
        request.target_cloud_share = target_cloud_share
    if seed is not None:
        request.seed = seed
    if cloud_prefetch is not None:
        request.cloud_prefetch = cloud_prefetch
    return request


class AsyncClient:
    """asyncio client of a coordinator (``target="coordinator"``), an edge node, or either (``"auto"``)."""

    def __init__(self, address: str, *, security: rpc.SecurityConfig | None = None, timeout_s: float = 600.0,
                 target: Target = "auto") -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.target = target
        self._channel = rpc.create_channel(address, security)
        self._coordinator = coord_grpc.CoordinatorStub(self._channel)
        self._edge = edge_grpc.EdgeNodeStub(self._channel)
        self.last_summary: Summary | None = None

    async def generate(self, prompt: str, *, max_tokens: int = 256, policy: str = "slm-only",
                       threshold: float | None = None, target_cloud_share: float | None = None,
                       temperature: float = 0.0, seed: int | None = None, chat: bool = True,
                       assistant_prefix: str = "", stop: tuple[str, ...] = (), session_id: str = "",
                       draft_window: int = 0, cloud_prefetch: bool | None = None,
                       timeout_s: float | None = None) -> AsyncIterator[TokenEvent | Summary]:
        """Stream ``TokenEvent``s, then one ``Summary`` (also kept as ``last_summary``)."""
        request = build_request(prompt, max_tokens=max_tokens, policy=policy, threshold=threshold,
                                target_cloud_share=target_cloud_share, temperature=temperature, seed=seed,
                                chat=chat, assistant_prefix=assistant_prefix, stop=tuple(stop),
                                session_id=session_id, draft_window=draft_window, cloud_prefetch=cloud_prefetch)
        self.last_summary = None
        try:
            async for event in self._stream(request, timeout_s or self.timeout_s):
                if event.HasField("summary"):
                    self.last_summary = summary_from_proto(event.summary)
                    yield self.last_summary
                    return
                for token in (event, *event.more):
                    if token.HasField("summary") or (token is not event and token.more):
                        raise EdgecloudError(grpc.StatusCode.INTERNAL, "malformed stream from the server: a "
                                             "token sent with another carries a summary or more tokens")
                    yield TokenEvent(token.text, token.token_id, SOURCES.get(token.source, "edge"), token.checked,
                                     token.index)
        except grpc.aio.AioRpcError as exc:
            raise EdgecloudError(exc.code(), exc.details() or "") from exc

    async def _stream(self, request: generation_pb2.GenerateRequest, timeout_s: float):
        if self.target == "edge":
            async for event in self._edge.Generate(request, timeout=timeout_s):
                yield event
            return
        call = self._coordinator.Generate(request, timeout=timeout_s)
        try:
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNIMPLEMENTED or self.target == "coordinator":
                raise
            self.target = "edge"  # the address is an edge node, not a coordinator
            async for event in self._edge.Generate(request, timeout=timeout_s):
                yield event
            return
        self.target = "coordinator"
        while first is not grpc.aio.EOF:
            yield first
            first = await call.read()

    async def text(self, prompt: str, **kwargs) -> str:
        """The whole generated text of one request."""
        return "".join([e.text async for e in self.generate(prompt, **kwargs) if isinstance(e, TokenEvent)])

    async def status(self, *, include_stale: bool = False) -> list[NodeSummary]:
        """Nodes of the cluster (from a coordinator), or the node itself (from an edge node)."""
        try:
            if self.target != "edge":
                try:
                    reply = await self._coordinator.GetClusterStatus(
                        coord_pb.GetClusterStatusRequest(include_stale=include_stale), timeout=10.0)
                    return [NodeSummary(n.info.node_id, _role(n.info.role), n.info.address, tuple(n.info.models),
                                        n.live, n.load.active_requests, n.suspect) for n in reply.nodes]
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNIMPLEMENTED or self.target == "coordinator":
                        raise
            edge = await self._edge.GetStatus(edge_pb.GetEdgeStatusRequest(), timeout=10.0)
            return [NodeSummary(edge.node_id, "edge", self.address, tuple(edge.models), True,
                                edge.load.active_requests)]
        except grpc.aio.AioRpcError as exc:
            raise EdgecloudError(exc.code(), exc.details() or "") from exc

    async def edge_status(self) -> EdgeDetails:
        """The edge node's own status; this client must point at an edge node."""
        try:
            edge = await self._edge.GetStatus(edge_pb.GetEdgeStatusRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as exc:
            raise EdgecloudError(exc.code(), exc.details() or "") from exc
        return EdgeDetails(edge.node_id, tuple(edge.models), tuple(edge.policies), edge.default_cloud_address,
                           edge.load.active_requests, tuple(edge.clouds_down), edge.split_plan, edge.uptime_s,
                           edge.version)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def _role(role: int) -> str:
    return {common_pb2.NODE_ROLE_EDGE: "edge", common_pb2.NODE_ROLE_CLOUD: "cloud"}.get(role, "unknown")


class Client:
    """Blocking client: the ``AsyncClient`` API driven on a shared background event loop."""

    def __init__(self, address: str, **kwargs) -> None:
        self._loop = LoopThread.shared()
        self._async = self._loop.run(_make_async(address, kwargs), timeout_s=None)
        self._closed = False

    @property
    def last_summary(self) -> Summary | None:
        return self._async.last_summary

    def generate(self, prompt: str, **kwargs) -> Iterator[TokenEvent | Summary]:
        yield from self._loop.iterate(self._async.generate(prompt, **kwargs))

    def text(self, prompt: str, **kwargs) -> str:
        return "".join(e.text for e in self.generate(prompt, **kwargs) if isinstance(e, TokenEvent))

    def status(self, **kwargs) -> list[NodeSummary]:
        return self._loop.run(self._async.status(**kwargs), timeout_s=None)

    def edge_status(self) -> EdgeDetails:
        return self._loop.run(self._async.edge_status(), timeout_s=None)

    def wait_for_nodes(self, count: int, timeout_s: float = 60.0, poll_s: float = 0.1) -> list[NodeSummary]:
        """Wait until at least ``count`` nodes are live (e.g. a cluster just started); TimeoutError if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            live = [n for n in self.status() if n.live]
            if len(live) >= count:
                return live
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(live)} of {count} nodes registered with {self._async.address} "
                                   f"within {timeout_s:g} s")
            time.sleep(poll_s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._loop.run(self._async.close(), timeout_s=None)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def _make_async(address: str, kwargs: dict) -> AsyncClient:
    return AsyncClient(address, **kwargs)  # a grpc.aio channel must be created inside the loop
