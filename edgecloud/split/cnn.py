"""A small ResNet-style CNN for 28x28 digits, built as a sequence of stages so that it can be cut
between any two of them (see ``edgecloud.split.sequential``), and its training loop.

Stages: ``stem`` (normalise, 3x3 conv, BN, ReLU), ``block1`` (residual, full resolution),
``block2`` and ``block3`` (residual, stride 2 each), ``pool`` (global average) and ``fc`` (linear).
With the default widths (16, 32, 64) the tensor at the cuts is (1,28,28) input, (16,28,28),
(16,28,28), (32,14,14), (64,7,7), (64,) and (10,) logits.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CLASSES = 10


@dataclass(frozen=True)
class CNNConfig:
    """Shape of the network: channels of the stem/block1, block2 and block3."""

    widths: tuple[int, int, int] = (16, 32, 64)
    classes: int = CLASSES

    def __post_init__(self) -> None:
        if len(self.widths) != 3 or min(self.widths) < 1 or self.classes < 2:
            raise ValueError(f"widths must be three positive channel counts and classes >= 2, not "
                             f"{self.widths}, {self.classes}")


class Normalize(nn.Module):
    """(x - mean) / std with fixed MNIST statistics: the network takes pixels in [0, 1]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - MNIST_MEAN) / MNIST_STD


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (1x1 conv-BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))  # (B, C_out, H / s, W / s)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class DigitResNet(nn.Module):
    """The classifier: ``stages`` applied in order, images (B, 1, 28, 28) in [0, 1] -> logits (B, 10)."""

    def __init__(self, config: CNNConfig = CNNConfig()) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.stages = nn.Sequential(OrderedDict(
            stem=nn.Sequential(Normalize(), nn.Conv2d(1, w1, 3, 1, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU()),
            block1=ResidualBlock(w1, w1),
            block2=ResidualBlock(w1, w2, stride=2),
            block3=ResidualBlock(w2, w3, stride=2),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
            fc=nn.Linear(w3, config.classes),
        ))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)


# Training utilities, shared with the bottleneck's two stages.


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Each image (B, C, H, W) moved by its own random offset of up to ``max_shift`` pixels, zero-filled."""
    if max_shift <= 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (max_shift,) * 4)  # (B, C, H + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, batch, 1), generator=generator)  # (B, 1) each
    rows = dy + torch.arange(height)  # (B, H)
    cols = dx + torch.arange(width)  # (B, W)
    moved = padded[torch.arange(batch)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return moved.permute(0, 3, 1, 2).contiguous()


def batches(count: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Row indices of one epoch in random order, ``batch_size`` at a time (the last batch may be short)."""
    order = torch.randperm(count, generator=generator)
    yield from order.split(batch_size)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes (N,) of images (N, ...) with the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(chunk).argmax(-1) for chunk in x.split(batch_size)])
    finally:
        model.train(was_training)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` (N, ...) classified as ``y`` (N,)."""
    return (predict(model, x) == y).float().mean().item()


@dataclass(frozen=True)
class EpochLog:
    """One finished epoch, for progress output."""

    stage: str
    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss of the epoch
    test_accuracy: float | None  # None where not measured (stage 1 reports MSE only)
    seconds: float  # since the stage started


EpochCallback = Callable[[EpochLog], None]


@dataclass(frozen=True)
class ClassifierTrainConfig:
    """Training of the base CNN: AdamW with a one-cycle learning rate, random shifts as augmentation."""

    epochs: int = 6
    batch_size: int = 64
    learning_rate: float = 4e-3
    weight_decay: float = 5e-4
    max_shift: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.learning_rate <= 0 or self.max_shift < 0:
            raise ValueError(f"invalid training settings: {self}")


def train_classifier(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, config: ClassifierTrainConfig = ClassifierTrainConfig(),
                     on_epoch: EpochCallback | None = None) -> float:
    """Train ``model`` on (N, 1, 28, 28) images and (N,) labels in place; return the test accuracy."""
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train_x) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=steps)
    started, test_accuracy = time.perf_counter(), 0.0
    for epoch in range(1, config.epochs + 1):
        model.train()
        total = 0.0
        for rows in batches(len(train_x), config.batch_size, generator):
            x = random_shift(train_x[rows], config.max_shift, generator)
            loss = F.cross_entropy(model(x), train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        test_accuracy = accuracy(model, test_x, test_y)
        if on_epoch:
            on_epoch(EpochLog("classifier", epoch, config.epochs, total / len(train_x), test_accuracy,
                              time.perf_counter() - started))
    model.eval()
    return test_accuracy
