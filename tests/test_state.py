"""State after every round trip, asserted directly (not only through the output tokens).

- The edge: after a rollback the drafter's cache holds exactly the prompt and the final tokens so far
  (prompt + emitted), so its next draft and its features equal a fresh drafter's on that prefix.
- The cloud: after a verification the session holds base + context + accepted tokens, and its saved
  logits are the LLM's on exactly prompt + emitted + accepted.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from edgecloud.cloud_node.local_link import InProcessCloudLink
from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.models.generate import generate_ids
from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import make_policy
from edgecloud.routing.router import HybridRouter, LinkVerdict, TokenEvent

PROMPT = [3, 14, 15, 9, 2, 6]
MAX_NEW = 24


def assert_same_draft(drafter: Drafter, model, prefix: list[int]) -> None:
    """``drafter`` is in the state of a fresh drafter that was given ``prefix`` as its prompt."""
    fresh = Drafter(model, prefix)
    assert drafter.num_tokens == fresh.num_tokens == len(prefix)
    token, feats = drafter.draft()
    fresh_token, fresh_feats = fresh.draft()
    assert token == fresh_token
    assert (feats.entropy, feats.max_prob, feats.margin) == pytest.approx(
        (fresh_feats.entropy, fresh_feats.max_prob, fresh_feats.margin), abs=1e-4)
    torch.testing.assert_close(drafter._logits, fresh._logits, atol=1e-4, rtol=1e-4)


def test_rollback_equals_a_fresh_drafter_on_the_accepted_prefix(slm) -> None:
    drafts = list(generate_ids(slm, PROMPT, max_new_tokens=6))
    for accepted in range(len(drafts)):  # the cloud accepts `accepted` drafts, then says its own token
        drafter = Drafter(slm, PROMPT)
        for token in drafts:
            drafter.feed(token)
        cloud_token = (drafts[accepted] + 1) % slm.config.vocab_size  # differs from the rejected draft
        drafter.rollback(len(PROMPT) + accepted, then_feed=[cloud_token])
        assert_same_draft(drafter, slm, PROMPT + drafts[:accepted] + [cloud_token])


def test_rollback_feeds_the_accepted_drafts_it_had_not_cached(slm) -> None:
    drafts = list(generate_ids(slm, PROMPT, max_new_tokens=4))
    drafter = Drafter(slm, PROMPT)
    drafter.feed(drafts[0])  # the router feeds all but the last draft of a window
    drafter.rollback(len(PROMPT) + 1, then_feed=[*drafts[1:3], 7])
    assert_same_draft(drafter, slm, PROMPT + drafts[:3] + [7])


class CheckedDrafter:
    """The router's drafter, checked against a fresh drafter on prompt + emitted after every rollback."""

    def __init__(self, model, prompt: list[int], events: list[TokenEvent]) -> None:
        self.model = model
        self.prompt = prompt
        self.events = events
        self.inner = Drafter(model, prompt)
        self._threaded = ThreadedDrafter(self.inner)
        self.rollbacks = 0

    @property
    def compute_s(self) -> float:
        return self.inner.compute_s

    @property
    def num_tokens(self) -> int:
        return self.inner.num_tokens

    async def draft(self) -> tuple[int, TokenFeatures]:
        return await self._threaded.draft()

    async def feed(self, token: int) -> None:
        await self._threaded.feed(token)

    async def feed_run(self, token: int, keep, max_tokens: int) -> list[int]:
        return await self._threaded.feed_run(token, keep, max_tokens)

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        await self._threaded.rollback(num_tokens, then_feed)
        self.rollbacks += 1
        assert_same_draft(self.inner, self.model, self.prompt + [e.token_id for e in self.events])


class CheckedLink:
    """The in-process cloud link, checked after every verification: the session holds base + context +
    accepted tokens, and its saved logits are the LLM's on prompt + emitted + accepted."""

    def __init__(self, store: SessionStore, prompt: list[int], events: list[TokenEvent]) -> None:
        self.store = store
        self.inner = InProcessCloudLink(store)
        self.prompt = prompt
        self.events = events
        self.calls = 0
        self.rejections = 0

    def _session_tokens(self) -> int:
        sid = self.inner.session_id
        return 0 if sid is None else self.store._table.get(sid).num_tokens

    async def verify(self, context: list[int], draft: list[int]) -> LinkVerdict:
        base = self._session_tokens()
        verdict = await self.inner.verify(context, draft)
        self.calls += 1
        self.rejections += verdict.accepted < len(draft)
        session = self.store._table.get(self.inner.session_id)
        assert session.num_tokens == base + len(context) + verdict.accepted
        held = self.prompt + [e.token_id for e in self.events] + draft[:verdict.accepted]
        assert session.num_tokens == len(held)
        with torch.inference_mode():
            logits = self.store.model(torch.tensor([held]), last_n=1)[0, -1]
        torch.testing.assert_close(session.last_logits, logits, atol=1e-4, rtol=1e-4)
        assert verdict.next_token == int(logits.argmax())
        return verdict

    def prefetch(self, unseen: list[int]) -> None:
        self.inner.prefetch(unseen)

    async def settle(self) -> LinkVerdict:
        return await self.inner.settle()


def route_checked(slm, llm, policy, prompt=PROMPT, max_new=MAX_NEW):
    events: list[TokenEvent] = []
    drafter = CheckedDrafter(slm, prompt, events)
    link = CheckedLink(SessionStore(llm), prompt, events)
    router = HybridRouter(policy, link, prompt, drafter=drafter, max_new_tokens=max_new)

    async def collect():
        async for event in router.run():
            events.append(event)  # before the router resumes (and rolls back): the checks see it

    asyncio.run(collect())
    return [e.token_id for e in events], router.accounting, drafter, link


@pytest.mark.parametrize("window", [1, 3, 5])
def test_speculative_state_after_every_round_trip(slm, llm, window) -> None:
    tokens, acc, drafter, link = route_checked(slm, llm, make_policy("speculative", window=window, adaptive=False))
    assert tokens == list(generate_ids(llm, PROMPT, max_new_tokens=MAX_NEW))
    assert link.rejections > 0 and drafter.rollbacks > 0  # the checks ran after rejections
    assert acc.round_trips == link.calls
    assert acc.checked_tokens + acc.cloud_tokens == MAX_NEW


def _median_entropy(slm) -> float:
    drafter, entropies = Drafter(slm, PROMPT), []
    for _ in range(MAX_NEW):
        token, feats = drafter.draft()
        entropies.append(feats.entropy)
        drafter.feed(token)
    return sorted(entropies)[len(entropies) // 2]


def test_mixed_routing_state_after_every_round_trip(slm, llm) -> None:
    """Edge tokens between cloud windows: the cloud's unseen context and the edge cache both stay exact."""
    tokens, acc, drafter, link = route_checked(slm, llm, make_policy("entropy", _median_entropy(slm)))
    assert len(tokens) == MAX_NEW and 0 < acc.cloud_share < 1
    assert acc.edge_tokens > acc.checked_tokens  # some tokens never went to the cloud before a window
    assert link.calls == acc.round_trips > 1 and drafter.rollbacks > 0


def test_speculative_output_depends_on_the_drafts_being_undone(slm, llm) -> None:
    """Acceptance counts are those of a drafter that forgets rejected drafts: each window's drafts are the
    SLM's greedy continuation of prompt + everything emitted so far."""
    _tokens, acc, _, _ = route_checked(slm, llm, make_policy("speculative", window=4, adaptive=False))
    out: list[int] = []
    expected_windows, expected_accepts = [], []
    llm_greedy = list(generate_ids(llm, PROMPT, max_new_tokens=MAX_NEW))
    while len(out) < MAX_NEW:
        budget = MAX_NEW - len(out)
        draft = list(generate_ids(slm, PROMPT + out, max_new_tokens=min(4, budget)))
        accepted = 0
        while accepted < len(draft) and draft[accepted] == llm_greedy[len(out) + accepted]:
            accepted += 1
        expected_windows.append(len(draft))
        expected_accepts.append(accepted)
        out = llm_greedy[:len(out) + accepted + 1]
    assert list(acc.window_sizes) == expected_windows
    assert acc.checked_tokens == sum(expected_accepts)
    assert acc.round_trips == len(expected_windows)
