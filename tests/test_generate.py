"""Generation loop against transformers' greedy decoding, and sampling rules."""

from __future__ import annotations

import pytest
import torch

from edgecloud.models.config import ModelConfig
from edgecloud.models.generate import SamplingParams, generate_ids, select_token
from edgecloud.models.loader import build_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(3)
    cfg = transformers.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    return hf, build_model(ModelConfig.from_hf(cfg.to_dict()), hf.state_dict(), dtype=torch.float32)


def test_greedy_generation_equals_transformers(tiny_pair) -> None:
    hf, model = tiny_pair
    prompt = [5, 17, 42, 8, 1, 60]
    ours = list(generate_ids(model, prompt, max_new_tokens=24))
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == theirs


def test_stop_token_ends_generation_before_it(tiny_pair) -> None:
    _, model = tiny_pair
    prompt = [5, 17, 42]
    full = list(generate_ids(model, prompt, max_new_tokens=12))
    stop = full[4]
    cut = list(generate_ids(model, prompt, max_new_tokens=12, stop_ids=[stop]))
    assert cut == full[:full.index(stop)]


def test_sampling_is_seeded_and_respects_top_k() -> None:
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0, 1.0])
    params = SamplingParams(temperature=1.0, top_k=2, seed=11)
    draws = [select_token(logits, params, gen) for gen in [params.generator()] for _ in range(200)]
    assert set(draws) <= {1, 2} and len(set(draws)) == 2
    again = [select_token(logits, params, gen) for gen in [params.generator()] for _ in range(200)]
    assert draws == again
    nucleus = SamplingParams(temperature=1.0, top_p=0.01, seed=1)
    assert {select_token(logits, nucleus, nucleus.generator()) for _ in range(20)} == {1}


@pytest.mark.parametrize("kwargs", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)])
def test_bad_sampling_params_are_rejected(kwargs) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


def test_bad_generation_input_is_rejected(tiny_pair) -> None:
    _, model = tiny_pair
    with pytest.raises(ValueError, match="empty"):
        list(generate_ids(model, [], max_new_tokens=3))
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(generate_ids(model, [1], max_new_tokens=0))
