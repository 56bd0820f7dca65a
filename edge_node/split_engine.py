"""Split computing on the edge: the head of a model here, its tail on a cloud node.

One request = the prompt's hidden states at the cut, streamed to the cloud in chunks, then one
position per generated token: the edge runs the head on the new token, the cloud's tail session
answers the next token (greedy). The edge keeps the hidden states it sent, so that a cloud that
lost the session (evicted, restarted) gets them again from position 0 and the request goes on.
``SplitRun`` has the router's shape (``run()``, ``accounting``, ``runs``), so the edge's stop and
text handling serve both.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from edgecloud.errors import DomainError, Unavailable
from edgecloud.models.llama import LlamaModel
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.router import CLOUD, EDGE, Accounting, TokenEvent
from edgecloud.split.llm import SPLIT_POLICY, LayerTimes, SplitHead, SplitTail, decode_profiles
from edgecloud.split.planner import CutProfile, Decision, LinkEstimate, LinkEstimator, SplitPlanner

__all__ = ["SPLIT_POLICY", "CutChooser", "SplitEngine", "SplitRun", "TailGone", "TailLink", "TailReply"]


class TailGone(DomainError):
    """The cloud has no (or another) state for this tail session: send it again from position 0."""


class TailAnswerError(Unavailable):
    """The cloud's answer makes no sense (a token outside the vocabulary)."""


@dataclass(frozen=True)
class TailReply:
    next_token: int
    compute_s: float
    bytes_up: int
    bytes_down: int
    network_s: float
    session_tokens: int


class TailLink(Protocol):
    """The cloud's tail, as the split engine sees it (gRPC in the daemon)."""

    async def run(self, hidden: torch.Tensor, past_tokens: int, *, session_id: str, end: bool = False) -> TailReply:
        """Run the tail on ``hidden`` (1, T, C) at positions ``past_tokens...``; ``TailGone`` if out of step."""
        ...

    async def close(self) -> None: ...


class SplitRun:
    """One greedy generation through a split model."""

    def __init__(self, head: SplitHead, link: TailLink | None, prompt_ids: Sequence[int], *, max_new_tokens: int,
                 stop_ids: Sequence[int] = (), chunk_tokens: int = 128, started_s: float | None = None,
                 max_replays: int = 3, on_reply: Callable[[TailReply, int], None] | None = None) -> None:
        """``link`` None: the head holds every layer and the LM head runs here too (nothing crosses)."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if link is None and head.cut != head.model.config.num_layers:
            raise ValueError(f"a run without a cloud link needs every layer on the edge, not {head.cut}")
        self.head = head
        self.link = link
        self.on_reply = on_reply
        self._local_tail = SplitTail(head.model, head.cut) if link is None else None
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(stop_ids)
        self.chunk_tokens = chunk_tokens
        self.max_replays = max_replays
        self.session_id = uuid.uuid4().hex
        self.accounting = Accounting(prompt_tokens=len(self.prompt_ids))
        self.started_s = time.perf_counter() if started_s is None else started_s
        self.runs = True  # the stop handling may switch lookahead off; a split run has none
        self.replays = 0
        self._cache = head.new_cache()
        self._sent: list[torch.Tensor] = []  # hidden states the tail session holds, in order: (1, T, C) each
        self._positions = 0

    async def run(self) -> AsyncIterator[TokenEvent]:
        acc = self.accounting
        try:
            token = await self._prefill()
            source = EDGE if self.link is None else CLOUD
            for i in range(self.max_new_tokens):
                if source == CLOUD:
                    acc.cloud_tokens += 1
                else:
                    acc.edge_tokens += 1
                if i == 0:
                    acc.time_to_first_token_s = time.perf_counter() - self.started_s
                yield TokenEvent(token, source, False)
                if token in self.stop_ids:
                    acc.finish_reason = "eos"
                    return
                if i + 1 == self.max_new_tokens:
                    break
                token = await self._step([token])
            acc.finish_reason = "length"
        finally:
            acc.wall_s = time.perf_counter() - self.started_s

    async def close(self) -> None:
        """End the cloud's tail session (best effort) and the link."""
        if self.link is not None:
            await self.link.close()

    async def _prefill(self) -> int:
        reply = None
        for start in range(0, len(self.prompt_ids), self.chunk_tokens):
            reply = await self._send(self.prompt_ids[start:start + self.chunk_tokens])
        return reply.next_token

    async def _step(self, ids: list[int]) -> int:
        return (await self._send(ids)).next_token

    def _checked(self, reply: TailReply) -> TailReply:
        vocab = self.head.model.config.vocab_size
        if not 0 <= reply.next_token < vocab:
            raise TailAnswerError(f"the cloud answered token {reply.next_token}, outside the vocabulary [0, {vocab})")
        return reply

    async def _send(self, ids: list[int]) -> TailReply:
        started = time.perf_counter()
        if self._local_tail is not None:
            token = await asyncio.to_thread(self._local_step, ids)
            self.accounting.edge_compute_s += time.perf_counter() - started
            self._positions += len(ids)
            return TailReply(token, 0.0, 0, 0, 0.0, self._positions)
        hidden = await asyncio.to_thread(self.head.forward, torch.tensor([ids]), self._cache)  # (1, T, C)
        self.accounting.edge_compute_s += time.perf_counter() - started
        try:
            reply = await self._call(hidden, self._positions)
        except TailGone:
            reply = await self._replay(hidden)
        self._sent.append(hidden)
        self._positions += hidden.shape[1]
        if reply.session_tokens != self._positions:
            raise TailGone(f"the cloud's tail session holds {reply.session_tokens} positions, "
                           f"the edge sent {self._positions}")
        return reply

    def _local_step(self, ids: list[int]) -> int:
        hidden = self.head.forward(torch.tensor([ids]), self._cache)  # (1, T, C)
        return int(self._local_tail.forward(hidden, None, last_n=1)[0, -1].argmax())

    async def _replay(self, hidden: torch.Tensor) -> TailReply:
        """Everything sent so far and ``hidden`` again, from position 0, in chunks."""
        while True:
            self.replays += 1
            if self.replays > self.max_replays:
                raise TailGone(f"the cloud lost the tail session {self.max_replays} times; giving up")
            every = torch.cat([*self._sent, hidden], 1)  # (1, positions + T, C)
            try:
                reply = None
                for start in range(0, every.shape[1], self.chunk_tokens):
                    reply = await self._call(every[:, start:start + self.chunk_tokens], start)
                return reply
            except TailGone:
                continue

    async def _call(self, hidden: torch.Tensor, past: int) -> TailReply:
        reply = self._checked(await self.link.run(hidden, past, session_id=self.session_id))
        acc = self.accounting
        acc.cloud_round_trips += 1
        acc.bytes_up += reply.bytes_up
        acc.bytes_down += reply.bytes_down
        acc.cloud_compute_s += reply.compute_s
        acc.network_s += reply.network_s
        if self.on_reply is not None:
            self.on_reply(reply, hidden.shape[1])
        return reply


INITIAL_LINK = LinkEstimate(100.0, 10.0)  # until the first transfers are measured


class CutChooser:
    """Chooses each split request's cut and codec: the planner over per-token decode profiles, fed by
    the live link estimate and the cloud's measured per-layer compute.

    ``cuts``/``codecs`` with one entry each fix the choice. The cloud's layer time starts at the edge's
    divided by ``cloud_speedup`` and then is the least of the last ``samples`` one-position tail calls'
    reported compute per layer (a busy moment of a shared cloud inflates single calls, never shrinks them).
    """

    def __init__(self, model: LlamaModel, cuts: Sequence[int], codecs: Sequence[str], *,
                 bytes_per_step: dict[str, int], edge_times: LayerTimes, cloud_speedup: float = 1.0,
                 link: LinkEstimate | None = None, margin: float = 0.15, samples: int = 8) -> None:
        if not cuts or not codecs:
            raise ValueError("a split model needs at least one cut and one codec")
        if cloud_speedup <= 0:
            raise ValueError(f"cloud_speedup must be > 0, got {cloud_speedup}")
        self.model = model
        self.num_layers = model.config.num_layers
        self.cuts = tuple(cuts)
        self.codecs = tuple(codecs)
        self.bytes_per_step = bytes_per_step
        self.edge_times = edge_times
        self.cloud_times = LayerTimes(edge_times.layer_s / cloud_speedup, edge_times.head_s / cloud_speedup)
        self.estimator = LinkEstimator(link or INITIAL_LINK)
        self.planner = SplitPlanner(self._profiles(), codecs=self.codecs, margin=margin)
        self._cloud_layer_s: deque[float] = deque(maxlen=samples)
        self.last: Decision | None = None
        self.last_observed_s = -math.inf  # time.monotonic() of the latest transfer measured

    @property
    def fixed(self) -> bool:
        return len(self.cuts) == 1 and len(self.codecs) == 1

    def _profiles(self) -> list[CutProfile]:
        return decode_profiles(self.num_layers, self.cuts, self.edge_times, self.cloud_times, self.bytes_per_step)

    def choose(self) -> Decision:
        self.planner.profiles = tuple(self._profiles())
        self.last = self.planner.update(self.estimator.estimate)
        return self.last

    @property
    def cloud_samples(self) -> int:
        return len(self._cloud_layer_s)

    def observe(self, reply: TailReply, cut: int, positions: int = 1) -> None:
        """A tail call's figures: link time for the estimator; a one-position call's compute per tail layer
        for the cloud's decode profile (a prefill chunk's is not a decode step's)."""
        self.estimator.observe(reply.bytes_up + reply.bytes_down, reply.network_s)
        self.last_observed_s = time.monotonic()
        layers = self.num_layers - cut
        if layers and positions == 1 and reply.compute_s > 0:
            per_layer = max(0.0, reply.compute_s - self.cloud_times.head_s) / layers
            if per_layer > 0:
                self._cloud_layer_s.append(per_layer)
                self.cloud_times = LayerTimes(min(self._cloud_layer_s), self.cloud_times.head_s)

    def probe_due(self, interval_s: float) -> bool:
        """No transfer measured for ``interval_s`` (a plan that keeps everything on the edge measures none)."""
        return not self.fixed and time.monotonic() - self.last_observed_s > interval_s

    def describe(self) -> str:
        if self.last is None:
            return "no split request yet"
        link = self.estimator.estimate
        cloud = f"{self.cloud_times.layer_s * 1e3:.2f}" + ("" if self.cloud_samples else " (assumed)")
        return (f"{self.last.reason} [link estimate {link.bandwidth_mbps:.3g} Mbit/s, RTT {link.rtt_ms:.3g} ms; "
                f"ms per layer: edge {self.edge_times.layer_s * 1e3:.2f}, cloud {cloud}]")


log = logging.getLogger(__name__)
TailLinkFactory = Callable[[int, str], TailLink]  # (start layer, codec) -> a link to the cloud's tail


class SplitEngine:
    """The split model with its tokenizer: serves ``policy="split"`` requests of an edge node."""

    def __init__(self, model: LlamaModel, tokenizer: Tokenizer, chooser: CutChooser, *, chunk_tokens: int = 128,
                 probe_interval_s: float = 10.0, probe_positions: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.chooser = chooser
        self.chunk_tokens = chunk_tokens
        self.probe_interval_s = probe_interval_s
        self.probe_positions = probe_positions
        self._probe: asyncio.Task | None = None

    def probe_if_due(self, links: TailLinkFactory) -> None:
        """While no request measures the link and the cloud (all on the edge), measure both in the background
        now and then (``_measure``), so that the plan can come back when the link recovers."""
        if not self.chooser.probe_due(self.probe_interval_s) or (self._probe is not None and not self._probe.done()):
            return
        self._probe = asyncio.get_running_loop().create_task(self._measure(links))

    async def _measure(self, links: TailLinkFactory) -> None:
        """One position at the first candidate cut (the cloud's compute per layer), then ``probe_positions`` at
        the last layer (nearly no compute: the link's bandwidth)."""
        layers = self.model.config.num_layers
        first = min(self.chooser.cuts)
        calls = [(first, 1, False), (first, 1, True), (first, 1, True),  # the first only warms the cloud up
                 (layers, self.probe_positions, True)]
        for cut, positions, observed in calls if first < layers else calls[-1:]:
            hidden = torch.zeros(1, positions, self.model.config.hidden_size, dtype=self.model.dtype)
            link = links(cut, self.chooser.codecs[0])
            try:
                reply = await link.run(hidden, 0, session_id="")
                if observed:
                    self.chooser.observe(reply, cut, positions)
            except DomainError as exc:
                log.info("link probe failed: %s", exc)
                return
            finally:
                await link.close()

    def check(self, temperature: float, draft_window: int, target_cloud_share: float | None) -> None:
        """What a split request cannot ask for (``ValueError`` says what)."""
        if temperature != 0:
            raise ValueError("split generation is greedy: temperature must be 0")
        if draft_window or target_cloud_share is not None:
            raise ValueError("draft_window and target_cloud_share are routing options; split generation has none")

    def start(self, prompt_ids: Sequence[int], links: TailLinkFactory, *, max_new_tokens: int,
              started_s: float | None = None) -> SplitRun:
        """A run at the cut and codec the planner chooses now; its accounting names them and why."""
        context = self.model.config.max_position_embeddings
        if len(prompt_ids) + max_new_tokens > context:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens + max_tokens={max_new_tokens} exceed the "
                             f"model's context of {context}")
        plan = self.chooser.choose().plan
        local = plan.cut == self.model.config.num_layers
        run = SplitRun(SplitHead(self.model, plan.cut), None if local else links(plan.cut, plan.codec), prompt_ids,
                       max_new_tokens=max_new_tokens, stop_ids=self.tokenizer.eos_token_ids,
                       chunk_tokens=self.chunk_tokens, started_s=started_s,
                       on_reply=lambda reply, positions: self.chooser.observe(reply, plan.cut, positions))
        acc = run.accounting
        acc.split_cut, acc.split_codec = plan.cut, plan.codec
        acc.split_plan = "fixed by the node's --split-cuts and --split-codecs" if self.chooser.fixed \
            else self.chooser.describe()
        return run
