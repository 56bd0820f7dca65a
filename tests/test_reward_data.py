"""Reward-data collection on tiny random models: recorded columns equal a direct computation; resume."""

from __future__ import annotations

import json
import sysconfig
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from edgecloud.evaluation import reward_data
from edgecloud.evaluation.reward_data import (
    CollectConfig,
    DataDirectory,
    RewardDataError,
    collect,
    generate_answer,
    read_shard,
    window_starts,
)
from edgecloud.models.generate import generate_ids
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.calibration import code_tasks

SPLIT = "held-out"
CONFIG = CollectConfig(slm="tiny-slm", llm="tiny-llm", splits=(SPLIT,), max_files=2, max_windows_per_file=2,
                       window_tokens=24, tasks=3, max_new_tokens=6, sequences_per_shard=2, dtype="fp32")


@pytest.fixture(scope="module")
def setup(tiny_tokenizer_folder, make_tiny_model):
    tokenizer = Tokenizer.from_folder(tiny_tokenizer_folder)
    slm = make_tiny_model(21, vocab=tokenizer.vocab_size)
    llm = make_tiny_model(22, vocab=tokenizer.vocab_size, layers=3)
    return slm, llm, tokenizer


@pytest.fixture(scope="module")
def collected(setup, tmp_path_factory):
    slm, llm, tokenizer = setup
    out = tmp_path_factory.mktemp("reward-data")
    stats = collect(slm, llm, tokenizer, CONFIG, out, progress=False)
    return out, stats


def _shards(out: Path, source: str) -> list[tuple[dict[str, torch.Tensor], dict[str, str]]]:
    return [read_shard(path) for path in sorted(out.glob(f"{SPLIT}-{source}-*.safetensors"))]


def _direct(model, ids: list[int]) -> dict[str, torch.Tensor]:
    """Full-sequence forward and a softmax by hand, per position."""
    with torch.no_grad():
        hidden = model.forward_layers(model.embed(torch.tensor([ids])), 0, model.config.num_layers)
        logits = model(torch.tensor([ids]))[0].double()  # (T, V)
    exp = (logits - logits.max(-1, keepdim=True).values).exp()
    probs = exp / exp.sum(-1, keepdim=True)
    top = probs.sort(-1, descending=True).values
    return {"entropy": -(probs * probs.log()).sum(-1), "max_prob": top[:, 0], "margin": top[:, 0] - top[:, 1],
            "greedy": logits.argmax(-1), "logprobs": probs.log(), "hidden": model.norm(hidden)[0]}


def _check_rows(tensors, rows: torch.Tensor, slm_d, llm_d, positions: slice) -> None:
    for name in ("entropy", "max_prob", "margin"):
        torch.testing.assert_close(tensors[name][rows].double(), slm_d[name][positions], atol=1e-5, rtol=1e-5)
    slm_greedy, llm_greedy = slm_d["greedy"][positions], llm_d["greedy"][positions]
    assert torch.equal(tensors["slm_token"][rows].long(), slm_greedy)
    assert torch.equal(tensors["llm_token"][rows].long(), llm_greedy)
    assert torch.equal(tensors["agree"][rows].bool(), llm_greedy == slm_greedy)
    expected_logprob = llm_d["logprobs"][positions].gather(-1, slm_greedy[:, None])[:, 0]
    torch.testing.assert_close(tensors["llm_logprob"][rows].double(), expected_logprob, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(tensors["hidden"][rows].float(), slm_d["hidden"][positions].half().float())


def test_teacher_forced_rows_equal_a_direct_computation(setup, collected) -> None:
    slm, llm, tokenizer = setup
    out, _ = collected
    root = Path(sysconfig.get_paths()["stdlib"])
    shards = _shards(out, "teacher-forced")
    assert shards and all(meta["slm"] == "tiny-slm" and meta["llm"] == "tiny-llm" for _, meta in shards)
    seen = 0
    for tensors, meta in shards:
        assert tensors["hidden"].dtype == torch.float16 and tensors["position"].dtype == torch.int32
        for sequence, key in enumerate(json.loads(meta["items"])):
            rel, start = key.rsplit("@", 1)
            ids = tokenizer.encode((root / rel).read_text(errors="replace"))[int(start):int(start) + 24]
            rows = tensors["sequence"] == sequence
            assert torch.equal(tensors["position"][rows], torch.arange(len(ids), dtype=torch.int32))
            _check_rows(tensors, rows, _direct(slm, ids), _direct(llm, ids), slice(None))
            seen += 1
    assert seen == 4  # 2 files x 2 windows


def test_generated_rows_are_the_answer_positions(setup, collected) -> None:
    slm, llm, tokenizer = setup
    out, _ = collected
    tasks = {f"{t.file}:{t.function}:{t.line}": t for t in code_tasks(SPLIT, 3, per_file=4, mixed=True)}
    shards = _shards(out, "generated")
    seen = 0
    for tensors, meta in shards:
        for sequence, key in enumerate(json.loads(meta["items"])):
            task = tasks[key]
            prompt = tokenizer.prompt_ids(task.user, assistant_prefix=task.assistant_prefix)
            answer = list(generate_ids(slm, prompt, max_new_tokens=CONFIG.max_new_tokens))
            rows = tensors["sequence"] == sequence
            count = int(rows.sum())
            # The SLM's teacher-forced greedy tokens are its own answer; it ends at the limit, ``` or EOS.
            assert tensors["slm_token"][rows].tolist() == answer[:count]
            assert count == CONFIG.max_new_tokens or answer[count - 1] in tokenizer.eos_token_ids or \
                "```" in tokenizer.decode(answer[:count][-4:])
            assert torch.equal(tensors["position"][rows], torch.arange(count, dtype=torch.int32))
            ids = prompt + answer[:count]
            scored = slice(len(prompt) - 1, len(ids) - 1)
            _check_rows(tensors, rows, _direct(slm, ids), _direct(llm, ids), scored)
            seen += 1
    assert seen == 3


def test_generate_answer_stops_at_an_end_token(setup) -> None:
    slm, _, tokenizer = setup
    prompt = tokenizer.prompt_ids("def f():")
    free = list(generate_ids(slm, prompt, max_new_tokens=12))
    stopping = replace(tokenizer, eos_token_ids=frozenset({free[3]}))
    answer = generate_answer(slm, stopping, prompt, 12)
    assert answer == free[:free.index(free[3]) + 1]


def test_manifest_and_a_second_run_computes_nothing(setup, collected, monkeypatch) -> None:
    slm, llm, tokenizer = setup
    out, first = collected
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["slm"], manifest["llm"]) == ("tiny-slm", "tiny-llm")
    assert set(manifest["shards"]) == {p.name for p in out.glob("*.safetensors")}
    assert first.shards_written == 4  # 4 windows and 3 tasks, 2 sequences per shard
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    calls = []
    monkeypatch.setattr(reward_data, "record_item", lambda *a, **k: calls.append(a))
    again = collect(slm, llm, tokenizer, CONFIG, out, progress=False)
    assert calls == [] and again.shards_written == 0 and again.skipped_items == 7
    assert {p: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == mtimes


class Crash(RuntimeError):
    pass


def test_an_interrupted_run_resumes_where_it_stopped(setup, collected, tmp_path, monkeypatch) -> None:
    slm, llm, tokenizer = setup
    real = reward_data.record_item
    calls: list[str] = []
    crash_at = [3]

    def failing(*args, **kwargs):
        calls.append(args[3].key)
        if len(calls) == crash_at[0]:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(reward_data, "record_item", failing)
    with pytest.raises(Crash):
        collect(slm, llm, tokenizer, CONFIG, tmp_path, progress=False)
    assert [p.name for p in tmp_path.glob("*.safetensors")] == [f"{SPLIT}-teacher-forced-00000.safetensors"]
    calls.clear()
    crash_at[0] = 0
    stats = collect(slm, llm, tokenizer, CONFIG, tmp_path, progress=False)
    assert stats.skipped_items == 2 and len(calls) == 5
    full, _ = collected
    for name in (p.name for p in full.glob("*.safetensors")):
        done, _ = read_shard(tmp_path / name)
        reference, _ = read_shard(full / name)
        assert all(torch.equal(done[k], reference[k]) for k in reference)


def test_another_model_pair_or_settings_are_refused(setup, collected) -> None:
    slm, llm, tokenizer = setup
    out, _ = collected
    with pytest.raises(RewardDataError, match="one model pair per directory"):
        collect(slm, llm, tokenizer, replace(CONFIG, llm="other-llm"), out, progress=False)
    with pytest.raises(RewardDataError, match="other settings"):
        DataDirectory.open(out, replace(CONFIG, window_tokens=32))
    with pytest.raises(RewardDataError, match="unknown splits"):
        replace(CONFIG, splits=("test",))


def test_window_starts_spread_over_the_text() -> None:
    assert window_starts(100, 10, 1) == [0]
    assert window_starts(100, 10, 3) == [0, 40, 90]  # 10 windows, first, middle, last
    assert window_starts(101, 10, 20) == list(range(0, 100, 10))  # a 1-token tail is dropped
    assert window_starts(1, 10, 4) == []
