"""Drive the real ``HybridRouter`` over recorded traces and keep its round-trip pattern.

The router and the policy are the coordinator's own code; only its two transports are
replaced: ``ReplayDrafter`` serves the recorded SLM tokens and features, ``ReplayCloud``
verifies from the recorded LLM tokens. What the router did — edge forwards between round
trips, each round trip's context, window and accepted count — is kept as a
``RoundTripPattern``, which the discrete-event model turns into timed events. Patterns are
built once per (trace, policy, threshold) and reused by every request that samples the trace.

Positions follow the recorded reference continuation: after an edge token that differs from
the LLM's, the next position's features are still the recorded ones (the usual replay
approximation; the real SLM would see its own token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import PolicyError, RoutingPolicy, make_policy
from edgecloud.routing.router import FeedsStepwise, HybridRouter, LinkVerdict
from edgecloud.simulator.des.traces import TokenTrace
from edgecloud.simulator.errors import ConfigError

STOP = -1  # the token both sides give past the end of a trace
_END_FEATURES = (0.0, 1.0, 1.0)  # a sure stop: no policy that looks at uncertainty flags it


@dataclass(frozen=True)
class WireProfile:
    """Bytes of one verification round trip: a fixed overhead per message plus ``bytes_per_token``
    per token id (a varint of an id below 2^21 takes 3 bytes). Defaults: the protobuf sizes the
    real edge reported in ``benchmarks/results/hybrid_latency.json`` (llm-only: 48.8 B up per round
    trip with one context token, 53.0 B down) plus 14 B of gRPC/HTTP-2 DATA framing (5 + 9);
    HTTP-2 HEADERS frames are not counted."""

    up_overhead_bytes: int = 60
    down_overhead_bytes: int = 67
    bytes_per_token: int = 3

    def __post_init__(self) -> None:
        for name in ("up_overhead_bytes", "down_overhead_bytes", "bytes_per_token"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(("fleet", "wire", name), f"must be an integer >= 0, got {value!r}")

    def up_bytes(self, context_tokens: int, draft_tokens: int) -> int:
        return self.up_overhead_bytes + self.bytes_per_token * (context_tokens + draft_tokens)

    def down_bytes(self) -> int:
        return self.down_overhead_bytes


@dataclass(frozen=True)
class RoundTripPattern:
    """What the router did for one request.

    ``bursts[k]`` edge forwards run before round trip ``k`` (the first includes the prompt's
    prefill), ``bursts[-1]`` after the last one (so ``len(bursts) == round_trips + 1``);
    ``burst_tokens[k]`` tokens went through them. Per round trip: tokens the cloud had not seen
    (``context``), the draft ``windows`` and how many were ``accepted``.
    """

    prompt_tokens: int
    uses_edge: bool
    bursts: tuple[int, ...]
    burst_tokens: tuple[int, ...]
    context: tuple[int, ...]
    windows: tuple[int, ...]
    accepted: tuple[int, ...]
    edge_tokens: int
    cloud_tokens: int
    checked_tokens: int
    drafted_tokens: int
    finish_reason: str

    @property
    def round_trips(self) -> int:
        return len(self.windows)

    @property
    def total_tokens(self) -> int:
        return self.edge_tokens + self.cloud_tokens

    @property
    def edge_forwards(self) -> int:
        return sum(self.bursts)


class _Log:
    """What the replayed transports saw, in order."""

    def __init__(self) -> None:
        self.bursts: list[int] = [0]
        self.burst_tokens: list[int] = [0]
        self.context: list[int] = []
        self.windows: list[int] = []
        self.accepted: list[int] = []

    def forward(self, tokens: int = 1) -> None:
        self.bursts[-1] += 1
        self.burst_tokens[-1] += tokens

    def round_trip(self, context: int, window: int, accepted: int) -> None:
        self.context.append(context)
        self.windows.append(window)
        self.accepted.append(accepted)
        self.bursts.append(0)
        self.burst_tokens.append(0)


class ReplayDrafter(FeedsStepwise):
    """An ``EdgeDrafter`` that serves a trace's SLM tokens and features; feeds count as forwards."""

    def __init__(self, trace: TokenTrace, log: _Log) -> None:
        self.trace = trace
        self.log = log
        self.compute_s = 0.0
        self._generated = 0  # generated tokens in the (virtual) cache
        log.forward(trace.prompt_tokens)  # the prompt's prefill

    @property
    def num_tokens(self) -> int:
        return self.trace.prompt_tokens + self._generated

    async def draft(self) -> tuple[int, TokenFeatures]:
        i = self._generated
        t = self.trace
        if i >= len(t):
            return STOP, TokenFeatures(*_END_FEATURES, position=i)
        return t.slm_tokens[i], TokenFeatures(t.entropy[i], t.max_prob[i], t.margin[i], position=i)

    async def feed(self, token: int) -> None:
        self._generated += 1
        self.log.forward()

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        self._generated = num_tokens - self.trace.prompt_tokens + len(then_feed)
        if then_feed:
            self.log.forward(len(then_feed))


class ReplayCloud:
    """A ``CloudLink`` that accepts the longest draft prefix equal to the recorded LLM tokens."""

    def __init__(self, trace: TokenTrace, log: _Log) -> None:
        self.trace = trace
        self.log = log
        self._seen = 0  # generated tokens the cloud's session holds
        self._opened = False

    def _llm(self, i: int) -> int:
        return self.trace.llm_tokens[i] if i < len(self.trace) else STOP

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        self._seen += len(context) - (0 if self._opened else self.trace.prompt_tokens)
        self._opened = True
        accepted = 0
        while accepted < len(draft) and draft[accepted] == self._llm(self._seen + accepted):
            accepted += 1
        next_token = self._llm(self._seen + accepted)
        self._seen += accepted
        self.log.round_trip(len(context), len(draft), accepted)
        return LinkVerdict(accepted, next_token)


def policy_for(name: str, threshold: float | None, *, seed: int) -> RoutingPolicy:
    """A fresh policy; the ones DES cannot replay are refused with the reason."""
    if name == "reward":
        raise ConfigError("policy", "policy 'reward' needs the SLM's hidden states, which DES traces do not carry")
    try:
        return make_policy(name, threshold, seed=seed)
    except PolicyError as exc:
        raise ConfigError("policy", str(exc)) from None


def calibrate_threshold(name: str, traces: Sequence[TokenTrace], share: float) -> float:
    """The policy's threshold that flags about ``share`` of the traces' recorded positions."""
    features = [TokenFeatures(t.entropy[i], t.max_prob[i], t.margin[i], i) for t in traces for i in range(len(t))]
    try:
        return policy_for(name, None, seed=0).calibrate(features, share)
    except PolicyError as exc:
        raise ConfigError("cloud_share", f"cannot calibrate policy {name!r} to a cloud share: {exc}") from None


async def _replay(trace: TokenTrace, policy: RoutingPolicy, max_new_tokens: int) -> RoundTripPattern:
    log = _Log()
    drafter = ReplayDrafter(trace, log) if policy.uses_edge_draft else None
    router = HybridRouter(policy, ReplayCloud(trace, log), [0] * trace.prompt_tokens, drafter=drafter,
                          max_new_tokens=max_new_tokens, stop_ids=(STOP,))
    async for _ in router.run():
        pass
    acc = router.accounting
    return RoundTripPattern(trace.prompt_tokens, drafter is not None, tuple(log.bursts), tuple(log.burst_tokens),
                            tuple(log.context),
                            tuple(log.windows), tuple(log.accepted), acc.edge_tokens, acc.cloud_tokens,
                            acc.checked_tokens, acc.drafted_tokens, acc.finish_reason or "eos")


def build_patterns(traces: Sequence[TokenTrace], policy: str, threshold: float | None, *, max_new_tokens: int,
                   seeds: Sequence[int] = (0,)) -> list[list[RoundTripPattern]]:
    """``patterns[s][t]``: the router's pattern on trace ``t`` with a policy seeded ``seeds[s]``."""
    policy_for(policy, threshold, seed=0)  # fail early, with the reason

    async def run_all() -> list[list[RoundTripPattern]]:
        return [[await _replay(trace, policy_for(policy, threshold, seed=seed), max_new_tokens) for trace in traces]
                for seed in seeds]

    return asyncio.run(run_all())
