"""The Llama-family runtime against transformers (test oracle) on tiny random models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.models.config import ModelConfig, ModelConfigError
from edgecloud.models.loader import WeightsError, build_model, load_model

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            rms_norm_eps=1e-6)


def _hf_model(kind: str, tie: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = transformers.LlamaConfig(**TINY, rope_theta=10000.0, tie_word_embeddings=tie)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        cfg = transformers.Qwen2Config(**TINY, rope_theta=1000000.0, tie_word_embeddings=tie)
        model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # random biases and norms, so that every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0, 0.5 if "norm" in name else 0.1).add_(1.0 if "norm" in name else 0.0)
    return model.eval()


@pytest.fixture(params=[("llama", False), ("qwen2", False), ("qwen2", True), ("llama", True)],
                ids=["llama", "qwen2", "qwen2-tied", "llama-tied"])
def pair(request, tmp_path: Path):
    """(transformers model, runtime model loaded from its saved folder) in float32."""
    kind, tie = request.param
    hf = _hf_model(kind, tie)
    hf.save_pretrained(tmp_path)
    return hf, load_model(tmp_path, dtype=torch.float32)


def _ids(batch: int, length: int, vocab: int = TINY["vocab_size"], seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


def test_logits_match_transformers(pair) -> None:
    hf, model = pair
    ids = _ids(2, 17)
    with torch.no_grad():
        expected = hf(ids).logits
        got = model(ids)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), atol=1e-4, rtol=1e-4)


def test_window_forward_with_cache_equals_full_forward(pair) -> None:
    _, model = pair
    ids = _ids(1, 23)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(initial_capacity=4)  # forces the buffers to grow
        pieces = [model(ids[:, a:b], cache) for a, b in ((0, 7), (7, 8), (8, 13), (13, 23))]
    assert cache.length() == 23
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_crop_then_refeed_equals_full_forward(pair) -> None:
    _, model = pair
    ids = _ids(1, 12)
    wrong = _ids(1, 4, seed=7)
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache()
        model(ids[:, :8], cache)
        model(wrong, cache)  # a rejected draft window
        cache.crop(8)
        tail = model(ids[:, 8:], cache)
    torch.testing.assert_close(tail, full[:, 8:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cut", [0, 1, 2, 3])
def test_layer_range_split_equals_whole_model_exactly(pair, cut: int) -> None:
    _, model = pair
    ids = _ids(2, 9)
    layers = model.config.num_layers
    with torch.no_grad():
        whole = model(ids)
        head_cache = model.new_cache(batch_size=2, layers=range(0, cut))
        tail_cache = model.new_cache(batch_size=2, layers=range(cut, layers))
        hidden = model.forward_layers(model.embed(ids[:, :5]), 0, cut, head_cache)
        first = model.head(model.forward_layers(hidden, cut, layers, tail_cache))
        hidden = model.forward_layers(model.embed(ids[:, 5:]), 0, cut, head_cache)
        second = model.head(model.forward_layers(hidden, cut, layers, tail_cache))
        uncached = model.head(model.forward_layers(model.forward_layers(model.embed(ids), 0, cut), cut, layers))
    assert torch.equal(uncached, whole)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)


def test_bf16_model_runs_and_tracks_fp32(pair) -> None:
    hf, model = pair
    bf16 = build_model(model.config, hf.state_dict(), dtype=torch.bfloat16)
    ids = _ids(1, 10)
    with torch.no_grad():
        ref = model(ids)
        got = bf16(ids)
    assert got.dtype == torch.float32  # logits are returned in float32
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() > 0.8


def test_bad_config_and_weights_give_clear_errors(tmp_path: Path) -> None:
    hf = _hf_model("qwen2")
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    with pytest.raises(ModelConfigError, match="model_type 'gpt2'"):
        ModelConfig.from_hf({**hf.config.to_dict(), "model_type": "gpt2"})
    with pytest.raises(ModelConfigError, match="multiple of num_kv_heads"):
        ModelConfig.from_hf({**hf.config.to_dict(), "num_key_value_heads": 3})
    state = hf.state_dict()
    state.pop("model.norm.weight")
    with pytest.raises(WeightsError, match=r"model\.norm|norm\.weight"):
        build_model(cfg, state, dtype=torch.float32)
    with pytest.raises(ModelConfigError, match="not a Hugging Face model folder"):
        load_model(tmp_path, dtype=torch.float32)
