"""Cloud sessions: limits, LRU eviction, replay after eviction, concurrent sessions."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from edgecloud import rpc
from edgecloud.cloud_node.service import CloudNodeServicer
from edgecloud.cloud_node.sessions import SessionInputError, SessionLimits, SessionNotFound, SessionStore
from edgecloud.edge_node.cloud_client import GrpcCloudLink
from edgecloud.models.generate import generate_ids
from edgecloud.v1 import cloud_node_pb2_grpc

PROMPT = [5, 9, 13, 2, 40]


def _llm_only(store: SessionStore, sid: str, prompt: list[int], steps: int) -> list[int]:
    tokens, context = [], prompt
    for _ in range(steps):
        verdict = store.verify(sid, context, [])
        tokens.append(verdict.next_token)
        context = [verdict.next_token]
    return tokens


def test_lru_eviction_by_count_and_not_found_after(llm) -> None:
    store = SessionStore(llm, SessionLimits(max_sessions=2))
    a, b = store.open(), store.open()
    store.verify(a, PROMPT, [])
    c = store.open()  # evicts b, the least recently used
    with pytest.raises(SessionNotFound, match="replay"):
        store.verify(b, PROMPT, [])
    store.verify(a, [1], [])
    store.verify(c, PROMPT, [])
    assert store.status()["evictions"] == 1 and store.status()["sessions"] == 2


def test_kv_memory_limit_evicts(llm) -> None:
    first = SessionStore(llm)
    sid = first.open()
    first.verify(sid, PROMPT, [])
    per_session = first.status()["kv_bytes"]
    store = SessionStore(llm, SessionLimits(max_kv_bytes=int(per_session * 1.5)))
    a = store.open()
    store.verify(a, PROMPT, [])
    b = store.open()
    store.verify(b, PROMPT, [])
    assert store.status()["sessions"] == 1 and store.status()["evictions"] == 1


def test_input_limits_are_checked(llm) -> None:
    store = SessionStore(llm, SessionLimits(max_window_tokens=4, max_tokens_per_session=6))
    sid = store.open()
    with pytest.raises(SessionInputError, match="first call"):
        store.verify(sid, [], [3])
    with pytest.raises(SessionInputError, match="exceed the limit"):
        store.verify(sid, [1, 2, 3], [4, 5])
    with pytest.raises(SessionInputError, match="outside the vocabulary"):
        store.verify(sid, [10_000], [])
    store.verify(sid, [1, 2, 3, 4], [])
    with pytest.raises(SessionInputError, match="limit is 6"):
        store.verify(sid, [1, 2, 3], [])


def test_concurrent_sessions_do_not_corrupt_each_other(llm) -> None:
    store = SessionStore(llm)
    prompts = [PROMPT, [7, 7, 1], [30, 2, 2, 9], [11]]
    expected = [list(generate_ids(llm, p, max_new_tokens=10)) for p in prompts]
    sids = [store.open() for _ in prompts]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda args: _llm_only(store, *args, 10), zip(sids, prompts, strict=True)))
    assert got == expected


def test_grpc_link_replays_an_evicted_session(llm) -> None:
    """Two links on a cloud that keeps one session: each eviction is repaired by a replay."""
    expected = list(generate_ids(llm, PROMPT, max_new_tokens=6))

    async def scenario() -> tuple[list[int], list[int], int]:
        store = SessionStore(llm, SessionLimits(max_sessions=1))
        server = rpc.create_server()
        cloud_node_pb2_grpc.add_CloudNodeServicer_to_server(
            CloudNodeServicer(store, node_id="c", model_name="tiny", max_message_bytes=2**20), server)
        port = await rpc.start_server(server, "127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = cloud_node_pb2_grpc.CloudNodeStub(channel)
                links = [GrpcCloudLink(stub), GrpcCloudLink(stub)]
                outputs: list[list[int]] = [[], []]
                contexts = [list(PROMPT), list(PROMPT)]
                for _ in range(6):  # alternate: every call evicts the other link's session
                    for i, link in enumerate(links):
                        verdict = await link.verify(contexts[i], [])
                        outputs[i].append(verdict.next_token)
                        contexts[i] = [verdict.next_token]
                return outputs[0], outputs[1], links[0].replays + links[1].replays
        finally:
            await server.stop(0)

    first, second, replays = asyncio.run(scenario())
    assert first == expected and second == expected
    assert replays >= 10
