"""EdgeEngine in-process: validation, calibration to a target share, streamed text."""

from __future__ import annotations

import asyncio

import pytest

from edgecloud.cloud_node.local_link import InProcessCloudLink
from edgecloud.cloud_node.sessions import SessionStore
from edgecloud.edge_node.engine import NO_TOKEN, EdgeEngine, GenerationRequest, RequestError, TextEvent
from edgecloud.models.generate import generate_ids
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.router import Accounting


@pytest.fixture(scope="module")
def engine_and_store(tiny_tokenizer_folder, make_tiny_model):
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_folder)
    slm = make_tiny_model(21, vocab=tokenizer.vocab_size)  # the guarded pair (conftest.PAIR_SEEDS)
    llm = make_tiny_model(22, vocab=tokenizer.vocab_size, layers=3)
    return EdgeEngine(slm, tokenizer, max_tokens_limit=64), SessionStore(llm), llm


def _run(engine: EdgeEngine, store: SessionStore, request: GenerationRequest):
    async def collect():
        return [e async for e in engine.generate(request, lambda r: InProcessCloudLink(store))]

    out = asyncio.run(collect())
    events = [e for e in out if isinstance(e, TextEvent)]
    assert isinstance(out[-1], Accounting)
    return events, out[-1]


def test_slm_only_text_is_the_decoded_greedy_output(engine_and_store) -> None:
    engine, store, _ = engine_and_store
    request = GenerationRequest(prompt="def fib(n):", max_tokens=20, policy="slm-only")
    events, acc = _run(engine, store, request)
    ids = list(generate_ids(engine.model, engine.tokenizer.prompt_ids(request.prompt), max_new_tokens=20,
                            stop_ids=engine.tokenizer.eos_token_ids))
    assert [e.token_id for e in events if e.token_id != NO_TOKEN] == ids
    assert "".join(e.text for e in events) == engine.tokenizer.decode(ids)
    assert acc.round_trips == 0


def test_llm_only_uses_the_cloud_for_every_token(engine_and_store) -> None:
    engine, store, llm = engine_and_store
    request = GenerationRequest(prompt="for i in range(10):", max_tokens=12, policy="llm-only")
    events, acc = _run(engine, store, request)
    expected = list(generate_ids(llm, engine.tokenizer.prompt_ids(request.prompt), max_new_tokens=12,
                                 stop_ids=engine.tokenizer.eos_token_ids))
    assert [e.token_id for e in events if e.token_id != NO_TOKEN] == expected
    assert all(e.source == "cloud" for e in events) and acc.cloud_tokens == len(expected)
    assert acc.round_trips == len(expected) + (acc.finish_reason == "eos")  # the stop token costs a trip too


def test_target_cloud_share_calibrates_a_threshold(engine_and_store) -> None:
    engine, _, _ = engine_and_store
    features = engine.calibration_features()
    low = engine.validate(GenerationRequest(prompt="x", max_tokens=8, policy="entropy", target_cloud_share=0.05))
    high = engine.validate(GenerationRequest(prompt="x", max_tokens=8, policy="entropy", target_cloud_share=0.5))
    assert low.threshold > high.threshold
    share = sum(low.flags(f) for f in features) / len(features)
    assert abs(share - 0.05) < 0.02


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompt="  "), "prompt is empty"),
    (dict(prompt="x", max_tokens=0), "max_tokens"),
    (dict(prompt="x", max_tokens=65), "max_tokens"),
    (dict(prompt="x", policy="magic"), "unknown policy"),
    (dict(prompt="x", policy="entropy", threshold=-1.0), "out of range"),
    (dict(prompt="x", policy="entropy", target_cloud_share=1.5), "target_cloud_share"),
    (dict(prompt="x", policy="reward"), "reward head"),
])
def test_bad_requests_are_rejected_with_a_reason(engine_and_store, kwargs, message) -> None:
    engine, _, _ = engine_and_store
    with pytest.raises(RequestError, match=message):
        engine.validate(GenerationRequest(**{"max_tokens": 8, **kwargs}))


def test_stop_string_ends_the_stream_and_closes_the_books(engine_and_store) -> None:
    engine, store, _ = engine_and_store
    full, _ = _run(engine, store, GenerationRequest(prompt="def fib(n):", max_tokens=20, policy="slm-only"))
    text = "".join(e.text for e in full)
    stop = text[len(text) // 2:len(text) // 2 + 2]
    events, acc = _run(engine, store, GenerationRequest(prompt="def fib(n):", max_tokens=20, policy="slm-only",
                                                        stop=(stop,)))
    assert stop in "".join(e.text for e in events) and len(events) < len(full)
    assert acc.finish_reason == "stop" and acc.wall_s > 0 and acc.edge_compute_s > 0
