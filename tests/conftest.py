"""Shared fixtures: tiny random-weight models of the real architecture (no downloads)."""

from __future__ import annotations

import pytest
import torch

from edgecloud.models.config import ModelConfig
from edgecloud.models.llama import LlamaModel

TINY_VOCAB = 64


def tiny_model(seed: int, *, layers: int = 2, vocab: int = TINY_VOCAB, hidden: int = 32) -> LlamaModel:
    """A random Qwen2-shaped model; different seeds give models that often disagree."""
    config = ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4,
                         attention_bias=True, tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = LlamaModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # sharp enough distributions for greedy decoding to be stable
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="session")
def slm() -> LlamaModel:
    return tiny_model(1)


@pytest.fixture(scope="session")
def llm() -> LlamaModel:
    return tiny_model(2, layers=3)
