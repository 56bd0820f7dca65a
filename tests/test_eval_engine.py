"""The evaluation engine against the real daemons (tiny random models, fp32, port 0).

The engine replays the real router over memoised model outputs; on every configuration it
must give the daemons' tokens, sources, round trips, windows and bytes.
"""

from __future__ import annotations

import asyncio

import pytest
import torch

from edgecloud.client import Summary, TokenEvent
from edgecloud.evaluation.engine import NgramIndex, PairOracle, PrefixOracle, complete
from edgecloud.humaneval import CLOSING_FENCE, chat_request, load_problems
from edgecloud.models.generate import generate_ids
from edgecloud.models.loader import load_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.policies import make_policy

PROMPTS = ("def fib(n):", "for i in range(10):")
PROBLEMS = load_problems(2, offset=10)  # HumanEval/10 and /11, asked as the sweep asks them
MAX = 24
CONFIGS = [("slm-only", None), ("llm-only", None), ("speculative", None), ("entropy", 0.5), ("entropy", 1.5),
           ("max-prob", 0.5), ("max-prob", 0.8), ("margin", 0.3), ("random", 0.3), ("query", 1.0),
           ("query", 20.0)]


@pytest.fixture(scope="module")
def pair(tiny_cluster):
    folders = tiny_cluster["folders"]
    tokenizer = Tokenizer.from_folder(folders["slm"])
    return (load_model(folders["slm"], dtype=torch.float32), load_model(folders["llm"], dtype=torch.float32),
            tokenizer)


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.task_id)
def test_engine_equals_daemons_on_every_configuration(tiny_cluster, pair, problem) -> None:
    slm, llm, tokenizer = pair
    user, prefix = chat_request(problem)
    oracle = PairOracle(slm, llm, tokenizer.prompt_ids(user, assistant_prefix=prefix))  # shared by all configs
    cloud_tokens_seen = 0
    for name, threshold in CONFIGS:
        events = list(tiny_cluster["client"].generate(user, assistant_prefix=prefix, max_tokens=MAX, policy=name,
                                                      threshold=threshold, seed=7, stop=(CLOSING_FENCE,)))
        summary = events[-1]
        assert isinstance(summary, Summary)
        tokens = [e for e in events if isinstance(e, TokenEvent) and e.token_id >= 0]
        got = asyncio.run(complete(oracle, tokenizer, make_policy(name, threshold, seed=7), max_tokens=MAX,
                                   stop=(CLOSING_FENCE,), seed=7))
        label = f"{name}@{threshold}"
        assert got.token_ids == [e.token_id for e in tokens], label
        assert got.sources == [e.source for e in tokens], label
        acc = got.accounting
        assert (acc.round_trips, acc.cloud_tokens, acc.checked_tokens) == (
            summary.cloud_round_trips, summary.cloud_tokens, summary.checked_tokens), label
        assert acc.window_sizes == summary.window_sizes, label
        assert (acc.bytes_up, acc.bytes_down) == (summary.bytes_up, summary.bytes_down), label
        cloud_tokens_seen += acc.cloud_tokens
    assert cloud_tokens_seen > 0


def test_llm_agreement_is_one_for_llm_greedy_and_matches_a_direct_count(pair) -> None:
    slm, llm, tokenizer = pair
    prompt_ids = tokenizer.prompt_ids(PROMPTS[0])
    llm_greedy = list(generate_ids(llm, prompt_ids, max_new_tokens=MAX))
    slm_greedy = list(generate_ids(slm, prompt_ids, max_new_tokens=MAX))
    oracle = PairOracle(slm, llm, prompt_ids)
    assert oracle.llm_agreement(llm_greedy) == 1.0
    with torch.inference_mode():
        logits = llm(torch.tensor([prompt_ids + slm_greedy]))[0, len(prompt_ids) - 1:-1]
    direct = (logits.argmax(-1) == torch.tensor(slm_greedy)).float().mean().item()
    assert oracle.llm_agreement(slm_greedy) == pytest.approx(direct)
    assert direct < 1.0  # the tiny models disagree somewhere


def test_prefix_oracle_records_equal_decoding_step_by_step(pair) -> None:
    slm, _, tokenizer = pair
    prompt_ids = tokenizer.prompt_ids(PROMPTS[1])
    greedy = list(generate_ids(slm, prompt_ids, max_new_tokens=12))
    oracle = PrefixOracle(slm, prompt_ids, features=True, hidden=True)
    oracle.compute((), [7] * 12)  # a wrong guess: only its first position is the model's own
    assert oracle.chain((), 12)[:1] == greedy[:1]
    verified = oracle.compute((), greedy)  # a right guess is verified in one pass
    assert verified == [*greedy, verified[-1]] and oracle.chain((), 12) == greedy
    with torch.inference_mode():
        hidden = slm.forward_layers(slm.embed(torch.tensor([prompt_ids + greedy[:5]])), 0, slm.config.num_layers)
        logits = slm.head(hidden)[0, -1]
    record = oracle.get(tuple(greedy[:5]))
    probs = logits.softmax(-1)
    assert record.max_prob == pytest.approx(float(probs.max()), abs=1e-5)
    assert record.entropy == pytest.approx(float(-(probs * probs.log()).sum()), abs=1e-4)
    torch.testing.assert_close(record.hidden, slm.norm(hidden)[0, -1], atol=1e-5, rtol=1e-5)


def test_ngram_index_guesses_what_followed_the_longest_match() -> None:
    index = NgramIndex()
    index.add([1, 2, 3, 4, 5, 6])
    index.add([9, 3, 4, 7, 8])
    assert index.guess([2, 3, 4], 2) == [5, 6]  # the 3-gram (2, 3, 4) beats the later 2-gram (3, 4)
    assert index.guess([0, 3, 4], 5) == [7, 8]  # latest occurrence of (3, 4)
    assert index.guess([42], 3) == []


def test_a_prefix_keeps_its_first_record_when_recomputed(pair) -> None:
    slm, _, tokenizer = pair
    oracle = PrefixOracle(slm, tokenizer.prompt_ids(PROMPTS[0]), features=True)
    oracle.compute((), [5, 6, 7, 8])
    first = {key: oracle.records[key] for key in [(), (5,), (5, 6), (5, 6, 7), (5, 6, 7, 8)]}
    oracle.compute((), [9])  # moves the cache off the path
    oracle.compute((5, 6, 7, 8), [1])  # recomputes (5,), (5, 6), ... in another chunking
    assert all(oracle.records[key] is record for key, record in first.items())
