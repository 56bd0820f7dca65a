"""In-domain text available on every machine: the Python standard library's own source.

Files are split deterministically by a hash of their path, so that training (reward head),
calibration (thresholds) and held-out evaluation never share a file.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Literal

Split = Literal["train", "calibration", "held-out"]
SPLITS: tuple[Split, ...] = ("train", "calibration", "held-out")


def split_of(relative_path: str) -> Split:
    """80% train, 10% calibration, 10% held-out, by the sha1 of the path."""
    bucket = int(hashlib.sha1(relative_path.encode()).hexdigest(), 16) % 10
    return "train" if bucket < 8 else "calibration" if bucket == 8 else "held-out"


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_relative(path: Path) -> str:
    """A standard-library file's path relative to the library (what ``split_of`` hashes)."""
    try:
        return path.relative_to(stdlib_root()).as_posix()
    except ValueError:
        return path.as_posix()


def stdlib_files(split: Split, *, min_bytes: int = 2_000, max_bytes: int = 200_000) -> list[Path]:
    """Standard-library ``.py`` files of one split, sorted by path (tests and site-packages excluded)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    root = stdlib_root()
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/", "_sysconfigdata")) or "/tests/" in rel:
            continue
        if split_of(rel) == split and min_bytes <= path.stat().st_size <= max_bytes:
            files.append(path)
    return files
