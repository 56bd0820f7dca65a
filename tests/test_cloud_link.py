"""The edge's link to a cloud node and the cloud's session table, through a real gRPC server.

The cloud session's tokens must always equal the edge's record of them, whatever is evicted
when; a new session is never visible half-made; bad options are refused with a clear status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

import grpc
import pytest

from edgecloud import rpc
from edgecloud.cloud_node.service import CloudNodeServicer
from edgecloud.cloud_node.sessions import SessionLimits, SessionStore
from edgecloud.edge_node.cloud_client import CloudUnavailable, GrpcCloudLink
from edgecloud.edge_node.cloud_failover import CloudHealth, FailoverCloudLink
from edgecloud.models.generate import generate_ids
from edgecloud.routing.router import CloudDown
from edgecloud.v1 import cloud_node_pb2 as pb
from edgecloud.v1 import cloud_node_pb2_grpc

PROMPT = [5, 9, 13, 2, 40, 17, 3]


def serve_cloud(store: SessionStore, scenario: Callable[[cloud_node_pb2_grpc.CloudNodeStub], Awaitable]):
    """Run ``scenario(stub)`` against a real cloud servicer on a free port."""
    async def main():
        server = rpc.create_server()
        cloud_node_pb2_grpc.add_CloudNodeServicer_to_server(
            CloudNodeServicer(store, node_id="c", model_name="tiny", max_message_bytes=2**20), server)
        port = await rpc.start_server(server, "127.0.0.1:0")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await scenario(cloud_node_pb2_grpc.CloudNodeStub(channel))
        finally:
            await server.stop(0)
    return asyncio.run(main())


async def _churn(stub: cloud_node_pb2_grpc.CloudNodeStub) -> None:
    """Another client opening a session: on a one-session cloud, it evicts everyone else's."""
    await stub.OpenSession(pb.OpenSessionRequest(prompt_token_ids=[1, 2, 3]), timeout=10)


@pytest.mark.parametrize("window", [0, 3])
def test_every_eviction_replays_the_whole_session(llm, window) -> None:
    """LLM-only (window 0) and speculative-style windows with an eviction before every call: the output
    is the LLM's greedy output and the edge's record is the whole session, every time."""
    steps = 10
    expected = list(generate_ids(llm, PROMPT, max_new_tokens=steps * (window + 1)))
    store = SessionStore(llm, SessionLimits(max_sessions=1))

    async def scenario(stub):
        link = GrpcCloudLink(stub)
        out: list[int] = []
        context = list(PROMPT)
        for _ in range(steps):
            draft = expected[len(out):len(out) + window]
            if window:
                draft = [*draft[:-1], (draft[-1] + 1) % llm.config.vocab_size]  # the last one is wrong
            verdict = await link.verify(context, draft)
            out += [*draft[:verdict.accepted], verdict.next_token]
            context = [verdict.next_token]
            assert link.cloud_tokens == PROMPT + out[:-1]  # what the cloud holds: all but the unsent last
            await _churn(stub)
        return out, link.replays

    out, replays = serve_cloud(store, scenario)
    assert out == expected[:len(out)]
    assert replays == steps - 1 and store.evictions >= replays


def test_a_failed_replay_is_a_typed_error(llm) -> None:
    """The replay of an evicted session over the cloud's window limit: RESOURCE_EXHAUSTED, passed on."""
    store = SessionStore(llm, SessionLimits(max_sessions=1, max_window_tokens=len(PROMPT) + 2))

    async def scenario(stub):
        link = GrpcCloudLink(stub)
        context = list(PROMPT)
        for _ in range(4):
            verdict = await link.verify(context, [])
            context = [verdict.next_token]
        await _churn(stub)
        with pytest.raises(CloudUnavailable) as caught:
            await link.verify(context, [])
        return caught.value

    error = serve_cloud(store, scenario)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "exceed the limit" in str(error)


def test_a_refused_open_leaves_no_session(llm) -> None:
    store = SessionStore(llm, SessionLimits(max_sessions=4))

    async def scenario(stub):
        keep = await stub.OpenSession(pb.OpenSessionRequest(prompt_token_ids=PROMPT), timeout=10)
        for _ in range(10):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Verify(pb.VerifyRequest(draft_token_ids=[3], open_with=pb.AcceptanceOptions()),
                                  timeout=10)  # no prompt: refused by the session, after the wire checks
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return keep.session_id

    keep = serve_cloud(store, scenario)
    assert store.status()["sessions"] == 1 and store.evictions == 0
    store.verify(keep, [1], [])  # the other client's session survived


def test_concurrent_opens_always_find_their_own_session(llm) -> None:
    store = SessionStore(llm, SessionLimits(max_sessions=1))

    async def scenario(stub):
        async def open_and_verify():
            reply = await stub.Verify(pb.VerifyRequest(context_token_ids=PROMPT, draft_token_ids=[4, 4],
                                                       open_with=pb.AcceptanceOptions()), timeout=30)
            return reply.session_id and reply.session_tokens >= len(PROMPT)
        return await asyncio.gather(*(open_and_verify() for _ in range(40)), return_exceptions=True)

    results = serve_cloud(store, scenario)
    assert all(r is True for r in results), [r for r in results if r is not True][:3]


@pytest.mark.parametrize("options", [
    {"rule": 2}, {"rule": 99}, {"temperature": -1.0}, {"temperature": math.nan}, {"temperature": 1e-308},
    {"temperature": math.inf}])
def test_bad_session_options_are_invalid_argument(llm, options) -> None:
    store = SessionStore(llm)

    async def scenario(stub):
        codes = []
        for call in (lambda: stub.OpenSession(pb.OpenSessionRequest(prompt_token_ids=PROMPT,
                                                                      acceptance=pb.AcceptanceOptions(**options)),
                                              timeout=10),
                     lambda: stub.Verify(pb.VerifyRequest(context_token_ids=PROMPT,
                                                          open_with=pb.AcceptanceOptions(**options)), timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            codes.append(caught.value.code())
        return codes

    assert serve_cloud(store, scenario) == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert store.status()["sessions"] == 0


def test_errors_do_not_echo_unbounded_input(llm) -> None:
    store = SessionStore(llm)

    async def scenario(stub):
        replies = []
        for call in (stub.OpenSession(pb.OpenSessionRequest(session_id="x" * 100_000, prompt_token_ids=PROMPT),
                                      timeout=10),
                     stub.Verify(pb.VerifyRequest(session_id="y" * 100_000, context_token_ids=[1]), timeout=10),
                     stub.OpenSession(pb.OpenSessionRequest(model="m" * 100_000), timeout=10)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            replies.append((caught.value.code(), len(caught.value.details())))
        return replies

    replies = serve_cloud(store, scenario)
    assert [code for code, _ in replies] == [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                                             grpc.StatusCode.NOT_FOUND]
    assert all(length < 400 for _, length in replies)


def test_idle_sessions_expire(llm) -> None:
    store = SessionStore(llm, SessionLimits(idle_ttl_s=0.0))
    store.start(PROMPT)
    assert store.status()["sessions"] == 0 and store.expirations == 1


def test_verify_runs_the_lm_head_on_the_needed_rows_only(llm) -> None:
    """The LM head (final norm + projection) sees len(draft) + 1 rows, not the whole window."""
    store = SessionStore(llm)
    rows = []
    hook = llm.norm.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    try:
        verdict = store.start(PROMPT * 4, [1, 2, 3])
        store.verify(verdict.session_id, [7, 8, 9, 10], [4])
        store.verify(verdict.session_id, [], [5, 6])
    finally:
        hook.remove()
    assert rows == [4, 2, 2]


class FlakyStub:
    """The real stub, with every call failing UNAVAILABLE (as through a reset connection) while ``down``."""

    def __init__(self, stub: cloud_node_pb2_grpc.CloudNodeStub) -> None:
        self.stub = stub
        self.down = False
        self.failing: set[str] = set()  # methods that fail even while not down
        self.calls: list[str] = []

    def __getattr__(self, method: str):
        real = getattr(self.stub, method)

        async def call(request, **kwargs):
            self.calls.append(method)
            if self.down or method in self.failing:
                raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                           details="connection reset (test outage)")
            return await real(request, **kwargs)
        return call


def test_an_outage_rebuilds_the_session_in_the_background_and_stays_exact(llm) -> None:
    """LLM-only through the failover link: after a failed call it answers CloudDown without calling until
    the backoff passes, then starts rebuilding the session in the background and answers CloudDown while
    the edge writes on (degraded); the first verification after the rebuild sends only what is new, and
    the cloud's token is the LLM's greedy next token on the whole history, degraded tokens included."""
    now = [0.0]
    health = CloudHealth(clock=lambda: now[0])
    vocab = llm.config.vocab_size

    async def scenario(stub):
        flaky = FlakyStub(stub)
        link = FailoverCloudLink("cloud:1", lambda _address: flaky, health)
        unseen = list(PROMPT)
        first = await link.verify(unseen, [])
        unseen = [first.next_token]
        history = [*PROMPT, first.next_token]
        flaky.down = True
        with pytest.raises(CloudDown) as down:
            await link.verify(unseen, [])
        assert down.value.attempted and health.is_down("cloud:1")
        flaky.down = False
        degraded = (first.next_token + 1) % vocab  # what the edge writes alone
        unseen.append(degraded)
        calls = len(flaky.calls)
        with pytest.raises(CloudDown) as down:  # within the backoff: no call at all
            await link.verify(unseen, [])
        assert not down.value.attempted and len(flaky.calls) == calls
        now[0] = 10.0  # the backoff has passed
        unseen.append((degraded + 7) % vocab)
        with pytest.raises(CloudDown):  # the rebuild starts; the stream does not wait for it
            await link.verify(unseen, [])
        unseen.append((degraded + 3) % vocab)  # written while the cloud replays
        for _ in range(500):  # the finished rebuild marks the cloud up (for every request) by itself
            if not health.is_down("cloud:1"):
                break
            await asyncio.sleep(0.01)
        assert not health.is_down("cloud:1")
        verdict = await link.verify(unseen, [])
        history += unseen[1:]
        return verdict, link, flaky.calls[calls:], history

    verdict, link, calls, history = serve_cloud(SessionStore(llm, SessionLimits()), scenario)
    assert link.link.cloud_tokens == history  # the rebuilt session holds every token, each once
    assert verdict.next_token == next(iter(generate_ids(llm, history, max_new_tokens=1)))
    assert calls == ["OpenSession", "Verify"] and link.replays == 1 and not health.is_down("cloud:1")


def test_a_request_that_starts_after_an_outage_opens_its_session_at_once(llm) -> None:
    """A cloud marked down whose backoff has passed: a request that has written nothing alone needs no
    background rebuild — its first verification opens the session (the normal path) and clears the mark."""
    now = [0.0]
    health = CloudHealth(clock=lambda: now[0])
    health.failed("cloud:1")
    now[0] = 10.0

    async def scenario(stub):
        flaky = FlakyStub(stub)
        link = FailoverCloudLink("cloud:1", lambda _address: flaky, health)
        verdict = await link.verify(list(PROMPT), [])
        return verdict, flaky.calls

    verdict, calls = serve_cloud(SessionStore(llm, SessionLimits()), scenario)
    assert verdict.next_token == next(iter(generate_ids(llm, PROMPT, max_new_tokens=1)))
    assert calls == ["Verify"] and not health.is_down("cloud:1")


async def _started(stub, health: CloudHealth, **kwargs) -> tuple[FlakyStub, FailoverCloudLink, list[int]]:
    """A failover link to "cloud:1" on a flaky stub, its first verification (the prompt) done:
    (stub, link, the router's unseen list: the cloud's token)."""
    flaky = FlakyStub(stub)
    link = FailoverCloudLink("cloud:1", lambda _address: flaky, health, **kwargs)
    first = await link.verify(list(PROMPT), [])
    return flaky, link, [first.next_token]


def _assert_exact(llm, verdict, link: FailoverCloudLink, history: list[int]) -> None:
    """The session holds the whole history, each token once, and the cloud's token is the LLM's on it."""
    assert link.link.cloud_tokens == history
    assert verdict.next_token == next(iter(generate_ids(llm, history, max_new_tokens=1)))


async def _until(check, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def _resume(link: FailoverCloudLink, health: CloudHealth, unseen: list[int]):
    """Verify until the cloud takes the call again (the background rebuild first)."""
    with pytest.raises(CloudDown):  # the rebuild starts
        await link.verify(unseen, [])
    unseen.append(40)  # the edge writes on meanwhile (degraded), as the router does after CloudDown
    await _until(lambda: not health.is_down("cloud:1"), "the rebuild")
    return await link.verify(unseen, [])


def test_a_failed_replay_loses_no_history(llm) -> None:
    """The rebuild after an outage fails (OpenSession refused): the history is still whole, the link
    backs off (no straight synchronous replay), and the next rebuild holds every token once."""
    now = [0.0]
    health = CloudHealth(clock=lambda: now[0])

    async def scenario(stub):
        flaky, link, unseen = await _started(stub, health)
        flaky.down = True
        with pytest.raises(CloudDown):
            await link.verify(unseen, [])
        flaky.down, flaky.failing = False, {"OpenSession"}
        now[0] = 10.0
        unseen.append(11)
        with pytest.raises(CloudDown):  # the rebuild starts, and fails
            await link.verify(unseen, [])
        await _until(lambda: link.link._push is None or link.link._push.done(), "the failed rebuild")
        calls = len(flaky.calls)
        with pytest.raises(CloudDown) as down:  # it backs off: no synchronous replay into a failing cloud
            await link.verify(unseen, [])
        assert down.value.attempted and len(flaky.calls) == calls and health.is_down("cloud:1")
        assert link.link.cloud_tokens == PROMPT  # the history is whole: nothing was lost
        flaky.failing = set()
        now[0] = 20.0
        unseen.append(12)
        verdict = await _resume(link, health, unseen)
        return verdict, link, [*PROMPT, *unseen]

    _assert_exact(llm, *serve_cloud(SessionStore(llm, SessionLimits()), scenario))


def test_tokens_pushed_in_the_background_are_not_sent_twice_after_a_failure(llm) -> None:
    """A prefetch put unseen tokens into the session, then the verification failed: the rebuilt session
    holds each of them once (the router still has them in its unseen list)."""
    now = [0.0]
    health = CloudHealth(clock=lambda: now[0])

    async def scenario(stub):
        flaky, link, unseen = await _started(stub, health)
        unseen += range(20, 28)
        link.prefetch(unseen)
        await _until(lambda: link.link._push is not None and link.link._push.done(), "the push")
        assert flaky.calls[-1] == "Extend"
        flaky.failing = {"Verify"}
        with pytest.raises(CloudDown):
            await link.verify(unseen, [])
        flaky.failing = set()
        now[0] = 10.0
        unseen.append(30)
        verdict = await _resume(link, health, unseen)
        return verdict, link, [*PROMPT, *unseen]

    _assert_exact(llm, *serve_cloud(SessionStore(llm, SessionLimits()), scenario))


def test_a_registered_cloud_that_is_gone_is_not_moved_to(llm) -> None:
    """The other known cloud does not answer its probe (a stale registration): the session stays, and
    resumes on its own cloud when that one is back; a cloud that answers is moved to."""
    now = [0.0]
    health = CloudHealth(clock=lambda: now[0])

    async def scenario(stub):
        alive = {"cloud:1"}

        async def probe(address: str) -> bool:
            return address in alive and not flaky.down

        flaky, link, unseen = await _started(stub, health, candidates=lambda: ["gone:2"], probe=probe)
        flaky.down = True
        with pytest.raises(CloudDown):
            await link.verify(unseen, [])
        flaky.down = False
        now[0] = 10.0
        verdict = await _resume(link, health, unseen)
        assert link.address == "cloud:1" and verdict.cloud_switches == 0 and health.is_down("gone:2")
        flaky.down = True  # now the other one is up: the session moves there
        unseen = [verdict.next_token]
        with pytest.raises(CloudDown):
            await link.verify(unseen, [])
        flaky.down, alive = False, {"gone:2"}
        now[0] = 20.0
        with pytest.raises(CloudDown):  # it moves, and rebuilds the session there
            await link.verify(unseen, [])
        return link

    link = serve_cloud(SessionStore(llm, SessionLimits()), scenario)
    assert link.address == "gone:2" and link.switches == 1
