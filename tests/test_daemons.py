"""Coordinator, cloud node and edge node as real processes on port 0, with tiny random models.

Exactness through the whole stack (client SDK -> coordinator -> edge router -> cloud
verification): the extremes of every policy equal the respective model's greedy output.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch

from edgecloud import Client, EdgecloudError
from edgecloud.client import Summary, TokenEvent
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.v1 import cloud_node_pb2, cloud_node_pb2_grpc

PROMPT = "def fib(n):"
MAX = 24


@pytest.fixture(scope="module")
def cluster(tiny_cluster):
    return tiny_cluster


def _greedy(folder, prompt=PROMPT, max_new=MAX) -> list[int]:
    tokenizer = Tokenizer.from_folder(folder)
    model = load_model(folder, dtype=torch.float32)
    return list(generate_ids(model, tokenizer.prompt_ids(prompt), max_new_tokens=max_new,
                             stop_ids=tokenizer.eos_token_ids))


@pytest.fixture(scope="module")
def expected(cluster):
    return {name: _greedy(folder) for name, folder in cluster["folders"].items()}


def _run(client: Client, **kwargs) -> tuple[list[int], Summary]:
    events = list(client.generate(PROMPT, max_tokens=MAX, **kwargs))
    summary = events[-1]
    assert isinstance(summary, Summary)
    return [e.token_id for e in events if isinstance(e, TokenEvent) and e.token_id >= 0], summary


def _cloud_status(cluster) -> cloud_node_pb2.CloudStatus:
    async def call():
        async with grpc.aio.insecure_channel(cluster["cloud"].address) as channel:
            return await cloud_node_pb2_grpc.CloudNodeStub(channel).GetStatus(
                cloud_node_pb2.GetCloudStatusRequest(), timeout=10)
    return asyncio.run(call())


def test_models_disagree(expected) -> None:
    assert expected["slm"] != expected["llm"]


def test_slm_only_equals_slm_greedy_without_cloud_calls(cluster, expected) -> None:
    before = _cloud_status(cluster).verify_calls
    ids, summary = _run(cluster["client"], policy="slm-only")
    assert ids == expected["slm"]
    assert summary.cloud_round_trips == 0 and _cloud_status(cluster).verify_calls == before
    assert summary.edge_node_id == "edge-0"


def test_llm_only_equals_llm_greedy(cluster, expected) -> None:
    ids, summary = _run(cluster["client"], policy="llm-only")
    assert ids == expected["llm"]
    assert summary.cloud_share == 1.0 and summary.cloud_round_trips == len(ids) + (summary.finish_reason == "eos")


@pytest.mark.parametrize("window", [1, 3, 5])
def test_speculative_equals_llm_greedy(cluster, expected, window: int) -> None:
    client = cluster["client"]
    ids, summary = _run(client, policy="speculative", draft_window=window)
    assert ids == expected["llm"]
    assert max(summary.window_sizes) <= window + 2 * len(summary.window_sizes)
    assert summary.bytes_up > 0 and summary.bytes_down > 0


def test_never_flagging_threshold_equals_slm_only(cluster, expected) -> None:
    before = _cloud_status(cluster).verify_calls
    ids, summary = _run(cluster["client"], policy="entropy", threshold=20.0)
    assert ids == expected["slm"] and summary.cloud_round_trips == 0
    assert _cloud_status(cluster).verify_calls == before


def test_always_flagging_threshold_equals_llm_greedy(cluster, expected) -> None:
    ids, _ = _run(cluster["client"], policy="max-prob", threshold=1.0)
    assert ids == expected["llm"]


def test_coordinator_round_trips_equal_cloud_calls(cluster) -> None:
    client = cluster["client"]
    for policy, threshold in (("entropy", 3.0), ("random", 0.3), ("speculative", None)):
        _run(client, policy=policy, threshold=threshold)

    async def totals():
        from edgecloud.v1 import coordinator_pb2, coordinator_pb2_grpc
        async with grpc.aio.insecure_channel(cluster["coordinator"].address) as channel:
            return await coordinator_pb2_grpc.CoordinatorStub(channel).GetClusterStatus(
                coordinator_pb2.GetClusterStatusRequest(), timeout=10)
    assert asyncio.run(totals()).cloud_round_trips == _cloud_status(cluster).verify_calls


@pytest.mark.parametrize("kwargs,message", [
    (dict(policy="magic"), "unknown policy"),
    (dict(policy="entropy", threshold=-1.0), "out of range"),
    (dict(policy="max-prob", threshold=2.0), "out of range"),
    (dict(max_tokens=0), "max_tokens"),
    (dict(max_tokens=100_000), "max_tokens"),
    (dict(policy="entropy", target_cloud_share=3.0), "target_cloud_share"),
])
def test_bad_requests_get_invalid_argument_and_daemons_keep_serving(cluster, expected, kwargs, message) -> None:
    client = cluster["client"]
    with pytest.raises(EdgecloudError) as info:
        list(client.generate(PROMPT, **{"max_tokens": MAX, **kwargs}))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in info.value.message
    assert _run(client, policy="slm-only")[0] == expected["slm"]


def test_empty_prompt_is_rejected(cluster) -> None:
    with pytest.raises(EdgecloudError) as info:
        list(cluster["client"].generate("   ", max_tokens=4))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_cloud_session_is_not_found(cluster) -> None:
    async def call():
        async with grpc.aio.insecure_channel(cluster["cloud"].address) as channel:
            await cloud_node_pb2_grpc.CloudNodeStub(channel).Verify(
                cloud_node_pb2.VerifyRequest(session_id="no-such-session", context_token_ids=[1]), timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        asyncio.run(call())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_client_works_directly_against_an_edge_node(cluster, expected) -> None:
    with Client(cluster["edge"].address, timeout_s=60) as direct:
        ids, _ = _run(direct, policy="slm-only")
        assert ids == expected["slm"]
        with pytest.raises(EdgecloudError) as info:
            _run(direct, policy="llm-only")
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert direct.status()[0].role == "edge"


def test_cloud_prefetch_keeps_output_and_moves_context_off_the_critical_path(cluster, expected) -> None:
    client = cluster["client"]
    base_ids, base = _run(client, policy="random", threshold=0.15, seed=3)
    ids, summary = _run(client, policy="random", threshold=0.15, seed=3, cloud_prefetch=True)
    assert ids == base_ids
    assert summary.cloud_round_trips == base.cloud_round_trips
    assert summary.cloud_background_calls > 0
    never_ids, never = _run(client, policy="entropy", threshold=20.0, cloud_prefetch=True)
    assert never_ids == expected["slm"] and never.cloud_round_trips == 0
