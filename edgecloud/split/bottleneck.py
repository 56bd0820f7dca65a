"""A learned bottleneck at a cut of a sequential CNN, trained BottleFit's way in two stages.

At cut ``k`` the edge runs ``head`` (stages ``[0, k)``) and a small ``encoder`` that squeezes the
(C, H, W) tensor at the cut to ``channels`` channels; those are quantised to int8 and cross the
link; the cloud dequantises, runs a ``decoder`` back to (C, H, W) and the ``tail``.

Quantisation: symmetric int8 with one absmax scale per sample and channel, sent as float32 beside
the int8 values, so a sample costs ``channels * H * W + 4 * channels`` bytes. In training the
quantisation is in the loop with a straight-through estimator (forward: the dequantised int8
values; backward: identity); in eval mode the forward is exactly ``decode(encode(x))``.

1. Head distillation: ``decoder(q(encoder(head'(x))))`` is fitted (MSE) to the ORIGINAL model's
   tensor at the cut, ``head(x)``; trained: encoder, decoder and (``train_head``) a copy head' of
   the head. The original tail is frozen (unused by the loss; it runs after stage 1 for the
   accuracy).
2. Fine-tuning: head' and encoder frozen (eval mode, no gradients, BN statistics kept); a copy of
   the tail and the decoder are trained on the labels (cross-entropy).

Weights are written as safetensors (no pickle) with the configuration in the metadata.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from edgecloud.paths import edgecloud_home
from edgecloud.split.cnn import (
    CNNConfig,
    DigitResNet,
    EpochCallback,
    EpochLog,
    accuracy,
    batches,
    random_shift,
)
from edgecloud.split.sequential import check_cut, cut_profile, split

SCALE_BYTES = 4  # one float32 scale per sample and channel
FORMAT_CNN, FORMAT_BOTTLENECK = "edgecloud.split.cnn/1", "edgecloud.split.bottleneck/1"


# int8 quantisation of the bottleneck, per sample and channel.


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B, C, H, W) int8 in [-127, 127], scales (B, C) float32) with x ~ values * scale."""
    absmax = x.detach().abs().amax(dim=(2, 3))  # (B, C)
    scale = (absmax / 127.0).clamp_min(torch.finfo(torch.float32).tiny).float()  # (B, C)
    values = torch.round(x.detach() / scale[:, :, None, None]).clamp(-127, 127).to(torch.int8)
    return values, scale


def dequantize_int8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 values (B, C, H, W) and scales (B, C) -> float32 (B, C, H, W)."""
    return values.float() * scale[:, :, None, None]


def fake_quantize_int8(x: torch.Tensor) -> torch.Tensor:
    """``dequantize(quantize(x))``; with gradients on, a straight-through estimator (identity backward)."""
    rounded = dequantize_int8(*quantize_int8(x))  # (B, C, H, W)
    return x + (rounded - x).detach() if x.requires_grad else rounded


def int8_bytes(shape: tuple[int, ...]) -> int:
    """Bytes per sample of a (C, H, W) tensor sent as int8 values plus one float32 scale per channel."""
    channels, height, width = shape
    return channels * height * width + SCALE_BYTES * channels


# The modules.


@dataclass(frozen=True)
class BottleneckConfig:
    """Where the bottleneck sits and how it is trained (epochs per stage)."""

    cut: int = 3
    channels: int = 2
    hidden: int = 32  # channels inside encoder and decoder
    train_head: bool = True
    stage1_epochs: int = 8
    stage2_epochs: int = 6
    batch_size: int = 64
    stage1_learning_rate: float = 3e-3
    stage2_learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    max_shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.channels < 1 or self.hidden < 1 or self.batch_size < 1 or self.max_shift < 0:
            raise ValueError(f"invalid bottleneck settings: {self}")
        if self.stage1_epochs < 0 or self.stage2_epochs < 0:
            raise ValueError("epochs must be >= 0")


class Encoder(nn.Module):
    """Edge side: (B, C, H, W) at the cut -> (B, channels, H, W), to be quantised."""

    def __init__(self, in_channels: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Conv2d(in_channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden),
                                    nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    """Cloud side: dequantised (B, channels, H, W) -> (B, C, H, W), an estimate of the tensor at the cut."""

    def __init__(self, channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, 1, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BottleneckedModel(nn.Module):
    """head -> encoder -> int8 -> decoder -> tail; ``encode`` is the edge's half, ``decode`` the cloud's."""

    def __init__(self, head: nn.Module, encoder: Encoder, decoder: Decoder, tail: nn.Module) -> None:
        super().__init__()
        self.head, self.encoder, self.decoder, self.tail = head, encoder, decoder, tail

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Edge: images (B, ...) -> (int8 values (B, c, H, W), float32 scales (B, c)): what crosses."""
        return quantize_int8(self.encoder(self.head(x)))

    @torch.no_grad()
    def decode(self, values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Cloud: int8 values (B, c, H, W) and scales (B, c) -> logits (B, classes)."""
        return self.tail(self.decoder(dequantize_int8(values, scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.decoder(fake_quantize_int8(self.encoder(self.head(x)))))


def build_bottleneck(model: nn.Module, config: BottleneckConfig, cut_shape: tuple[int, ...]) -> BottleneckedModel:
    """Copies of the model's head and tail at ``config.cut`` with a fresh encoder and decoder between them."""
    if len(cut_shape) != 3:
        raise ValueError(f"a bottleneck needs a (C, H, W) tensor at the cut; cut {config.cut} carries "
                         f"shape {cut_shape}")
    head, tail = split(model, config.cut)
    return BottleneckedModel(copy.deepcopy(head), Encoder(cut_shape[0], config.channels, config.hidden),
                             Decoder(config.channels, cut_shape[0], config.hidden), copy.deepcopy(tail))


# Two-stage training.


@dataclass(frozen=True)
class BottleneckReport:
    """Bytes per sample at the cut and test accuracy of each model (shares in [0, 1])."""

    cut: int
    after: str  # last stage on the edge
    cut_shape: tuple[int, ...]
    channels: int
    input_uint8_bytes: int  # the raw image as 8-bit pixels: what cut 0 could send
    fp32_bytes: int  # the tensor at the cut as float32
    int8_bytes: int  # the same tensor with the int8 codec alone (no encoder)
    bottleneck_bytes: int  # the encoder's output as int8 plus scales
    original_accuracy: float
    int8_accuracy: float  # original model, int8 codec at the cut
    stage1_accuracy: float  # trained head' + encoder + decoder, original tail
    stage2_accuracy: float  # after fine-tuning decoder and tail
    stage1_relative_mse: float  # test images: |decoded - original|^2 / |original|^2 at the cut
    stage1_seconds: float
    stage2_seconds: float

    @property
    def reduction(self) -> float:
        """Share of the fp32 bytes at the cut that the bottleneck saves."""
        return 1.0 - self.bottleneck_bytes / self.fp32_bytes


def _set_trainable(modules: Iterable[nn.Module], trainable: bool) -> None:
    for module in modules:
        module.train(trainable)
        for p in module.parameters():
            p.requires_grad_(trainable)


def _params(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def _optimizer(params: list[nn.Parameter], learning_rate: float, weight_decay: float,
               steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=max(steps, 1))


class _WithCodec(nn.Module):
    """The original model with the int8 codec alone at the cut (the baseline without an encoder)."""

    def __init__(self, head: nn.Module, tail: nn.Module) -> None:
        super().__init__()
        self.head, self.tail = head, tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(fake_quantize_int8(self.head(x)))


@torch.no_grad()
def _relative_mse(student: BottleneckedModel, teacher_head: nn.Module, x: torch.Tensor,
                  batch_size: int = 500) -> float:
    """Squared error of the decoded tensor at the cut over the squared teacher tensor, summed over ``x``."""
    student.eval()
    error = energy = 0.0
    for chunk in x.split(batch_size):
        target = teacher_head(chunk)  # (B, C, H, W)
        estimate = student.decoder(fake_quantize_int8(student.encoder(student.head(chunk))))
        error += F.mse_loss(estimate, target, reduction="sum").item()
        energy += target.square().sum().item()
    return error / energy


def distill_step(student: BottleneckedModel, teacher_head: nn.Module, x: torch.Tensor,
                 optimizer: torch.optim.Optimizer) -> float:
    """One step of stage 1 on images (B, ...): MSE of the decoded tensor against the teacher's."""
    with torch.no_grad():
        target = teacher_head(x)  # (B, C, H, W)
    estimate = student.decoder(fake_quantize_int8(student.encoder(student.head(x))))
    loss = F.mse_loss(estimate, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def finetune_step(student: BottleneckedModel, x: torch.Tensor, y: torch.Tensor,
                  optimizer: torch.optim.Optimizer) -> float:
    """One step of stage 2 on images (B, ...) and labels (B,): cross-entropy through the frozen edge half."""
    with torch.no_grad():
        sent = fake_quantize_int8(student.encoder(student.head(x)))  # (B, c, H, W), frozen edge
    loss = F.cross_entropy(student.tail(student.decoder(sent)), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _run_epochs(stage: str, epochs: int, frozen: list[nn.Module], trainable: list[nn.Module],
                learning_rate: float, config: BottleneckConfig, train_x: torch.Tensor, generator: torch.Generator,
                step: Callable[[torch.Tensor, torch.Tensor, torch.optim.Optimizer], float],
                measure: Callable[[], float | None], on_epoch: EpochCallback | None) -> None:
    """``epochs`` passes over ``train_x`` (shifted at random), training ``trainable`` only."""
    optimizer, schedule = _optimizer(_params(trainable), learning_rate, config.weight_decay,
                                     epochs * -(-len(train_x) // config.batch_size))
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        _set_trainable(frozen, False)  # eval mode too: frozen BN layers keep their statistics
        _set_trainable(trainable, True)
        total = 0.0
        for rows in batches(len(train_x), config.batch_size, generator):
            total += step(random_shift(train_x[rows], config.max_shift, generator), rows, optimizer) * len(rows)
            schedule.step()
        _set_trainable([*frozen, *trainable], False)
        if on_epoch:
            on_epoch(EpochLog(stage, epoch, epochs, total / len(train_x), measure(), time.perf_counter() - started))


def distill(student: BottleneckedModel, teacher_head: nn.Module, train_x: torch.Tensor, config: BottleneckConfig,
            generator: torch.Generator, on_epoch: EpochCallback | None = None) -> None:
    """Stage 1 in place: encoder, decoder (and head' if ``config.train_head``) fitted to ``teacher_head``."""
    teacher_head.eval()
    trainable = [student.encoder, student.decoder, *([student.head] if config.train_head else [])]
    frozen = [student.tail, *([] if config.train_head else [student.head])]
    _run_epochs("head distillation", config.stage1_epochs, frozen, trainable, config.stage1_learning_rate, config,
                train_x, generator, lambda x, _, opt: distill_step(student, teacher_head, x, opt), lambda: None,
                on_epoch)


def finetune(student: BottleneckedModel, train_x: torch.Tensor, train_y: torch.Tensor, config: BottleneckConfig,
             generator: torch.Generator, test: tuple[torch.Tensor, torch.Tensor] | None = None,
             on_epoch: EpochCallback | None = None) -> None:
    """Stage 2 in place: decoder and tail trained on the labels, head' and encoder frozen.

    ``test`` (images, labels), if given, is measured after each epoch for the log only.
    """
    _run_epochs("fine-tuning", config.stage2_epochs, [student.head, student.encoder],
                [student.decoder, student.tail], config.stage2_learning_rate, config, train_x, generator,
                lambda x, rows, opt: finetune_step(student, x, train_y[rows], opt),
                lambda: accuracy(student, *test) if test else None, on_epoch)


def train_bottleneck(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, config: BottleneckConfig = BottleneckConfig(),
                     on_epoch: EpochCallback | None = None) -> tuple[BottleneckedModel, BottleneckReport]:
    """Both stages on a trained ``model`` (left unchanged); the bottlenecked model and its report.

    Test accuracy is measured after each epoch for the log only: nothing is selected on it.
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.eval()
    profile = cut_profile(model, test_x[:2])[check_cut(model, config.cut)]
    teacher_head, teacher_tail = split(model, config.cut)
    student = build_bottleneck(model, config, profile.shape)

    started = time.perf_counter()
    distill(student, teacher_head, train_x, config, generator, on_epoch)
    stage1_seconds = time.perf_counter() - started
    stage1_relative_mse = _relative_mse(student, teacher_head, test_x)
    stage1 = BottleneckedModel(student.head, student.encoder, student.decoder, teacher_tail).eval()
    stage1_accuracy = accuracy(stage1, test_x, test_y)

    started = time.perf_counter()
    finetune(student, train_x, train_y, config, generator, (test_x, test_y), on_epoch)
    stage2_seconds = time.perf_counter() - started
    _set_trainable([student], False)

    report = BottleneckReport(
        cut=config.cut, after=profile.after, cut_shape=profile.shape, channels=config.channels,
        input_uint8_bytes=test_x[0].numel(), fp32_bytes=profile.numel * 4, int8_bytes=int8_bytes(profile.shape),
        bottleneck_bytes=int8_bytes((config.channels, *profile.shape[1:])),
        original_accuracy=accuracy(model, test_x, test_y),
        int8_accuracy=accuracy(_WithCodec(teacher_head, teacher_tail).eval(), test_x, test_y),
        stage1_accuracy=stage1_accuracy, stage2_accuracy=accuracy(student, test_x, test_y),
        stage1_relative_mse=stage1_relative_mse, stage1_seconds=stage1_seconds, stage2_seconds=stage2_seconds)
    return student, report


# Weights on disk (safetensors: tensors and a JSON header, nothing executable).


def weights_dir() -> Path:
    """Where trained split-computing weights go: ``<edgecloud home>/split``."""
    path = edgecloud_home() / "split"
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_cnn_path(seed: int = 0) -> Path:
    """Cache file of the base CNN trained with ``seed``."""
    return weights_dir() / f"digit-resnet-seed{seed}.safetensors"


def default_bottleneck_path(cut: int, channels: int, seed: int = 0) -> Path:
    """Cache file of a bottlenecked model."""
    return weights_dir() / f"digit-bottleneck-cut{cut}-c{channels}-seed{seed}.safetensors"


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}


def _save(path: Path, module: nn.Module, metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def _check_format(path: Path, expected: str) -> dict[str, str]:
    meta = _metadata(path)
    if meta.get("format") != expected:
        raise ValueError(f"{path} is not a {expected} file (format {meta.get('format', 'missing')!r})")
    return meta


def save_cnn(path: Path, model: DigitResNet, test_accuracy: float | None = None) -> None:
    """Write the base CNN's weights and configuration."""
    meta = {"format": FORMAT_CNN, "cnn": json.dumps(asdict(model.config))}
    if test_accuracy is not None:
        meta["test_accuracy"] = f"{test_accuracy:.4f}"
    _save(path, model, meta)


def load_cnn(path: Path) -> DigitResNet:
    """The base CNN written by ``save_cnn``, in eval mode."""
    meta = _check_format(path, FORMAT_CNN)
    cnn = json.loads(meta["cnn"])
    model = DigitResNet(CNNConfig(widths=tuple(cnn["widths"]), classes=cnn["classes"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def save_bottleneck(path: Path, model: BottleneckedModel, cnn: CNNConfig, config: BottleneckConfig,
                    report: BottleneckReport | None = None) -> None:
    """Write the bottlenecked model (head', encoder, decoder, tail') with its configurations."""
    meta = {"format": FORMAT_BOTTLENECK, "cnn": json.dumps(asdict(cnn)), "bottleneck": json.dumps(asdict(config))}
    if report is not None:
        meta["report"] = json.dumps(asdict(report))
    _save(path, model, meta)


def load_bottleneck(path: Path) -> tuple[BottleneckedModel, BottleneckConfig]:
    """The bottlenecked model written by ``save_bottleneck`` (eval mode) and its configuration."""
    meta = _check_format(path, FORMAT_BOTTLENECK)
    cnn = json.loads(meta["cnn"])
    config = BottleneckConfig(**json.loads(meta["bottleneck"]))
    base = DigitResNet(CNNConfig(widths=tuple(cnn["widths"]), classes=cnn["classes"]))
    shape = cut_profile(base, torch.zeros(2, 1, 28, 28))[config.cut].shape
    model = build_bottleneck(base, config, shape)
    model.load_state_dict(load_file(str(path)))
    return model.eval(), config
