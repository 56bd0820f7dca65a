"""Shared fixtures: tiny random-weight models of the real architecture (no downloads)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgecloud import Client
from edgecloud.models.config import ModelConfig
from edgecloud.models.generate import generate_ids
from edgecloud.models.llama import LlamaModel
from edgecloud.models.loader import save_model
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.models.toy_tokenizer import write_toy_tokenizer
from edgecloud.processes import DaemonGroup

TINY_VOCAB = 64
MODEL_CACHE = Path(tempfile.gettempdir()) / "edgecloud-tiny-models"
# The tiny models are trained for a few hundred steps on a toy language, so that their greedy outputs
# depend on the context (random weights repeat one token, and a test of the router on such models
# passes with the router broken). The language: the next token's logits are a low-rank function of
# the previous three tokens, beta * (U[x1] + s2 * W[x2] + s3 * Z[x3]) @ O, sampled at temperature 1. Both models of a
# pair learn it partly (the LLM with more layers and steps), so they agree often but not always.
TRAINING_RECIPE = "v2-lowrank16-order3-beta5"
TRAIN_STEPS_PER_LAYER = 100  # steps = 100 * (layers + 1): the 2-layer SLM 300, the 3-layer LLM 400


def toy_corpus(vocab: int, *, sequences: int = 512, length: int = 32, rank: int = 16, skip: float = 0.8,
               skip3: float = 0.6, beta: float = 5.0, seed: int = 0) -> torch.Tensor:
    """Token sequences (N, T) of the toy language over ``vocab`` tokens (the same for every model)."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(vocab, rank, generator=g)
    second = torch.randn(vocab, rank, generator=g)
    out = torch.randn(rank, vocab, generator=g) / rank ** 0.5
    third = torch.randn(vocab, rank, generator=g)
    ids = torch.randint(0, vocab, (sequences, 3), generator=g)
    for _ in range(length - 3):
        logits = beta * (first[ids[:, -1]] + skip * second[ids[:, -2]] + skip3 * third[ids[:, -3]]) @ out  # (N, V)
        ids = torch.cat([ids, torch.multinomial(logits.softmax(-1), 1, generator=g)], 1)
    return ids


def _train(model: LlamaModel, seed: int, steps: int, *, batch: int = 8, lr: float = 0.01) -> None:
    data = toy_corpus(model.config.vocab_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif "bias" in name:
                p.zero_()
            else:
                p.normal_(0.0, 0.5 if "embed" in name else 0.02, generator=g)
    model.train().requires_grad_(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend for the cores
    try:
        _steps(model, data, g, steps, batch, lr)
    finally:
        torch.set_num_threads(threads)


def _steps(model: LlamaModel, data: torch.Tensor, g: torch.Generator, steps: int, batch: int, lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        rows = data[torch.randint(0, len(data), (batch,), generator=g)]  # (B, T)
        logits = model(rows[:, :-1])  # (B, T-1, V)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def tiny_model(seed: int, *, layers: int = 2, vocab: int = TINY_VOCAB, hidden: int = 32) -> LlamaModel:
    """A Qwen2-shaped model trained briefly on the toy language; different seeds give different models.

    Trained once per machine: the weights are cached under the temp folder, keyed by everything that
    decides them.
    """
    config = ModelConfig(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_layers=layers, num_heads=4, num_kv_heads=2, head_dim=hidden // 4,
                         attention_bias=True, tie_word_embeddings=True, rope_theta=10000.0)
    torch.manual_seed(seed)
    model = LlamaModel(config)
    steps = TRAIN_STEPS_PER_LAYER * (layers + 1)
    key = f"{TRAINING_RECIPE}-s{seed}-l{layers}-v{vocab}-h{hidden}-n{steps}-torch{torch.__version__}"
    cached = MODEL_CACHE / f"{key}.pt"
    if cached.exists():
        model.load_state_dict(torch.load(cached, weights_only=True))
    else:
        with torch.random.fork_rng():
            _train(model, seed, steps)
        MODEL_CACHE.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), partial)
        partial.replace(cached)  # atomic: concurrent sessions never read half a file
    return model.eval().requires_grad_(False)


GUARD_PROMPTS = ([3, 14, 15, 9, 2, 6], [5, 9, 13, 2, 40], [7, 7, 1], [30, 2, 2, 9, 11, 50, 4])
GUARD_TOKENS = 24
PAIR_SEEDS = (21, 22)  # the tokenizer-vocabulary pair every test uses
TEXT_GUARD_PROMPTS = ("def fib(n):", "for i in range(10):", "héllo wörld", "print(i)")


@dataclass(frozen=True)
class GuardStats:
    slm_distinct: float  # mean over prompts of distinct tokens / tokens in the SLM's greedy output
    llm_distinct: float
    agreement: float  # positions of the LLM's greedy output where the SLM, teacher-forced on it, picks the same
    prompt_dependence: float  # the fewer of the two models' distinct greedy outputs, over the number of prompts


def guard_stats(slm: LlamaModel, llm: LlamaModel, prompts=GUARD_PROMPTS, tokens: int = GUARD_TOKENS) -> GuardStats:
    vocab = slm.config.vocab_size
    prompts = [[t % vocab for t in p] for p in prompts]
    slm_distinct = llm_distinct = 0.0
    agree = 0
    outputs: dict[str, set[tuple[int, ...]]] = {"slm": set(), "llm": set()}
    for prompt in prompts:
        llm_out = list(generate_ids(llm, prompt, max_new_tokens=tokens))
        slm_out = list(generate_ids(slm, prompt, max_new_tokens=tokens))
        outputs["llm"].add(tuple(llm_out))
        outputs["slm"].add(tuple(slm_out))
        llm_distinct += len(set(llm_out)) / tokens / len(prompts)
        slm_distinct += len(set(slm_out)) / tokens / len(prompts)
        with torch.inference_mode():
            logits = slm(torch.tensor([prompt + llm_out]))[0, len(prompt) - 1:-1]  # (tokens, V)
        agree += int((logits.argmax(-1) == torch.tensor(llm_out)).sum())
    return GuardStats(slm_distinct, llm_distinct, agree / (tokens * len(prompts)),
                      min(len(o) for o in outputs.values()) / len(prompts))


def check_guard(slm: LlamaModel, llm: LlamaModel, prompts=GUARD_PROMPTS) -> GuardStats:
    """Fail loudly if the pair cannot tell a broken router from a working one."""
    stats = guard_stats(slm, llm, prompts)
    assert stats.slm_distinct >= 0.5 and stats.llm_distinct >= 0.5, f"greedy outputs repeat themselves: {stats}"
    assert stats.prompt_dependence >= 0.5, f"greedy outputs hardly depend on the prompt: {stats}"
    assert 0.3 <= stats.agreement <= 0.8, f"SLM and LLM agree too rarely or too often: {stats}"
    return stats


@pytest.fixture(scope="session")
def tiny_guard() -> SimpleNamespace:
    """The guard's functions and prompts, for tests (the repository root is not importable)."""
    return SimpleNamespace(check=check_guard, stats=guard_stats, prompts=GUARD_PROMPTS,
                           text_prompts=TEXT_GUARD_PROMPTS, pair_seeds=PAIR_SEEDS)


@pytest.fixture(scope="session")
def tiny_models() -> tuple[LlamaModel, LlamaModel, GuardStats]:
    """The SLM (seed 5, 2 layers) and the LLM (seed 2, 3 layers) over the 64-token vocabulary, guarded.

    Seeds are picked to pass the guard (SLM seed 1 repeats itself a little too much: 0.49 distinct).
    """
    slm, llm = tiny_model(5), tiny_model(2, layers=3)
    return slm, llm, check_guard(slm, llm)


@pytest.fixture(scope="session")
def slm(tiny_models) -> LlamaModel:
    return tiny_models[0]


@pytest.fixture(scope="session")
def llm(tiny_models) -> LlamaModel:
    return tiny_models[1]


@pytest.fixture(scope="session")
def tiny_tokenizer_folder(tmp_path_factory) -> Path:
    return write_toy_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def make_tiny_model():
    """The ``tiny_model`` builder, for tests that need their own sizes."""
    return tiny_model


@pytest.fixture(scope="session")
def make_tiny_pair(tiny_tokenizer_folder):
    """Builder of an SLM (2 layers) and an LLM (3 layers) as model folders with the tiny tokenizer.

    Use ``PAIR_SEEDS``: the guard (checked here) holds for them; other seeds may fail it.
    """
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_folder)
    prompts = [tokenizer.prompt_ids(text) for text in TEXT_GUARD_PROMPTS]

    def build(root: Path, seeds: tuple[int, int]) -> dict[str, Path]:
        models = {"slm": tiny_model(seeds[0], vocab=tokenizer.vocab_size, layers=2),
                  "llm": tiny_model(seeds[1], vocab=tokenizer.vocab_size, layers=3)}
        if seeds not in build.guarded:  # once per session and pair
            build.guarded[seeds] = check_guard(models["slm"], models["llm"], prompts)
        folders = {}
        for name, model in models.items():
            folder = root / name
            shutil.copytree(tiny_tokenizer_folder, folder)
            save_model(model, folder)
            folders[name] = folder
        return folders
    build.guarded = {}  # seeds -> GuardStats
    return build


def _start_tiny_nodes(group: DaemonGroup, folders: dict[str, Path], *, coordinator_args: Sequence[str] = (),
                      node_args: Sequence[str] = (), max_tokens: int = 64) -> tuple:
    """Coordinator, cloud (``folders["llm"]``) and edge (``folders["slm"]``) started in ``group`` on port 0, the
    nodes registering with the coordinator; ``node_args`` go to all three. (coordinator, cloud, edge)."""
    coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                              "--heartbeat-interval-s", "1", *coordinator_args, *node_args])
    cloud = group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]), "--dtype", "fp32",
                                  "--listen", "127.0.0.1:0", "--coordinator", coordinator.address, "--threads", "1",
                                  *node_args])
    edge = group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                                "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                                "--max-tokens-limit", str(max_tokens), "--threads", "1", *node_args])
    return coordinator, cloud, edge


@pytest.fixture(scope="session")
def start_tiny_nodes():
    """``start_tiny_nodes(group, folders, coordinator_args=..., node_args=..., max_tokens=...)``."""
    return _start_tiny_nodes


@pytest.fixture(scope="module")
def tiny_cluster(tmp_path_factory, make_tiny_pair):
    """Coordinator, cloud (3-layer tiny LLM) and edge (2-layer tiny SLM) as real processes on port 0."""
    root = tmp_path_factory.mktemp("cluster")
    folders = make_tiny_pair(root, PAIR_SEEDS)
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator, cloud, edge = _start_tiny_nodes(group, folders)
        client = Client(coordinator.address, timeout_s=120)
        client.wait_for_nodes(2)
        yield {"client": client, "coordinator": coordinator, "cloud": cloud, "edge": edge, "folders": folders}
        client.close()


@pytest.fixture(scope="session")
def real_llm_folder() -> Path:
    """The real Qwen2.5-Coder-1.5B (slow tests; pulled on first use)."""
    from edgecloud.models import zoo

    return zoo.pull("qwen2.5-coder-1.5b-instruct", progress=False)
