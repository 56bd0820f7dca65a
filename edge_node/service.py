"""EdgeNode gRPC servicer: translates proto <-> ``EdgeEngine`` requests and events, nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import replace

from edgecloud import __version__, metrics
from edgecloud.coalesce import coalesced
from edgecloud.edge_node.cloud_failover import FailoverCloudLink
from edgecloud.edge_node.engine import (
    EdgeEngine,
    GenerationRequest,
    RequestError,
    RequestTooLarge,
    TextEvent,
    text_events,
)
from edgecloud.edge_node.split_engine import SPLIT_POLICY, SplitEngine, TailLink, TailLinkFactory
from edgecloud.errors import DomainError, PermissionDenied, PreconditionFailed, clip, status_for
from edgecloud.routing.policies import POLICIES
from edgecloud.routing.router import CLOUD, DEGRADED, EDGE, Accounting
from edgecloud.summary import to_proto as summary_to_proto
from edgecloud.v1 import common_pb2, generation_pb2
from edgecloud.v1 import edge_node_pb2 as pb
from edgecloud.v1 import edge_node_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

LinkFactory = Callable[[str, GenerationRequest], FailoverCloudLink]
WIRE_SOURCES = {EDGE: common_pb2.SOURCE_EDGE, CLOUD: common_pb2.SOURCE_CLOUD, DEGRADED: common_pb2.SOURCE_EDGE_DEGRADED}


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


class EdgeNodeServicer(pb_grpc.EdgeNodeServicer):
    def __init__(self, engine: EdgeEngine, *, node_id: str, model_name: str, default_cloud: str | None,
                 link_factory: LinkFactory, default_prefetch: bool = False,
                 allowed_clouds: Callable[[], Collection[str]] = frozenset,
                 refresh_clouds: Callable[[], Awaitable[None]] | None = None,
                 split: SplitEngine | None = None,
                 tail_link_factory: Callable[[str, int, str], TailLink] | None = None,
                 clouds_down: Callable[[], Collection[str]] = tuple) -> None:
        self.engine = engine
        self.clouds_down = clouds_down
        self.split = split
        self.tail_link_factory = tail_link_factory
        self.default_prefetch = default_prefetch
        self.node_id = node_id
        self.model_name = model_name
        self.default_cloud = default_cloud
        self.link_factory = link_factory
        self.allowed_clouds = allowed_clouds  # cloud addresses a request may name (besides the default)
        self.refresh_clouds = refresh_clouds  # asks the coordinator for its clouds now (bounded by the agent)
        self.started = time.monotonic()

    @property
    def capabilities(self) -> list[int]:
        return [common_pb2.CAPABILITY_HYBRID_ROUTING, *([common_pb2.CAPABILITY_SPLIT_HEAD] if self.split else [])]

    @property
    def active_requests(self) -> int:
        return self.engine.active_requests

    async def _cloud_for(self, request: generation_pb2.GenerateRequest, policy: str) -> str:
        """The cloud address this request may use ("" for none needed); typed errors say why not."""
        address = request.cloud_address or self.default_cloud or ""
        if policy == "slm-only":
            return address
        if not address:
            raise PreconditionFailed(f"policy {policy!r} needs a cloud node, and this edge node knows none "
                                     "(start it with --cloud or send the request through the coordinator)")
        if address == self.default_cloud or address in self.allowed_clouds():
            return address
        if self.refresh_clouds is not None:  # a cloud that registered since the last heartbeat?
            await self.refresh_clouds()
        if address not in self.allowed_clouds():
            raise PermissionDenied(f"cloud_address {clip(address)} is not a cloud node this edge knows "
                                   "(its --cloud, --allow-cloud, or one registered with its coordinator)")
        return address

    async def Generate(self, request: generation_pb2.GenerateRequest, context):
        arrived_s = time.perf_counter()
        links: list[FailoverCloudLink | TailLink] = []
        index = 0
        try:
            domain = request_from_proto(request, default_prefetch=self.default_prefetch)
            split = domain.policy == SPLIT_POLICY
            self._split_check(domain) if split else self.engine.check(domain)
            cloud_address = await self._cloud_for(request, domain.policy)

            def make_link(req: GenerationRequest) -> FailoverCloudLink:
                links.append(self.link_factory(cloud_address, req))
                return links[-1]

            with self.engine.admit():
                if split:
                    def make_tail_link(cut: int, codec: str) -> TailLink:
                        links.append(self.tail_link_factory(cloud_address, cut, codec))
                        return links[-1]

                    items = await self._split_items(domain, make_tail_link, cloud_address, arrived_s)
                    policy_name, threshold = SPLIT_POLICY, None
                else:
                    prompt_ids, policy = await asyncio.to_thread(self.engine.prepare, domain)
                    items = self.engine.generate(domain, make_link, policy=policy, prompt_ids=prompt_ids,
                                                 arrived_s=arrived_s)
                    policy_name, threshold = policy.name, policy.threshold
                async with contextlib.aclosing(coalesced(items)) as batches:
                    async for batch in batches:  # what is ready goes in one message
                        tokens = [item for item in batch if not isinstance(item, Accounting)]
                        accounting = next((item for item in batch if isinstance(item, Accounting)), None)
                        events = []
                        for item in tokens:
                            source = WIRE_SOURCES[item.source]
                            events.append(generation_pb2.GenerateEvent(
                                text=item.text, token_id=item.token_id, source=source, checked=item.checked,
                                index=index))
                            index += item.token_id >= 0
                        if events and request.batched_events:
                            events[0].more.extend(events[1:])
                            yield events[0]
                        else:
                            for event in events:
                                yield event
                        if accounting is not None:  # the last item
                            summary = summary_to_proto(accounting, policy=policy_name, threshold=threshold,
                                                       edge_node_id=self.node_id)
                            metrics.record_generation(accounting, policy_name)
                            yield generation_pb2.GenerateEvent(token_id=-1, index=index, summary=summary)
                            break
        except DomainError as exc:
            log.warning("request failed after %d tokens: %s", index, exc)
            await context.abort(*status_for(exc))
        finally:
            for link in links:
                await link.close()

    def _split_check(self, request: GenerationRequest) -> None:
        if self.split is None:
            raise RequestError("this edge node serves no split model (start it with --split-model)")
        self.engine.check(replace(request, policy="slm-only"))  # prompt, max_tokens, stops
        try:
            self.split.check(request.temperature, request.draft_window, request.target_cloud_share)
        except ValueError as exc:
            raise RequestError(str(exc)) from None

    async def _split_items(self, request: GenerationRequest, links: TailLinkFactory, cloud_address: str,
                           arrived_s: float) -> AsyncIterator[TextEvent | Accounting]:
        tokenizer = self.split.tokenizer
        prompt_ids = await asyncio.to_thread(tokenizer.prompt_ids, request.prompt, chat=request.chat,
                                             assistant_prefix=request.assistant_prefix)
        if len(prompt_ids) > self.engine.limits.max_prompt_tokens:
            raise RequestTooLarge(f"prompt is {len(prompt_ids)} tokens; this node takes at most "
                                  f"{self.engine.limits.max_prompt_tokens}")
        try:
            run = self.split.start(prompt_ids, links, max_new_tokens=request.max_tokens, started_s=arrived_s)
        except ValueError as exc:
            raise RequestTooLarge(str(exc)) from None
        return self._then_probe(text_events(run, tokenizer, request.stop), cloud_address)

    async def _then_probe(self, items: AsyncIterator[TextEvent | Accounting],
                          cloud_address: str) -> AsyncIterator[TextEvent | Accounting]:
        """``items``, then a link probe if one is due: after the request, so that the probe's timing does not
        share the cores with this request's own compute."""
        async with contextlib.aclosing(items) as stream:
            async for item in stream:
                yield item
        self.split.probe_if_due(lambda cut, codec: self.tail_link_factory(cloud_address, cut, codec))

    async def GetStatus(self, request: pb.GetEdgeStatusRequest, context) -> pb.EdgeStatus:
        return pb.EdgeStatus(
            node_id=self.node_id, models=[self.model_name], capabilities=self.capabilities,
            load=common_pb2.NodeLoad(active_requests=self.active_requests),
            policies=[*POLICIES, *([SPLIT_POLICY] if self.split else [])],
            max_tokens_limit=self.engine.max_tokens_limit, default_cloud_address=self.default_cloud or "",
            uptime_s=time.monotonic() - self.started, version=__version__,
            split_plan=self.split.chooser.describe() if self.split else "", clouds_down=sorted(self.clouds_down()))
