"""Degraded mode in-process: the router writes what a dead cloud would have, and resumes exactly.

The cloud here is the real session store behind ``InProcessCloudLink``; ``Outage`` decides which
verification calls fail (as ``CloudDown``, what the edge's failover link raises) without reaching it.
"""

from __future__ import annotations

import asyncio

import pytest

from edgecloud.cloud_node.local_link import InProcessCloudLink
from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.edge_node.cloud_failover import CloudHealth
from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.models.generate import generate_ids
from edgecloud.routing.policies import make_policy
from edgecloud.routing.router import CLOUD, DEGRADED, EDGE, CloudDown, HybridRouter, LinkVerdict

PROMPT = [3, 14, 15, 9, 2, 6]
MAX_NEW = 32


class Outage:
    """The in-process link with the calls numbered in ``down`` failing (a set, or ``all``)."""

    def __init__(self, store: SessionStore, down) -> None:
        self.link = InProcessCloudLink(store)
        self.down = down
        self.calls = 0
        self.contexts: list[list[int]] = []  # what each call that reached the cloud carried

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        self.calls += 1
        if self.down == "all" or self.calls in self.down:
            raise CloudDown("test outage", attempted=True)
        self.contexts.append(list(context))
        return await self.link.verify(context, draft)

    def prefetch(self, unseen: list[int]) -> None:
        pass

    async def settle(self) -> LinkVerdict:
        return LinkVerdict(accepted=0, next_token=-1)


def route(slm, llm, policy_name: str, down, *, with_fallback: bool = True, **options):
    store = SessionStore(llm)
    link = Outage(store, down)
    policy = make_policy(policy_name, **options)
    drafter = ThreadedDrafter(Drafter(slm, PROMPT)) if policy.uses_edge_draft else None

    async def fallback(tokens: list[int]) -> ThreadedDrafter:
        return ThreadedDrafter(Drafter(slm, tokens))

    router = HybridRouter(policy, link, PROMPT, drafter=drafter, max_new_tokens=MAX_NEW,
                          fallback=fallback if with_fallback else None)

    async def collect():
        return [event async for event in router.run()]

    return asyncio.run(collect()), router.accounting, store, link


def greedy(model, prompt, max_new):
    return list(generate_ids(model, prompt, max_new_tokens=max_new))


def _continues_greedily(model, events, start: int) -> None:
    """Every token from ``start`` on is ``model``'s greedy choice after the tokens before it."""
    out = [e.token_id for e in events]
    for i in range(start, len(out)):
        assert out[i] == greedy(model, PROMPT + out[:i], 1)[0], f"token {i} is not the LLM's greedy choice"


@pytest.mark.parametrize("policy", ["speculative", "llm-only", "entropy"])
def test_a_cloud_down_throughout_gives_the_slm_only_answer(slm, llm, policy) -> None:
    options = {"threshold": 0.5} if policy == "entropy" else {}
    events, acc, store, _ = route(slm, llm, policy, "all", **options)
    assert [e.token_id for e in events] == greedy(slm, PROMPT, MAX_NEW)
    assert acc.degraded_tokens == sum(e.source == DEGRADED for e in events) > 0
    assert acc.cloud_tokens == 0 == acc.checked_tokens and acc.edge_tokens == MAX_NEW
    assert acc.cloud_failures >= 1 and store.verify_calls == 0
    if policy != "entropy":
        assert all(e.source == DEGRADED for e in events)  # every token would have gone to the cloud


@pytest.mark.parametrize("policy", ["speculative", "llm-only"])
def test_after_an_outage_the_cloud_resumes_and_is_exact_again(slm, llm, policy) -> None:
    events, acc, store, link = route(slm, llm, policy, {2, 3, 4})
    sources = [e.source for e in events]
    first_degraded = sources.index(DEGRADED)
    last_degraded = len(sources) - 1 - sources[::-1].index(DEGRADED)
    assert 0 < first_degraded <= last_degraded < len(events) - 1
    assert CLOUD in sources[last_degraded + 1:]  # hybrid routing resumed
    _continues_greedily(llm, events, last_degraded + 1)  # lossless again, given the degraded prefix
    out = [e.token_id for e in events]
    assert out[:first_degraded] == greedy(llm, PROMPT, first_degraded)
    # The calls after the outage carried every token the cloud had not seen, degraded ones included: the
    # session holds the prompt and every output token but the cloud's last (not sent back yet).
    assert sources[-1] == CLOUD
    assert sum(len(c) for c in link.contexts) + acc.checked_tokens == len(PROMPT) + len(out) - 1
    assert store._table.get(link.link.session_id).num_tokens == len(PROMPT) + len(out) - 1
    assert acc.cloud_failures == 3 and acc.degraded_tokens == sources.count(DEGRADED)


def test_without_a_fallback_model_a_cloud_only_request_fails_clearly(slm, llm) -> None:
    with pytest.raises(CloudDown, match="no edge model"):
        route(slm, llm, "llm-only", "all", with_fallback=False)


def test_edge_tokens_stay_edge_in_an_outage(slm, llm) -> None:
    """A threshold policy's unflagged tokens are not degraded: the cloud would not have seen them."""
    events, acc, _, _ = route(slm, llm, "entropy", "all", threshold=1.0)
    sources = {e.source for e in events}
    assert EDGE in sources and DEGRADED in sources
    assert acc.edge_tokens == MAX_NEW


def test_health_backs_off_exponentially_and_recovers() -> None:
    now = [0.0]
    health = CloudHealth(initial_backoff_s=0.25, max_backoff_s=1.0, clock=lambda: now[0])
    assert not health.is_down("a") and health.retry_due("a")
    assert [health.failed("a") for _ in range(5)] == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert health.is_down("a") and not health.retry_due("a")
    now[0] = 0.99
    assert not health.retry_due("a")
    now[0] = 1.0
    assert health.retry_due("a") and health.is_down("a")
    health.succeeded("a")
    assert not health.is_down("a") and health.down() == []
    with pytest.raises(ValueError):
        CloudHealth(initial_backoff_s=2, max_backoff_s=1)


def test_health_table_is_bounded() -> None:
    health = CloudHealth(max_entries=3)
    for i in range(10):
        health.failed(f"h{i}:1")
    assert health.down() == ["h7:1", "h8:1", "h9:1"]
