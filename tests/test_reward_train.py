"""Reward-head training on a synthetic data set with a known rule; AUROC; the saved head; the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from edgecloud.cli import app
from edgecloud.evaluation.reward_data import Records, write_shard
from edgecloud.evaluation.reward_train import TrainConfig, auroc, inputs, load_split, train_and_report
from edgecloud.routing.features import TokenFeatures
from edgecloud.routing.reward import RewardHead

CHANNELS = 16
SIZES = {"train": 6000, "calibration": 1500, "held-out": 3000}


def _direction() -> torch.Tensor:
    return torch.randn(CHANNELS, generator=torch.Generator().manual_seed(7))


def _synthetic_records(count: int, seed: int) -> Records:
    """agree = sigmoid(w . hidden + b) > u: the label is a known (noisy) function of the hidden state."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(count, CHANNELS, generator=g)
    w = _direction()
    logit = 8.0 * hidden @ (w / w.norm()) + 4.0  # about 70% agreement
    agree = torch.sigmoid(logit) > torch.rand(count, generator=g)
    uniform = torch.rand(count, generator=g)
    return Records({"hidden": hidden.half(), "entropy": 3 * uniform, "max_prob": 1 - uniform / 2,
                    "margin": 1 - uniform, "llm_logprob": torch.zeros(count),
                    "position": torch.randint(0, 100, (count,), generator=g, dtype=torch.int32),
                    "agree": agree.to(torch.uint8), "slm_token": torch.zeros(count, dtype=torch.int32),
                    "llm_token": torch.zeros(count, dtype=torch.int32), "sequence": torch.zeros(count, dtype=torch.int32)})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    for seed, (split, count) in enumerate(SIZES.items()):
        half = count // 2  # two shards per split, two sources
        for index, source in enumerate(("teacher-forced", "generated")):
            write_shard(root / f"{split}-{source}-{index:05d}.safetensors", [_synthetic_records(half, 10 * seed + index)],
                        {"slm": "s", "llm": "l", "source": source, "split": split, "files": [], "items": []})
    return root


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("head") / "head.safetensors"
    report = train_and_report(data_dir, out, out.with_suffix(".json"), TrainConfig(learning_rate=1e-2, max_epochs=40))
    return out, report


def test_auroc_matches_hand_computed_examples() -> None:
    # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts half: (0.5 + 1 + 1 + 1) / 4
    assert auroc(torch.tensor([0.5, 0.5, 0.2, 0.9]), torch.tensor([1, 0, 0, 1])) == 0.875
    # positives {2, 2, 1} vs negatives {2, 1}: 0.5 + 1 + 0.5 + 1 + 0 + 0.5 = 3.5 of 6
    assert auroc(torch.tensor([2.0, 2.0, 1.0, 2.0, 1.0]), torch.tensor([1, 1, 1, 0, 0])) == pytest.approx(3.5 / 6)
    assert auroc(torch.ones(5), torch.tensor([1, 0, 1, 0, 0])) == 0.5
    assert math.isnan(auroc(torch.rand(3), torch.zeros(3)))


def test_training_recovers_the_rule(trained) -> None:
    out, report = trained
    held_out = report["splits"]["held-out"]
    assert held_out["auroc_disagreement"]["head"] > 0.95
    assert abs(held_out["auroc_disagreement"]["entropy"] - 0.5) < 0.05  # noise features carry nothing
    assert set(held_out["by_source"]) == {"teacher-forced", "generated"}
    # the bias correction after class balancing keeps predict() a probability
    assert abs(held_out["head_mean_p_agree"] - held_out["agree_rate"]) < 0.03
    head = RewardHead.load(out)
    w = _direction()
    learned = head.net.weight[0, :CHANNELS] / head.std[:CHANNELS]  # the direction in raw hidden units
    assert torch.nn.functional.cosine_similarity(learned, w, dim=0) > 0.95
    assert report["best_epoch"] >= 1 and report["calibration_losses"]


def test_saved_head_round_trips_and_is_small(trained, data_dir) -> None:
    out, report = trained
    assert out.stat().st_size < 10_000 and report["head_bytes"] == out.stat().st_size
    head = RewardHead.load(out, slm="s", llm="l")
    assert head.features == ("hidden", "entropy", "max_prob", "margin", "log_position")
    data = load_split(data_dir, "held-out")
    x = inputs(data, head.features, slice(0, 5))
    for row in range(5):
        features = TokenFeatures(float(data.entropy[row]), float(data.max_prob[row]), float(data.margin[row]),
                                 int(data.position[row]), data.hidden[row].float())
        torch.testing.assert_close(head.featurize(features), x[row])  # training rows = runtime features
        assert head.predict(features) == pytest.approx(float(torch.sigmoid(head(x[row:row + 1]).detach())[0]), abs=1e-6)
    with pytest.raises(ValueError, match="trained for LLM"):
        RewardHead.load(out, llm="another")
    assert json.loads(out.with_suffix(".json").read_text())["slm"] == "s"


def test_feature_subset_and_mlp(data_dir, tmp_path) -> None:
    out = tmp_path / "mlp.safetensors"
    report = train_and_report(data_dir, out, tmp_path / "r.json",
                              TrainConfig(features=("entropy", "margin"), hidden_units=8, max_epochs=3,
                                          train_sources=("generated",)))
    head = RewardHead.load(out)
    assert head.features == ("entropy", "margin") and head.hidden_units == 8
    assert report["splits"]["held-out"]["auroc_disagreement"]["head"] < 0.6  # the noise features only
    assert report["splits"]["held-out"]["tokens"] == SIZES["held-out"]  # evaluated on every source


def test_cli_reports_bad_input(tmp_path, data_dir) -> None:
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["reward", "train", "--data", str(empty), "--out", str(tmp_path / "h.safetensors")])
    assert result.exit_code == 2 and "no train shards" in " ".join(result.output.split())
    result = runner.invoke(app, ["reward", "train", "--data", str(data_dir), "--out", str(tmp_path / "h.safetensors"),
                                 "--features", "hidden,perplexity"])
    assert result.exit_code == 2 and "unknown features" in result.output
    result = runner.invoke(app, ["reward", "collect", "--out", str(tmp_path / "d"), "--dtype", "int8"])
    assert result.exit_code == 2 and "unknown dtype" in result.output
    result = runner.invoke(app, ["reward", "train", "--data", str(data_dir), "--out", str(tmp_path / "h.safetensors"),
                                 "--max-epochs", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "h.report.json").is_file()
