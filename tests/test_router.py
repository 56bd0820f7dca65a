"""The hybrid router in-process on tiny random models: exactness of every policy's extremes."""

from __future__ import annotations

import asyncio

import pytest

from edgecloud.cloud_node.local_link import InProcessCloudLink
from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.edge_node.drafter import Drafter, ThreadedDrafter
from edgecloud.models.generate import generate_ids
from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.policies import PolicyError, RoutingPolicy, make_policy
from edgecloud.routing.router import CLOUD, EDGE, HybridRouter

PROMPT = [3, 14, 15, 9, 2, 6]
MAX_NEW = 24


def route(slm, llm, policy: RoutingPolicy, prompt=PROMPT, max_new=MAX_NEW, stop_ids=()):
    store = SessionStore(llm)
    link = InProcessCloudLink(store)
    drafter = ThreadedDrafter(Drafter(slm, prompt)) if policy.uses_edge_draft else None
    router = HybridRouter(policy, link, prompt, drafter=drafter, max_new_tokens=max_new, stop_ids=stop_ids)

    async def collect():
        return [event async for event in router.run()]

    events = asyncio.run(collect())
    return events, router.accounting, store


def greedy(model, prompt=PROMPT, max_new=MAX_NEW, stop_ids=()):
    return list(generate_ids(model, prompt, max_new_tokens=max_new, stop_ids=stop_ids))


def ids(events):
    return [e.token_id for e in events]


def test_models_disagree_so_the_tests_mean_something(slm, llm) -> None:
    assert greedy(slm) != greedy(llm)


def test_slm_only_equals_slm_greedy_with_no_cloud_call(slm, llm) -> None:
    events, acc, store = route(slm, llm, make_policy("slm-only"))
    assert ids(events) == greedy(slm)
    assert acc.round_trips == 0 == store.verify_calls and store.status()["sessions"] == 0
    assert {e.source for e in events} == {EDGE} and acc.cloud_share == 0


def test_llm_only_equals_llm_greedy(slm, llm) -> None:
    events, acc, store = route(slm, llm, make_policy("llm-only"))
    assert ids(events) == greedy(llm)
    assert acc.round_trips == MAX_NEW == store.verify_calls
    assert acc.cloud_share == 1.0


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("adaptive", [False, True])
def test_speculative_equals_llm_greedy_for_every_window(slm, llm, window: int, adaptive: bool) -> None:
    events, acc, store = route(slm, llm, make_policy("speculative", window=window, adaptive=adaptive))
    assert ids(events) == greedy(llm)
    assert acc.round_trips == store.verify_calls
    assert acc.cloud_share == 1.0


def test_speculative_with_same_model_accepts_everything(slm) -> None:
    events, acc, _ = route(slm, slm, make_policy("speculative", window=4, adaptive=False))
    assert ids(events) == greedy(slm)
    assert all(w == 4 for w in acc.window_sizes)
    assert acc.round_trips == MAX_NEW // 5 + 1  # 4 accepted + 1 cloud token per trip


def test_threshold_that_never_flags_equals_slm_only(slm, llm) -> None:
    for name, threshold in (("entropy", 20.0), ("max-prob", 0.0), ("margin", 0.0), ("random", 0.0)):
        events, acc, store = route(slm, llm, make_policy(name, threshold))
        assert ids(events) == greedy(slm), name
        assert acc.round_trips == 0 == store.verify_calls, name


def test_threshold_that_always_flags_equals_llm_greedy(slm, llm) -> None:
    for name, threshold in (("entropy", 0.0), ("max-prob", 1.0), ("margin", 1.0), ("random", 1.0)):
        events, acc, store = route(slm, llm, make_policy(name, threshold))
        assert ids(events) == greedy(llm), name
        assert acc.round_trips == store.verify_calls > 0, name


def _median_entropy(slm) -> float:
    drafter, entropies = Drafter(slm, PROMPT), []
    for _ in range(MAX_NEW):
        token, feats = drafter.draft()
        entropies.append(feats.entropy)
        drafter.feed(token)
    return sorted(entropies)[len(entropies) // 2]


def test_intermediate_threshold_mixes_sources_and_counts_consistently(slm, llm) -> None:
    events, acc, store = route(slm, llm, make_policy("entropy", _median_entropy(slm)))
    assert acc.round_trips == store.verify_calls
    assert acc.total_tokens == len(events) == MAX_NEW
    assert acc.cloud_tokens == sum(e.source == CLOUD for e in events)
    assert acc.checked_tokens == sum(e.checked for e in events)
    assert 0 < acc.cloud_share < 1


class FlagPositions(RoutingPolicy):
    """Flags generated positions given in advance (test input for the router)."""

    name = "positions"

    def __init__(self, positions: set[int]) -> None:
        super().__init__(0.5)
        self.positions = positions

    def flags(self, features: TokenFeatures) -> bool:
        return features.position in self.positions


def test_clustered_flags_share_one_round_trip(slm) -> None:
    flagged = {3, 4, 5, 6, 12, 13}  # two clusters -> two windows
    events, acc, store = route(slm, slm, FlagPositions(flagged))
    assert ids(events) == greedy(slm)
    assert acc.round_trips == 2 == store.verify_calls
    assert acc.cloud_tokens + acc.checked_tokens > acc.round_trips


def test_round_trips_at_most_flagged_windows_when_models_disagree(slm, llm) -> None:
    flagged = {2, 3, 4, 10, 11, 17}
    _events, acc, _ = route(slm, llm, FlagPositions(flagged))
    assert acc.round_trips <= len(flagged)
    assert acc.cloud_tokens >= 1


def test_query_policy_routes_whole_request(slm, llm) -> None:
    to_edge, acc_edge, _ = route(slm, llm, make_policy("query", 20.0))
    assert ids(to_edge) == greedy(slm) and acc_edge.round_trips == 0
    to_cloud, acc_cloud, _ = route(slm, llm, make_policy("query", 0.0))
    assert ids(to_cloud) == greedy(llm) and acc_cloud.cloud_share == 1.0


def test_stop_token_ends_every_mode(slm, llm) -> None:
    stop = greedy(llm)[5]
    expected = greedy(llm, stop_ids=[stop])
    for name, opts in (("llm-only", {}), ("speculative", {"window": 3})):
        events, _, _ = route(slm, llm, make_policy(name, **opts), stop_ids=[stop])
        assert ids(events) == expected, name


@pytest.mark.parametrize("name,threshold", [("entropy", -1.0), ("max-prob", 1.5), ("random", float("nan"))])
def test_threshold_out_of_range_is_rejected(name: str, threshold: float) -> None:
    with pytest.raises(PolicyError, match="out of range"):
        make_policy(name, threshold)


def test_unknown_policy_lists_known_ones() -> None:
    with pytest.raises(PolicyError, match="known: slm-only, llm-only"):
        make_policy("magic")


def test_threshold_calibration_hits_target_share() -> None:
    scores = [i / 1000 for i in range(1000)]
    for share in (0.05, 0.2, 0.5):
        policy = make_policy("entropy", make_policy("entropy").threshold_for_share(scores, share))
        flagged = sum(policy.flags(TokenFeatures(s, 0.5, 0.1, 0)) for s in scores) / len(scores)
        assert abs(flagged - share) < 0.01
    maxprob = make_policy("max-prob")
    t = maxprob.threshold_for_share([1 - p for p in (0.1, 0.5, 0.9, 0.99)], 0.5)
    policy = make_policy("max-prob", t)
    assert [policy.flags(TokenFeatures(0, p, 0, 0)) for p in (0.1, 0.5, 0.9, 0.99)] == [True, True, False, False]


def test_a_stop_string_ends_drafting_at_its_token(slm, llm) -> None:
    """Runs feed edge-kept tokens ahead of the reader; with stop strings the router feeds one token at a
    time, so nothing is drafted or fed past the token that completes the stop (here: the 5th token)."""
    from edgecloud.routing.router import until_stop

    class Digits:  # the text decoder: each token id as its digits and a space
        def push(self, token_id: int) -> str:
            return f"{token_id} "

    expected = greedy(slm)
    stop = " ".join(str(t) for t in expected[3:5])  # completed by the 5th token (and not before)
    assert stop not in " ".join(str(t) for t in expected[:4]) + " "
    drafter = ThreadedDrafter(Drafter(slm, PROMPT))
    router = HybridRouter(make_policy("slm-only"), InProcessCloudLink(SessionStore(llm)), PROMPT, drafter=drafter,
                          max_new_tokens=MAX_NEW)

    async def collect():
        return [event async for event, _ in until_stop(router, Digits(), [stop])]

    events = asyncio.run(collect())
    assert ids(events) == expected[:5] and router.accounting.finish_reason == "stop"
    assert router.accounting.drafted_tokens == 5
    assert drafter.num_tokens == len(PROMPT) + 4  # the 5th is read, not fed
