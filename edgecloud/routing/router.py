"""The hybrid token router: the edge model writes, the policy decides when the cloud checks.

It runs in-process on the edge node (no network hop per token) and depends only on two small
interfaces, so that tests and the discrete-event simulator drive the very same loop:

- an ``EdgeDrafter`` (the SLM with its cache: draft / feed / feed_run / rollback);
- a ``CloudLink`` (one verification round trip: context tokens the cloud has not seen plus a
  window of draft tokens -> how many it accepts and its own next token).

Flagged tokens that follow each other form one window checked in one round trip; the first
unflagged token after a window is dropped, because the cloud's own next token comes back
with the verdict and takes its place.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import QueryPolicy, RoutingPolicy, SlmOnly

EDGE = "edge"
CLOUD = "cloud"
DEGRADED = "degraded"  # an edge token written while the cloud could not be reached (not checked)


class EdgeDrafter(Protocol):
    compute_s: float

    @property
    def num_tokens(self) -> int: ...
    async def draft(self) -> tuple[int, TokenFeatures]: ...
    async def feed(self, token: int) -> None: ...
    async def feed_run(self, token: int, keep: KeepDraft, max_tokens: int) -> list[int]:
        """Feed ``token``, then each next draft while ``keep(draft, features)`` says so, up to ``max_tokens``
        fed in all; the tokens fed (``token`` first). ``keep`` is asked once per draft, and not at all for
        the draft left pending when the run stops for another reason (the limit, or the drafter's own
        bound on a run's time)."""
    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None: ...


KeepDraft = Callable[[int, TokenFeatures], bool]


class FeedsStepwise:
    """``feed_run`` as one ``feed`` after another, for drafters without a faster way."""

    async def feed_run(self: EdgeDrafter, token: int, keep: KeepDraft, max_tokens: int) -> list[int]:
        fed = [token]
        await self.feed(token)
        while len(fed) < max_tokens:
            draft, features = await self.draft()
            if not keep(draft, features):
                break
            await self.feed(draft)
            fed.append(draft)
        return fed


@dataclass(frozen=True)
class LinkVerdict:
    accepted: int
    next_token: int
    cloud_compute_s: float = 0.0
    network_s: float = 0.0
    bytes_up: int = 0  # including background context pushes since the last verdict
    bytes_down: int = 0
    background_calls: int = 0  # context pushes overlapped with edge drafting since the last verdict
    cloud_switches: int = 0  # moves of the session to another cloud node since the last verdict


class CloudDown(Exception):
    """The cloud cannot verify now (dead, hung, unreachable): the router writes the tokens itself.

    ``attempted``: a call was made and failed (False: the link did not try, the cloud is known to be
    down and its retry backoff has not passed).
    """

    def __init__(self, message: str, *, attempted: bool) -> None:
        super().__init__(message)
        self.attempted = attempted


class CloudLink(Protocol):
    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        """Send the unseen ``context`` and check ``draft``; ``CloudDown`` when the cloud cannot be reached."""

    def prefetch(self, unseen: list[int]) -> None:
        """May push ``unseen`` context to the cloud in the background (so a later verify sends less)."""

    async def settle(self) -> LinkVerdict:
        """Wait for background pushes; their cost since the last verdict (called at the end when prefetching)."""


@dataclass(frozen=True)
class TokenEvent:
    token_id: int
    source: str  # EDGE, CLOUD or DEGRADED: who produced the token
    checked: bool  # an edge token the cloud verified


@dataclass
class Accounting:
    """Per-request bookkeeping; ``cloud_share`` counts tokens produced or checked by the cloud.

    Field names are those of the wire's ``GenerationSummary`` (``edgecloud.summary`` converts
    field by field). Clocks start when the request arrives at the edge node.
    """

    edge_tokens: int = 0  # produced by the edge (checked or not)
    cloud_tokens: int = 0  # produced by the cloud
    checked_tokens: int = 0  # edge tokens the cloud verified
    drafted_tokens: int = 0  # including ones the cloud rejected or that were dropped
    cloud_round_trips: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    edge_compute_s: float = 0.0  # SLM forwards, the prompt's prefill included
    cloud_compute_s: float = 0.0  # LLM forwards, background context pushes included
    network_s: float = 0.0
    wall_s: float = 0.0  # arrival to the last token
    time_to_first_token_s: float = 0.0  # arrival to the first token
    finish_reason: str = ""  # "length", "eos" or (set by the caller) "stop"
    prompt_tokens: int = 0
    window_sizes: list[int] = field(default_factory=list)
    cloud_background_calls: int = 0  # context pushes overlapped with drafting (prefetch)
    split_cut: int = 0  # split computing: layers run on the edge
    split_codec: str = ""  # the activation codec at the cut
    split_plan: str = ""  # why the planner chose them
    degraded_tokens: int = 0  # edge tokens written alone while the cloud was unreachable (in edge_tokens too)
    cloud_failures: int = 0  # cloud calls that failed (the cloud died, hung or was unreachable)
    cloud_switches: int = 0  # moves of the cloud session to another cloud node

    @property
    def round_trips(self) -> int:
        return self.cloud_round_trips

    @property
    def total_tokens(self) -> int:
        return self.edge_tokens + self.cloud_tokens

    output_tokens = total_tokens

    @property
    def cloud_share(self) -> float:
        return (self.cloud_tokens + self.checked_tokens) / self.total_tokens if self.total_tokens else 0.0

    @property
    def round_trips_per_token(self) -> float:
        return self.cloud_round_trips / self.total_tokens if self.total_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        """Output tokens over the whole request time (arrival to last token)."""
        return self.total_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first, over the time after the first token (0 for a one-token answer)."""
        decode_s = self.wall_s - self.time_to_first_token_s
        return (self.total_tokens - 1) / decode_s if self.total_tokens > 1 and decode_s > 0 else 0.0


class _EdgeKeeps:
    """A run's ``keep``: a draft stays on the edge while the policy does not flag it and it is not a stop
    token. Remembers each decision (asked once per draft, wherever the drafter runs it)."""

    def __init__(self, policy: RoutingPolicy, stop_ids: frozenset[int]) -> None:
        self.policy = policy
        self.stop_ids = stop_ids
        self.decisions: list[bool] = []  # flagged?

    def __call__(self, draft: int, features: TokenFeatures) -> bool:
        self.decisions.append(self.policy.flags(features))
        return not self.decisions[-1] and draft not in self.stop_ids


DrafterFactory = Callable[[list[int]], Awaitable[EdgeDrafter]]


class HybridRouter:
    """Generates one request's tokens; iterate ``run()`` for the events, then read ``accounting``.

    When the cloud is down (``CloudDown``) the edge writes what the cloud would have: a flagged window is
    kept as drafted, a cloud token is drafted by the SLM (``fallback`` builds a drafter from the tokens so
    far when the policy has none); those tokens are DEGRADED. The next flagged token tries the cloud again.
    """

    def __init__(self, policy: RoutingPolicy, cloud: CloudLink, prompt_ids: list[int], *,
                 drafter: EdgeDrafter | None, max_new_tokens: int, stop_ids: Iterable[int] = (),
                 prefetch: bool = False, started_s: float | None = None,
                 fallback: DrafterFactory | None = None) -> None:
        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if policy.uses_edge_draft and drafter is None:
            raise ValueError(f"policy {policy.name!r} needs an edge drafter")
        self.policy = policy
        self.cloud = cloud
        self.drafter = drafter
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(stop_ids)
        # Keep the cloud's session warm while the edge writes (costs cloud calls even if nothing is flagged).
        self.prefetch = prefetch and policy.name not in ("slm-only", "llm-only", "speculative")
        self.accounting = Accounting(prompt_tokens=len(prompt_ids))
        self._unseen = list(prompt_ids)  # tokens the cloud has not seen yet
        self._tokens = list(prompt_ids)  # the prompt and every output token so far
        self._fallback = fallback
        self._fallback_made: EdgeDrafter | None = None  # what ``fallback`` built, once the cloud was down
        self._emitted = 0
        self._done = False
        self._started_s = started_s  # perf_counter() when the request arrived (default: when run() starts)
        # Feed edge-kept tokens in runs (one drafter call per run). A run drafts ahead of whoever reads the
        # events, so ``until_stop`` turns this off when stop strings may end the request at any token.
        self.runs = True

    async def run(self) -> AsyncIterator[TokenEvent]:
        if self._started_s is None:
            self._started_s = time.perf_counter()
        try:
            if not self.policy.uses_edge_draft:
                async for event in self._cloud_only():
                    yield event
            elif isinstance(self.policy, QueryPolicy):
                async for event in self._query_level():
                    yield event
            else:
                async for event in self._token_level():
                    yield event
        finally:
            if self.prefetch:
                self._account(await self.cloud.settle())
            self.accounting.wall_s = time.perf_counter() - self._started_s
            drafters = {id(d): d for d in (self.drafter, self._fallback_drafter()) if d is not None}
            self.accounting.edge_compute_s = sum(d.compute_s for d in drafters.values())

    def _emit(self, token: int, source: str, checked: bool) -> TokenEvent | None:
        """Account for a final token; None (and done) at a stop token or the length limit."""
        if self._done:
            return None
        if token in self.stop_ids:
            self._done = True
            self.accounting.finish_reason = "eos"
            return None
        acc = self.accounting
        if source == CLOUD:
            acc.cloud_tokens += 1
        else:
            acc.edge_tokens += 1
            acc.checked_tokens += checked
            acc.degraded_tokens += source == DEGRADED
        self._emitted += 1
        self._tokens.append(token)
        if self._emitted == 1:
            acc.time_to_first_token_s = time.perf_counter() - self._started_s
        if self._emitted >= self.max_new_tokens:
            self._done = True
            self.accounting.finish_reason = "length"
        return TokenEvent(token, source, checked)

    async def _round_trip(self, draft: list[int]) -> LinkVerdict:
        try:
            verdict = await self.cloud.verify(self._unseen, draft)
        except CloudDown as exc:
            self.accounting.cloud_failures += exc.attempted
            raise
        acc = self.accounting
        acc.cloud_round_trips += 1
        acc.window_sizes.append(len(draft))
        self._account(verdict)
        self._unseen = [verdict.next_token]
        return verdict

    def _account(self, verdict: LinkVerdict) -> None:
        acc = self.accounting
        acc.cloud_compute_s += verdict.cloud_compute_s
        acc.network_s += verdict.network_s
        acc.bytes_up += verdict.bytes_up
        acc.bytes_down += verdict.bytes_down
        acc.cloud_background_calls += verdict.background_calls
        acc.cloud_switches += verdict.cloud_switches

    async def _cloud_only(self) -> AsyncIterator[TokenEvent]:
        while not self._done:
            try:
                verdict = await self._round_trip([])
            except CloudDown:
                token = await self._edge_instead()
                self._unseen.append(token)
                if (event := self._emit(token, DEGRADED, False)) is not None:
                    yield event
                continue
            if (event := self._emit(verdict.next_token, CLOUD, False)) is not None:
                yield event

    async def _edge_instead(self) -> int:
        """The SLM's token for the next position, in place of the cloud's: its drafter (built by ``fallback``
        the first time) is first fed the tokens written since it last ran."""
        drafter = self._fallback_drafter()
        if drafter is None:
            if self._fallback is None:
                raise CloudDown("the cloud is down and this request has no edge model to fall back on",
                                attempted=False)
            drafter = self._fallback_made = await self._fallback(list(self._tokens))
        if (behind := self._tokens[drafter.num_tokens:]):
            await drafter.rollback(drafter.num_tokens, then_feed=behind)
        token, _ = await drafter.draft()
        self.accounting.drafted_tokens += 1
        return token

    def _fallback_drafter(self) -> EdgeDrafter | None:
        return self.drafter if self.drafter is not None else self._fallback_made

    async def _query_level(self) -> AsyncIterator[TokenEvent]:
        assert isinstance(self.policy, QueryPolicy) and self.drafter is not None
        probe: list[int] = []
        features: list[TokenFeatures] = []
        while len(probe) < min(self.policy.probe_tokens, self.max_new_tokens):
            token, feats = await self.drafter.draft()
            self.accounting.drafted_tokens += 1
            probe.append(token)
            features.append(feats)
            if token in self.stop_ids:
                break
            await self.drafter.feed(token)
        if not self.policy.decide(features):  # the edge keeps the request
            for token in probe:
                if (event := self._emit(token, EDGE, False)) is not None:
                    yield event
            self._unseen.extend(probe)
            self.policy = SlmOnly(seed=self.policy.seed)
            async for event in self._token_level():
                yield event
            return
        try:
            verdict = await self._round_trip(probe)
        except CloudDown:  # the edge keeps its probe, and writes the cloud's part too
            self._unseen.extend(probe)
            for token in probe:
                if (event := self._emit(token, DEGRADED, False)) is not None:
                    yield event
            async for event in self._cloud_only():
                yield event
            return
        for token in probe[:verdict.accepted]:
            if (event := self._emit(token, EDGE, True)) is not None:
                yield event
        if (event := self._emit(verdict.next_token, CLOUD, False)) is not None:
            yield event
        async for event in self._cloud_only():
            yield event

    async def _token_level(self) -> AsyncIterator[TokenEvent]:
        drafter = self.drafter
        assert drafter is not None
        acc = self.accounting
        while not self._done:
            token, feats = await drafter.draft()
            acc.drafted_tokens += 1
            flagged = self.policy.flags(feats)
            while not flagged:  # a run of edge tokens, fed in one call (batched with other requests')
                if (event := self._emit(token, EDGE, False)) is None:
                    break
                yield event
                keeps = _EdgeKeeps(self.policy, self.stop_ids)
                limit = self.max_new_tokens - self._emitted + 1 if self.runs else 1
                run = await drafter.feed_run(token, keeps, limit)
                decisions = keeps.decisions
                acc.drafted_tokens += len(decisions)
                self._unseen.extend(run)
                if self.prefetch:
                    self.cloud.prefetch(self._unseen)
                for fed in run[1:]:
                    if (event := self._emit(fed, EDGE, False)) is not None:
                        yield event
                if self._done:
                    break
                token, feats = await drafter.draft()  # already chosen: the run's last feed computed it
                if len(decisions) == len(run):  # the run ended at this draft: it was flagged, or a stop token
                    flagged = decisions[-1]
                else:  # the run ended for its length or time: this draft is not decided yet
                    acc.drafted_tokens += 1
                    flagged = self.policy.flags(feats)
            if self._done:
                continue
            base = drafter.num_tokens
            window = [token]
            budget = self.max_new_tokens - self._emitted
            while len(window) < min(self.policy.max_window, budget) and token not in self.stop_ids:
                await drafter.feed(token)
                token, feats = await drafter.draft()
                acc.drafted_tokens += 1
                if not self.policy.flags(feats):
                    break  # dropped: the cloud's next token takes this place
                window.append(token)
            try:
                verdict = await self._round_trip(window)
            except CloudDown:  # the edge keeps the window as drafted
                fed = drafter.num_tokens - base
                self._unseen.extend(window)
                for kept in window:
                    if (event := self._emit(kept, DEGRADED, False)) is not None:
                        yield event
                if not self._done and fed < len(window):
                    await drafter.feed(window[-1])
                continue
            self.policy.after_verification(len(window), verdict.accepted)
            for accepted in window[:verdict.accepted]:
                if (event := self._emit(accepted, EDGE, True)) is not None:
                    yield event
            if (event := self._emit(verdict.next_token, CLOUD, False)) is not None:
                yield event
            if not self._done:
                fed = drafter.num_tokens - base  # window tokens already in the SLM's cache
                keep = min(fed, verdict.accepted)
                await drafter.rollback(base + keep, then_feed=[*window[keep:verdict.accepted], verdict.next_token])


class TextDecoder(Protocol):
    def push(self, token_id: int) -> str: ...


async def until_stop(router: HybridRouter, decoder: TextDecoder,
                     stops: Sequence[str]) -> AsyncIterator[tuple[TokenEvent, str]]:
    """The router's events with the text each completes, ending after the one that completes a stop string.

    The router's generator is closed on every way out, so it closes its books (wall time, edge compute);
    consume this with ``contextlib.aclosing`` for the same guarantee when the consumer stops early.
    """
    text = ""
    if any(stops):
        router.runs = False  # nothing is drafted, fed or counted past the token that completes a stop
    events = router.run()
    try:
        async for event in events:
            piece = decoder.push(event.token_id)
            text += piece
            yield event, piece
            if any(stop and stop in text for stop in stops):
                router.accounting.finish_reason = "stop"
                return
    finally:
        await events.aclose()
