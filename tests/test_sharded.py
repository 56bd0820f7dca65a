"""Tensor parallelism: a model sharded over N devices (any N, uneven shares, N > KV heads) gives the
unsharded model's logits, through the star allreduce, in threads and in real worker processes."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from edgecloud.kernels.collectives import StarAllreduce
from edgecloud.kernels.curve import write_group_keys
from edgecloud.models.config import ModelConfig
from edgecloud.models.llama import LlamaModel
from edgecloud.models.loader import save_model
from edgecloud.models.sharded import ShardedModel, TensorParallelGroup, serve_worker, write_shards
from edgecloud.models.sharding import ShardPlan, apportion
from edgecloud.models.tp_worker import local_group

PROMPT = [3, 14, 15, 9, 2, 6, 40]
GROUPS = [(1, None), (2, None), (2, [3, 1]), (3, None), (3, [1, 2, 1]), (4, None), (5, None), (5, [5, 1, 1, 1, 2])]


@pytest.fixture(scope="module")
def qwen2(make_tiny_model) -> LlamaModel:
    """The tests' trained tiny Qwen2 (4 query heads, 2 KV heads, q/k/v bias, tied embeddings)."""
    return make_tiny_model(31, layers=2)


@pytest.fixture(scope="module")
def llama() -> LlamaModel:
    """A random Llama (no bias, untied head): 8 query heads over 2 KV heads, 3 layers, so uneven shards
    split KV groups at odd places."""
    config = ModelConfig(model_type="llama", vocab_size=96, hidden_size=64, intermediate_size=160, num_layers=3,
                         num_heads=8, num_kv_heads=2, head_dim=8, tie_word_embeddings=False, rope_theta=10000.0)
    torch.manual_seed(5)
    model = LlamaModel(config).eval()
    for name, p in model.named_parameters():  # wide enough that the greedy tokens vary with the context
        p.data.fill_(1.0) if "norm" in name else p.data.normal_(0, 0.3)
    return model


def greedy(model: LlamaModel, prompt: list[int], steps: int) -> list[int]:
    ids, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(steps):
            token = int(model(torch.tensor([ids]))[0, -1].argmax())
            out.append(token)
            ids.append(token)
    return out


def start_group(model: LlamaModel, ways: int, weights) -> tuple[TensorParallelGroup, list[threading.Thread]]:
    plan = ShardPlan.build(model.config, ways, weights)
    state = model.state_dict()
    shards = [ShardedModel.from_state(plan, r, plan.shard_state(state, r)) for r in range(ways)]
    if ways == 1:
        return TensorParallelGroup(shards[0]), []
    master = StarAllreduce.master("tcp://127.0.0.1:*", ways, timeout_s=20)
    workers = [StarAllreduce.worker(master.address, r, ways, timeout_s=20) for r in range(1, ways)]

    def work(shard: ShardedModel, collective: StarAllreduce) -> None:
        collective.connect()
        serve_worker(shard, collective)
        collective.close()

    threads = [threading.Thread(target=work, args=(s, c), daemon=True) for s, c in zip(shards[1:], workers, strict=True)]
    for thread in threads:
        thread.start()
    master.connect()
    return TensorParallelGroup(shards[0], master), threads


def check_against(model: LlamaModel, group: TensorParallelGroup, atol: float = 1e-5) -> None:
    """Prefill, greedy decode, then a crop and a different continuation: logits as the whole model's."""
    def reference(ids: list[int]) -> torch.Tensor:
        with torch.inference_mode():
            return model(torch.tensor([ids]))[0]  # (T, V)

    torch.testing.assert_close(group.forward(torch.tensor([PROMPT]))[0], reference(PROMPT), rtol=1e-5, atol=atol)
    ids = list(PROMPT)
    for _ in range(6):
        token = int(reference(ids)[-1].argmax())
        ids.append(token)
        torch.testing.assert_close(group.forward(torch.tensor([[token]]))[0, -1], reference(ids)[-1],
                                   rtol=1e-5, atol=atol)
    group.crop(len(PROMPT) + 2)  # a rejected draft: every device forgets the same tokens
    window = [5, 1, 7]
    ids = ids[:len(PROMPT) + 2] + window
    torch.testing.assert_close(group.forward(torch.tensor([window]))[0], reference(ids)[-3:], rtol=1e-5, atol=atol)


def test_the_test_models_give_varied_context_dependent_tokens(qwen2, llama) -> None:
    for model in (qwen2, llama):
        outputs = {tuple(greedy(model, prompt, 12)) for prompt in (PROMPT, [7, 7, 1], [30, 2, 9, 11])}
        assert len(outputs) == 3  # each prompt its own answer
        assert all(len(set(out)) >= 6 for out in outputs)


def test_shares_follow_the_weights_for_any_n() -> None:
    assert apportion(14, [1, 1, 1]) == [5, 5, 4]
    assert apportion(12, [2, 1, 1]) == [6, 3, 3]
    assert apportion(4, [1] * 5) == [1, 1, 1, 1, 0]
    config = ModelConfig(model_type="qwen2", vocab_size=10, hidden_size=1536, intermediate_size=8960, num_layers=1,
                         num_heads=12, num_kv_heads=2, head_dim=128)  # Qwen2.5-Coder-1.5B's attention
    plan = ShardPlan.build(config, 3, [2, 1, 1])
    assert [s.heads for s in plan.shards] == [(0, 6), (6, 9), (9, 12)]
    assert [s.kv_heads for s in plan.shards] == [(0, 1), (1, 2), (1, 2)]
    assert plan.replicated_kv_heads == 1  # KV head 1 is computed on ranks 1 and 2
    assert sum(s.mlp[1] - s.mlp[0] for s in plan.shards) == 8960
    with pytest.raises(ValueError, match="weights"):
        ShardPlan.build(config, 2, [1, 0, 1])


@pytest.mark.parametrize(("ways", "weights"), GROUPS)
@pytest.mark.parametrize("name", ["qwen2", "llama"])
def test_sharded_equals_unsharded(name: str, ways: int, weights, request) -> None:
    model = request.getfixturevalue(name)
    group, threads = start_group(model, ways, weights)
    try:
        check_against(model, group)
    finally:
        group.close()
        for thread in threads:
            thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads)  # every worker stopped when told


def test_a_shard_holds_its_own_slices_only(llama) -> None:
    """Together the shards hold the model once, plus the replicated norms and the replicated K/V heads."""
    plan = ShardPlan.build(llama.config, 3, [1, 2, 1])
    state = llama.state_dict()
    shards = [plan.shard_state(state, r) for r in range(3)]
    assert "embed_tokens.weight" in shards[0] and "lm_head.weight" in shards[0]
    assert not any(k in shards[r] for r in (1, 2) for k in ("embed_tokens.weight", "lm_head.weight", "norm.weight"))
    norms = sum(t.numel() for k, t in state.items() if "layernorm" in k)
    cfg = llama.config
    kv_extra = plan.replicated_kv_heads * cfg.head_dim * cfg.hidden_size * 2 * cfg.num_layers  # k and v rows
    assert plan.replicated_kv_heads == 2  # heads [0,2) [2,6) [6,8), groups of 4: KV 0 on ranks 0-1, KV 1 on 1-2
    assert sum(t.numel() for shard in shards for t in shard.values()) == \
        sum(t.numel() for t in state.values()) + 2 * norms + kv_extra


@pytest.mark.parametrize("curve", [False, True])
def test_greedy_generation_through_worker_processes(llama, tmp_path: Path, curve: bool) -> None:
    """Pre-split files, workers as real processes that read only their own file: greedy == the whole model
    (also with the group's links encrypted and members-only: CURVE keys)."""
    source = save_model(llama, tmp_path / "model")
    write_shards(source, tmp_path / "shards", 3, [1, 2, 1])
    keys = tmp_path / "keys" if curve else None
    if keys is not None:
        write_group_keys(keys)
    with local_group(tmp_path / "shards", curve_keys=keys) as group:
        check_against(llama, group)
        group.reset()
        out, logits = [], group.forward(torch.tensor([PROMPT]))
        for _ in range(16):
            out.append(int(logits[0, -1].argmax()))
            logits = group.forward(torch.tensor([[out[-1]]]))
    assert out == greedy(llama, PROMPT, 16)


@pytest.mark.parametrize("window", [1, 2])
def test_a_memory_window_gives_the_same_logits(llama, tmp_path: Path, window: int) -> None:
    """Layers read from disk as the forward reaches them, at most ``window`` in RAM: bit-identical logits."""
    source = save_model(llama, tmp_path / "model")
    write_shards(source, tmp_path / "shards", 2, [1, 2])
    with local_group(tmp_path / "shards") as full:
        expected = [full.forward(torch.tensor([PROMPT]))] + [full.forward(torch.tensor([[t]])) for t in (4, 9, 1)]
    with local_group(tmp_path / "shards", memory_window=window) as windowed:
        assert windowed.model.window is not None
        got = [windowed.forward(torch.tensor([PROMPT]))] + [windowed.forward(torch.tensor([[t]])) for t in (4, 9, 1)]
        resident = [layer for layer in windowed.model.layers if not layer.input_layernorm.weight.is_meta]
        assert len(resident) <= window  # between forwards: only the prefetched first layers
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_peak_memory_with_a_window_of_two_stays_within_its_bound(tmp_path: Path) -> None:
    """8 layers of 16 MiB each (fp32): loaded whole a process peaks above the model's 128 MiB; with a
    window of 2 it stays below 3 layers + the embedding and head + 40 MiB of slack."""
    config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=512, intermediate_size=2048, num_layers=8,
                         num_heads=8, num_kv_heads=4, head_dim=64, tie_word_embeddings=False, rope_theta=10000.0)
    torch.manual_seed(0)
    write_shards(save_model(LlamaModel(config), tmp_path / "model"), tmp_path / "shards", 1)
    layer_mib = (4 * 512 * 512 - 2 * 512 * 256 + 3 * 512 * 2048) * 4 / 2 ** 20  # q, o full; k, v half; MLP
    resident_mib = 2 * 64 * 512 * 4 / 2 ** 20

    def peak_over_baseline_mib(*window: str) -> float:
        out = subprocess.run([sys.executable, str(Path(__file__).parent / "rss_probe.py"), str(tmp_path / "shards"),
                              *window], capture_output=True, text=True, check=True).stdout.split()
        return (int(out[1]) - int(out[0])) / 1024

    whole, windowed = peak_over_baseline_mib(), peak_over_baseline_mib("2")
    assert whole > 8 * layer_mib
    assert windowed < 3 * layer_mib + resident_mib + 40, (whole, windowed, layer_mib)


def test_a_too_long_window_is_refused_before_any_device_hears_of_it(llama) -> None:
    group, threads = start_group(llama, 2, None)
    limit = llama.config.max_position_embeddings
    try:
        with pytest.raises(ValueError, match="exceed the model's context"):
            group.forward(torch.zeros(1, limit + 1, dtype=torch.long))
        check_against(llama, group)  # the workers are still there, in step
    finally:
        group.close()
        for thread in threads:
            thread.join(timeout=20)
