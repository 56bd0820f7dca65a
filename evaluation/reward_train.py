"""Fit the reward head on collected data (``reward_data``) and report how well it predicts disagreement.

Standardisation is fitted on the train split and saved in the head; AdamW with weight
decay minimises BCE on ``agree``, class-balanced (the rare disagreements weigh as much as
the agreements) with the bias corrected back afterwards, so that ``RewardHead.predict`` is
still P(agree). Early stopping watches the calibration split. The report gives, on the
held-out split, the AUROC of predicting *disagreement* for the head and for the plain
uncertainty scores (entropy, 1 - max_prob, 1 - margin).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from edgecloud.corpus import Split
from edgecloud.evaluation.reward_data import SOURCES, RewardDataError, read_shard
from edgecloud.routing.reward import KNOWN_FEATURES, SCALAR_FEATURES, RewardHead, RewardHeadError

EVAL_BATCH = 16_384


@dataclass(frozen=True)
class TrainConfig:
    """How the head is fitted."""

    features: tuple[str, ...] = KNOWN_FEATURES
    hidden_units: int = 0  # 0 = linear head, else a 2-layer MLP of this width
    train_sources: tuple[str, ...] = SOURCES  # rows fitted on (and early-stopped on); evaluation reports all
    learning_rate: float = 1e-3
    weight_decay: float = 0.05
    batch_size: int = 512
    max_epochs: int = 40
    patience_epochs: int = 4  # stop after this many epochs without a better calibration loss
    fixed_epochs: int = 8  # used when there is no calibration split
    balance_classes: bool = True
    seed: int = 0
    threads: int = 1  # torch threads while fitting: small matmuls run fastest on one (and share the machine)

    def __post_init__(self) -> None:
        if unknown := set(self.features) - set(KNOWN_FEATURES):
            raise RewardHeadError(f"unknown features {sorted(unknown)}; known: {', '.join(KNOWN_FEATURES)}")
        if unknown := set(self.train_sources) - set(SOURCES):
            raise RewardDataError(f"unknown sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
        if not self.features:
            raise RewardHeadError("no features chosen")
        if self.hidden_units < 0 or min(self.batch_size, self.max_epochs, self.fixed_epochs, self.threads) < 1:
            raise RewardHeadError("hidden_units must be >= 0, and batch_size, epochs and threads >= 1")


@dataclass(frozen=True)
class SplitData:
    """All shards of one split: per-token columns, N rows."""

    hidden: torch.Tensor  # (N, C) float16
    entropy: torch.Tensor  # (N,) float32
    max_prob: torch.Tensor
    margin: torch.Tensor
    position: torch.Tensor  # (N,) int32
    agree: torch.Tensor  # (N,) bool
    source: torch.Tensor  # (N,) int64, index into SOURCES
    slm: str
    llm: str
    shards: int

    def __len__(self) -> int:
        return int(self.agree.shape[0])

    def of_sources(self, sources: Sequence[str]) -> SplitData:
        """The rows of the given sources only."""
        return self.subset(torch.isin(self.source, torch.tensor([SOURCES.index(s) for s in sources])))

    def subset(self, mask: torch.Tensor) -> SplitData:
        columns = ("hidden", "entropy", "max_prob", "margin", "position", "agree", "source")
        return SplitData(**{c: getattr(self, c)[mask] for c in columns}, slm=self.slm, llm=self.llm,
                         shards=self.shards)


def shard_paths(data_dir: str | Path, split: Split) -> list[Path]:
    return sorted(Path(data_dir).glob(f"{split}-*.safetensors"))


def load_split(data_dir: str | Path, split: Split) -> SplitData | None:
    """The split's shards concatenated, or None if it has none; refuses shards of different model pairs."""
    paths = shard_paths(data_dir, split)
    if not paths:
        return None
    parts, pairs = [], set()
    for path in paths:
        tensors, meta = read_shard(path)
        pairs.add((meta.get("slm", ""), meta.get("llm", "")))
        source = SOURCES.index(meta["source"]) if meta.get("source") in SOURCES else -1
        parts.append({**tensors, "source": torch.full((tensors["agree"].shape[0],), source, dtype=torch.int64)})
    if len(pairs) > 1:
        raise RewardDataError(f"{data_dir} mixes model pairs {sorted(pairs)}")
    (slm, llm), = pairs
    cat = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    return SplitData(cat["hidden"], cat["entropy"].float(), cat["max_prob"].float(), cat["margin"].float(),
                     cat["position"], cat["agree"].bool(), cat["source"], slm, llm, len(paths))


def inputs(data: SplitData, features: Sequence[str], index: torch.Tensor | slice = slice(None)) -> torch.Tensor:
    """The head's input rows (B, F), in the order ``RewardHead.featurize`` builds them."""
    parts = [data.hidden[index].float()] if "hidden" in features else []
    scalars = {"entropy": data.entropy, "max_prob": data.max_prob, "margin": data.margin}
    for name in SCALAR_FEATURES:
        if name in features:
            column = torch.log1p(data.position[index].float()) if name == "log_position" else scalars[name][index]
            parts.append(column[:, None])
    return torch.cat(parts, dim=1)


def _batches(count: int, size: int) -> Iterator[slice]:
    for begin in range(0, count, size):
        yield slice(begin, min(begin + size, count))


def fit_standardisation(data: SplitData, features: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std (F,) over the split, accumulated in float64."""
    total = squares = None
    for rows in _batches(len(data), EVAL_BATCH):
        x = inputs(data, features, rows).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        squares = x.pow(2).sum(0) if squares is None else squares + x.pow(2).sum(0)
    mean = total / len(data)
    std = (squares / len(data) - mean.pow(2)).clamp_min(0).sqrt()
    return mean.float(), std.clamp_min(1e-6).float()


@torch.no_grad()
def agreement_logits(head: RewardHead, data: SplitData) -> torch.Tensor:
    """The head's agreement logits (N,) for every row."""
    head.eval()
    return torch.cat([head(inputs(data, head.features, rows)) for rows in _batches(len(data), EVAL_BATCH)])


def _class_weights(agree_rate: float, balance: bool) -> tuple[float, float]:
    """(weight of an agreement, weight of a disagreement); mean weight 1 over the train split."""
    if not balance:
        return 1.0, 1.0
    return 0.5 / agree_rate, 0.5 / (1.0 - agree_rate)


def _weighted_bce(logits: torch.Tensor, agree: torch.Tensor, weights: tuple[float, float]) -> torch.Tensor:
    weight = torch.where(agree, weights[0], weights[1])
    return F.binary_cross_entropy_with_logits(logits, agree.float(), weight=weight)


@dataclass(frozen=True)
class TrainResult:
    head: RewardHead
    epochs: int
    best_epoch: int
    calibration_losses: tuple[float, ...]
    seconds: float


def train_head(train: SplitData, calibration: SplitData | None, config: TrainConfig) -> TrainResult:
    """Fit a head on ``train``; early stopping on ``calibration`` (or ``fixed_epochs`` without it)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train_head(train, calibration, config)
    finally:
        torch.set_num_threads(threads)


def _train_head(train: SplitData, calibration: SplitData | None, config: TrainConfig) -> TrainResult:
    agree_rate = float(train.agree.float().mean()) if len(train) else 0.0
    if not 0.0 < agree_rate < 1.0:
        raise RewardDataError(f"the train split needs both agreements and disagreements (agree rate {agree_rate})")
    started = time.perf_counter()
    weights = _class_weights(agree_rate, config.balance_classes)
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        head = RewardHead(train.hidden.shape[1], features=config.features, hidden_units=config.hidden_units,
                          slm=train.slm, llm=train.llm)
    mean, std = fit_standardisation(train, head.features)
    head.mean.copy_(mean)
    head.std.copy_(std)
    optimizer = torch.optim.AdamW(head.net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    early_stopping = calibration is not None and len(calibration) > 0
    epochs = config.max_epochs if early_stopping else config.fixed_epochs
    best = (math.inf, 0, copy.deepcopy(head.state_dict()))
    losses: list[float] = []
    epoch = 0
    for epoch in range(1, epochs + 1):
        head.train()
        order = torch.randperm(len(train), generator=generator)
        for rows in _batches(len(train), config.batch_size):
            index = order[rows]
            loss = _weighted_bce(head(inputs(train, head.features, index)), train.agree[index], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if not early_stopping:
            continue
        losses.append(float(_weighted_bce(agreement_logits(head, calibration), calibration.agree, weights)))
        if losses[-1] < best[0]:
            best = (losses[-1], epoch, copy.deepcopy(head.state_dict()))
        elif epoch - best[1] >= config.patience_epochs:
            break
    if losses:
        head.load_state_dict(best[2])
    if config.balance_classes:  # undo the prior shift of the balanced loss: predict() is P(agree) again
        last = head.net if isinstance(head.net, torch.nn.Linear) else head.net[-1]
        with torch.no_grad():
            last.bias += math.log(agree_rate / (1.0 - agree_rate))
    return TrainResult(head.eval().requires_grad_(False), epoch, best[1] if losses else epoch, tuple(losses),
                       time.perf_counter() - started)


def auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative's), ties counting half.

    Exact (Mann-Whitney U with average ranks); NaN when a class is empty.
    """
    scores = scores.double().reshape(-1)
    positive = positive.bool().reshape(-1)
    num_pos = int(positive.sum())
    num_neg = positive.numel() - num_pos
    if num_pos == 0 or num_neg == 0:
        return math.nan
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()  # 1-based rank of the last element of each tie group
    average_rank = ends - (counts.double() - 1) / 2
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - num_pos * (num_pos + 1) / 2) / (num_pos * num_neg)


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 5)


def evaluate(head: RewardHead, data: SplitData) -> dict[str, Any]:
    """Base rates and AUROC of predicting disagreement for the head and the plain uncertainty scores."""
    disagree = ~data.agree
    logits = agreement_logits(head, data)
    scores = {"head": -logits, "entropy": data.entropy, "1-max_prob": 1 - data.max_prob, "1-margin": 1 - data.margin}
    log_loss = float(F.binary_cross_entropy_with_logits(logits, data.agree.float())) if len(data) else math.nan
    rate = float(data.agree.float().mean()) if len(data) else math.nan
    base_loss = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)) if 0 < rate < 1 else math.nan
    return {"tokens": len(data), "agree_rate": _finite(rate), "disagree_rate": _finite(1 - rate),
            "auroc_disagreement": {name: _finite(auroc(s, disagree)) for name, s in scores.items()},
            "head_log_loss": _finite(log_loss), "base_rate_log_loss": _finite(base_loss),
            "head_mean_p_agree": _finite(float(torch.sigmoid(logits).mean())) if len(data) else None}


def evaluate_by_source(head: RewardHead, data: SplitData) -> dict[str, Any]:
    """``evaluate`` on the whole split and on each source in it."""
    result = evaluate(head, data)
    result["by_source"] = {name: evaluate(head, data.subset(data.source == i))
                           for i, name in enumerate(SOURCES) if bool((data.source == i).any())}
    return result


def train_and_report(data_dir: str | Path, head_path: str | Path, report_path: str | Path,
                     config: TrainConfig) -> dict[str, Any]:
    """Load the splits, fit the head on train, save it and a JSON report; returns the report."""
    train = load_split(data_dir, "train")
    if train is None:
        raise RewardDataError(f"{data_dir} has no train shards (train-*.safetensors); run `edgecloud reward collect`")
    calibration = load_split(data_dir, "calibration")
    held_out = load_split(data_dir, "held-out")
    for other in (calibration, held_out):
        if other is not None and (other.slm, other.llm) != (train.slm, train.llm):
            raise RewardDataError(f"{data_dir} mixes model pairs: {(train.slm, train.llm)} and {(other.slm, other.llm)}")
    fitted = train.of_sources(config.train_sources)
    if not len(fitted):
        raise RewardDataError(f"{data_dir} has no train rows of the sources {', '.join(config.train_sources)}")
    result = train_head(fitted, None if calibration is None else calibration.of_sources(config.train_sources),
                        config)
    head_path = Path(head_path)
    head_path.parent.mkdir(parents=True, exist_ok=True)
    result.head.save(head_path)
    report: dict[str, Any] = {
        "slm": train.slm, "llm": train.llm, "data": str(data_dir), "head": str(head_path),
        "head_bytes": head_path.stat().st_size, "config": asdict(config),
        "epochs": result.epochs, "best_epoch": result.best_epoch, "train_seconds": round(result.seconds, 2),
        "calibration_losses": [round(v, 5) for v in result.calibration_losses],
        "splits": {name: None if data is None else evaluate_by_source(result.head, data)
                   for name, data in (("train", train), ("calibration", calibration), ("held-out", held_out))},
    }
    Path(report_path).write_text(json.dumps(report, indent=1))
    return report
