"""An LLM cut at a layer: head + tail == the whole model, and the cloud's tail sessions."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
import torch

from edgecloud.cloud_node.session_table import SessionLimits, SessionNotFound
from edgecloud.cloud_node.tail_sessions import TailInputError, TailLimitError, TailOutOfStep, TailStore
from edgecloud.edge_node.split_engine import CutChooser, SplitEngine, SplitRun, TailGone, TailReply
from edgecloud.models.generate import generate_ids
from edgecloud.split.llm import LayerTimes, SplitHead, SplitTail
from edgecloud.split.planner import LinkEstimate

IDS = torch.tensor([[3, 14, 15, 9, 2, 6, 5, 35, 8, 9, 7, 9, 3, 23, 8, 4]])  # (1, 16)


def _whole(model, ids=IDS) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids)  # (1, T, V)


def _store(model, **limits) -> TailStore:
    return TailStore(model, SessionLimits(**limits), threading.Lock(), max_logits_bytes=2**24)


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_head_then_tail_equals_the_whole_model(llm, cut) -> None:
    head, tail = SplitHead(llm, cut), SplitTail(llm, cut)
    logits = tail.forward(head.forward(IDS, head.new_cache()), tail.new_cache())
    torch.testing.assert_close(logits, _whole(llm), atol=1e-5, rtol=0)


@pytest.mark.parametrize("cut", [0, 1, 3])
def test_chunked_prefill_and_decode_keep_both_caches_in_step(llm, cut) -> None:
    head, tail = SplitHead(llm, cut), SplitTail(llm, cut)
    head_cache, tail_cache = head.new_cache(), tail.new_cache()
    rows = []
    for chunk in (IDS[:, :5], IDS[:, 5:11], *(IDS[:, i:i + 1] for i in range(11, 16))):
        rows.append(tail.forward(head.forward(chunk, head_cache), tail_cache))
    torch.testing.assert_close(torch.cat(rows, 1), _whole(llm), atol=1e-5, rtol=0)


def test_a_cut_outside_the_model_is_refused(llm) -> None:
    with pytest.raises(ValueError, match="outside"):
        SplitHead(llm, 4)
    with pytest.raises(ValueError, match="outside"):
        SplitTail(llm, -1)


def _hidden(model, cut: int, ids=IDS) -> torch.Tensor:
    head = SplitHead(model, cut)
    return head.forward(ids, head.new_cache())


def test_tail_session_decodes_one_position_per_call_and_rolls_back(llm) -> None:
    store, cut = _store(llm), 1
    hidden = _hidden(llm, cut)  # (1, 16, C)
    whole = _whole(llm)
    first = store.run(cut, hidden[:, :10], session_id="s", last_only=True)
    assert first.session_tokens == 10
    torch.testing.assert_close(first.logits[:, -1], whole[:, 9], atol=1e-5, rtol=0)
    for i in range(10, 13):
        step = store.run(cut, hidden[:, i:i + 1], session_id="s", past_tokens=i)
        torch.testing.assert_close(step.logits[:, -1], whole[:, i], atol=1e-5, rtol=0)
        assert step.next_tokens == [int(whole[0, i].argmax())]
    # The edge rolls back to 11 positions: the cloud crops its cache and runs position 11 again.
    again = store.run(cut, hidden[:, 11:12], session_id="s", past_tokens=11)
    assert again.session_tokens == 12
    torch.testing.assert_close(again.logits[:, -1], whole[:, 11], atol=1e-5, rtol=0)


def test_tail_session_out_of_step_is_refused(llm) -> None:
    store, cut = _store(llm), 2
    hidden = _hidden(llm, cut)
    store.run(cut, hidden[:, :4], session_id="s")
    with pytest.raises(TailOutOfStep, match="holds 4 positions"):
        store.run(cut, hidden[:, 5:6], session_id="s", past_tokens=5)
    with pytest.raises(TailOutOfStep, match="opened at layer 2"):
        store.run(1, hidden[:, 4:5], session_id="s", past_tokens=4)
    with pytest.raises(SessionNotFound):
        store.run(cut, hidden[:, 4:5], session_id="gone", past_tokens=4)
    store.run(cut, hidden[:, 4:5], session_id="s", past_tokens=4, end_session=True)
    with pytest.raises(SessionNotFound):
        store.run(cut, hidden[:, 5:6], session_id="s", past_tokens=5)


@pytest.mark.parametrize(("hidden", "message"), [
    (torch.zeros(1, 3, 7), "must be"),
    (torch.zeros(1, 0, 32), "must be"),
    (torch.zeros(3, 32), "must be"),
    (torch.full((1, 2, 32), float("nan")), "non-finite"),
])
def test_bad_hidden_states_are_refused(llm, hidden, message) -> None:
    with pytest.raises(TailInputError, match=message):
        _store(llm).run(1, hidden)


def test_limits_are_checked(llm) -> None:
    store = _store(llm, max_window_tokens=8, max_tokens_per_session=12)
    with pytest.raises(TailLimitError, match="exceed the limit 8"):
        store.run(1, torch.zeros(1, 9, 32))
    store.run(1, torch.zeros(1, 8, 32), session_id="s")
    with pytest.raises(TailLimitError, match="would hold 13"):
        store.run(1, torch.zeros(1, 5, 32), session_id="s", past_tokens=8)
    small = TailStore(llm, SessionLimits(), threading.Lock(), max_logits_bytes=64 * 4 * 3)
    with pytest.raises(TailLimitError, match="answer limit"):
        small.run(1, torch.zeros(1, 4, 32))
    assert small.run(1, torch.zeros(1, 4, 32), last_only=True).logits.shape == (1, 1, 64)
    assert small.run(1, torch.zeros(1, 4, 32), want_logits=False).logits is None
    with pytest.raises(TailInputError, match="start_layer 4"):
        store.run(4, torch.zeros(1, 1, 32))


def test_tail_sessions_are_bounded(llm) -> None:
    store = _store(llm, max_sessions=2)
    for sid in "abc":
        store.run(1, torch.zeros(1, 2, 32), session_id=sid)
    assert store.status()["sessions"] == 2 and store.status()["evictions"] == 1
    with pytest.raises(SessionNotFound):
        store.run(1, torch.zeros(1, 1, 32), session_id="a", past_tokens=2)


class LocalTailLink:
    """The edge's tail link to an in-process ``TailStore``; drops the session before the calls in ``evict_at``."""

    def __init__(self, store: TailStore, start_layer: int, evict_at: tuple[int, ...] = ()) -> None:
        self.store, self.start_layer, self.evict_at = store, start_layer, evict_at
        self.calls = 0

    async def run(self, hidden, past_tokens, *, session_id, end=False) -> TailReply:
        self.calls += 1
        if self.calls in self.evict_at:
            with contextlib.suppress(SessionNotFound):
                self.store.close(session_id)
        try:
            result = self.store.run(self.start_layer, hidden, session_id=session_id, past_tokens=past_tokens,
                                    last_only=True, want_logits=False)
        except (SessionNotFound, TailOutOfStep) as exc:
            raise TailGone(str(exc)) from None
        return TailReply(result.next_tokens[0], result.compute_s, 0, 0, 0.0, result.session_tokens)

    async def close(self) -> None:
        pass


async def _split_generate(model, cut: int, link, prompt, max_new: int, chunk: int = 4) -> tuple[list[int], SplitRun]:
    run = SplitRun(SplitHead(model, cut), link, prompt, max_new_tokens=max_new, chunk_tokens=chunk)
    return [event.token_id async for event in run.run()], run


@pytest.mark.parametrize("evict_at", [(), (6,), (6, 14), (3, 9, 16)])
def test_split_run_equals_greedy_and_replays_after_every_eviction(llm, evict_at) -> None:
    prompt = [3, 14, 15, 9, 2, 6, 5, 35, 8, 9]  # three prefill chunks of up to 4
    link = LocalTailLink(_store(llm), 2, evict_at)
    ids, run = asyncio.run(_split_generate(llm, 2, link, prompt, 16))
    assert ids == list(generate_ids(llm, prompt, max_new_tokens=16))
    assert run.replays == len(evict_at)
    assert run.accounting.cloud_tokens == 16 and run.accounting.prompt_tokens == len(prompt)


def test_split_run_gives_up_when_the_cloud_keeps_losing_the_session(llm) -> None:
    link = LocalTailLink(_store(llm), 1, evict_at=tuple(range(4, 40)))
    with pytest.raises(TailGone, match="giving up"):
        asyncio.run(_split_generate(llm, 1, link, [3, 14, 15, 9, 2], 16))


def test_a_run_with_every_layer_on_the_edge_needs_no_cloud(llm) -> None:
    prompt = [3, 14, 15, 9, 2, 6]
    ids, run = asyncio.run(_split_generate(llm, 3, None, prompt, 12))
    assert ids == list(generate_ids(llm, prompt, max_new_tokens=12))
    assert run.accounting.edge_tokens == 12 and run.accounting.cloud_round_trips == 0
    with pytest.raises(ValueError, match="every layer"):
        SplitRun(SplitHead(llm, 2), None, prompt, max_new_tokens=4)


def _chooser(llm, **kwargs) -> CutChooser:
    # The edge: 10 ms per layer; the cloud twice as fast; 4 bytes per hidden value at fp32, 1 at int8.
    return CutChooser(llm, cuts=(0, 1, 2, 3), codecs=("fp32", "int8"), bytes_per_step={"fp32": 4000, "int8": 1000},
                      edge_times=LayerTimes(0.010, 0.002), cloud_speedup=2.0, **kwargs)


def test_the_cut_moves_to_the_edge_when_the_link_collapses_and_back_when_it_recovers(llm) -> None:
    chooser = _chooser(llm, link=LinkEstimate(1000, 1))
    assert chooser.choose().plan.cut == 0  # a fast link: all in the cloud (the faster side)
    for _ in range(16):  # 200 kbit/s, 50 ms RTT, measured on prefill chunks and decode steps
        for nbytes in (100_000, 1_000):
            chooser.observe(TailReply(0, 0.0, nbytes, 0, 0.050 + nbytes * 8 / 200e3, 1), cut=0)
    slow = chooser.choose()
    assert slow.plan.cut == 3 and slow.switched, slow.reason  # 33 ms on the edge beats 50 ms RTT + transfer
    assert "200 kbit" in chooser.describe() or "0.2 Mbit" in chooser.describe()
    for _ in range(16):
        for nbytes in (100_000, 1_000):
            chooser.observe(TailReply(0, 0.0, nbytes, 0, 0.001 + nbytes * 8 / 1e9, 1), cut=0)
    assert chooser.choose().plan.cut == 0


def test_the_cloud_profile_follows_the_reported_compute(llm) -> None:
    chooser = _chooser(llm, link=LinkEstimate(1000, 1))
    for _ in range(30):  # the cloud turns out 10x slower than assumed: 50 ms per layer
        chooser.observe(TailReply(0, 3 * 0.050 + 0.001, 1000, 0, 0.001, 1), cut=0)
    assert chooser.cloud_times.layer_s == pytest.approx(0.050, rel=0.01)
    assert chooser.choose().plan.cut == 3  # now the edge is faster


def test_a_plan_that_keeps_everything_on_the_edge_probes_the_link_to_come_back(llm) -> None:
    chooser = _chooser(llm, link=LinkEstimate(0.2, 50))
    engine = SplitEngine(llm, None, chooser, probe_interval_s=0.0, probe_positions=4)
    store = _store(llm)

    class FastLink(LocalTailLink):  # a recovered link: 1 ms, 1 Gbit/s
        async def run(self, hidden, past_tokens, *, session_id, end=False) -> TailReply:
            reply = await super().run(hidden, past_tokens, session_id=session_id)
            return TailReply(reply.next_token, reply.compute_s, hidden.numel() * 4, 16, 0.001 + hidden.numel() * 32e-9,
                             reply.session_tokens)

    async def go() -> None:
        assert chooser.choose().plan.cut == 3  # the link is bad: all on the edge
        for _ in range(8):
            engine.probe_if_due(lambda cut, codec: FastLink(store, cut))
            await engine._probe
    asyncio.run(go())
    assert chooser.choose().plan.cut == 0


def test_only_one_position_calls_measure_the_clouds_decode_speed(llm) -> None:
    chooser = _chooser(llm, link=LinkEstimate(1000, 1))
    chooser.observe(TailReply(0, 3 * 0.400, 40_000, 0, 0.002, 40), cut=0, positions=40)  # a prefill chunk
    assert chooser.cloud_samples == 0
    for compute_s in (0.031, 0.016, 0.040):  # one busy moment among decode steps
        chooser.observe(TailReply(0, compute_s, 1000, 0, 0.001, 41), cut=0)
    assert chooser.cloud_times.layer_s == pytest.approx((0.016 - 0.001) / 3)
