"""Shared fixtures: tiny random-weight models of the real architecture (no downloads)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from edgecloud import Client
from edgecloud.models.config import ModelConfig
from edgecloud.models.llama import LlamaModel
from edgecloud.models.loader import save_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.processes import DaemonGroup

TINY_VOCAB = 64
CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TOKENIZER_CORPUS = ["def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
                    "héllo wörld ✓ — naïve café 日本語", "for i in range(10):\n    print(i)\n"] * 20


def write_tiny_tokenizer(folder: Path, vocab_size: int = 300) -> Path:
    """A byte-level BPE tokenizer folder (tokenizer.json + config with a ChatML template)."""
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(TOKENIZER_CORPUS, trainer)
    backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return folder


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


@pytest.fixture(scope="session")
def tiny_tokenizer_folder(tmp_path_factory) -> Path:
    return write_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_tiny_model():
    """The ``tiny_model`` builder, for tests that need their own sizes."""
    return tiny_model


@pytest.fixture(scope="session")
def make_tiny_pair(tiny_tokenizer_folder):
    """Builder of an SLM (2 layers) and an LLM (3 layers) as model folders with the tiny tokenizer."""
    def build(root: Path, seeds: tuple[int, int]) -> dict[str, Path]:
        vocab = Tokenizer.from_folder(tiny_tokenizer_folder).vocab_size
        folders = {}
        for name, seed, layers in (("slm", seeds[0], 2), ("llm", seeds[1], 3)):
            folder = root / name
            shutil.copytree(tiny_tokenizer_folder, folder)
            save_model(tiny_model(seed, vocab=vocab, layers=layers), folder)
            folders[name] = folder
        return folders
    return build


@pytest.fixture(scope="module")
def tiny_cluster(tmp_path_factory, make_tiny_pair):
    """Coordinator, cloud (3-layer tiny LLM) and edge (2-layer tiny SLM) as real processes on port 0."""
    root = tmp_path_factory.mktemp("cluster")
    folders = make_tiny_pair(root, (21, 22))
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                                  "--heartbeat-interval-s", "1"])
        cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]), "--dtype", "fp32",
                                      "--listen", "127.0.0.1:0", "--coordinator", coordinator.address])
        edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                                    "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                                    "--max-tokens-limit", "64"])
        client = Client(coordinator.address, timeout_s=120)
        deadline = time.monotonic() + 60
        while len([n for n in client.status() if n.live]) < 2:
            assert time.monotonic() < deadline, "nodes did not register with the coordinator"
            time.sleep(0.1)
        yield {"client": client, "coordinator": coordinator, "cloud": cloud, "edge": edge, "folders": folders}
        client.close()
