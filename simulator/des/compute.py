"""Measured forward costs for fleet mode: a grid of seconds per forward by batch size and tokens.

A compute profile file (JSON, written by ``python -m edgecloud.simulator.des.record
--compute-profile OUT`` or ``benchmarks/des_compute_profile.py``) holds, for the edge and the
cloud, the seconds one forward takes with ``batch`` sequences of ``tokens`` new tokens each,
and how the cloud runs round trips that arrive together (``cloud_batching``)::

    {"format": "edgecloud-compute-profile/1",
     "edge":  {"model": "...", "points": [[1, 1, 0.086], [1, 8, 0.15], [2, 1, 0.10], ...]},
     "cloud": {"model": "...", "points": [[1, 1, 0.224], ...]},
     "cloud_batching": "serial",
     "machine": {...}, "assumptions": ["..."]}

``serial``: the cloud runs one batch-1 forward per round trip, one after another (what the CPU
cloud daemon does: one model lock, one session's window per forward); ``batched``: round trips
taken together share one padded forward of ``(batch, longest window)``.

Between grid points the cost is piecewise linear in tokens, then in batch size; beyond the last
point it continues along the last segment (compute grows linearly with tokens once the weights'
read no longer dominates).
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgecloud.simulator.errors import ConfigError

FORMAT = "edgecloud-compute-profile/1"
BATCHING = ("serial", "batched")
SHIPPED_PROFILE = Path(__file__).with_name("data") / "compute-profile-cpu-2core.json"


def _lerp(x: float, x0: float, y0: float, x1: float, y1: float) -> float:
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def _piecewise(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Linear between points, the first value below the first point, the last segment extended above."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    i = bisect.bisect_left(xs, x)
    if i >= len(xs):
        i = len(xs) - 1
    return _lerp(x, xs[i - 1], ys[i - 1], xs[i], ys[i])


@dataclass(frozen=True)
class ForwardCost:
    """Seconds of one forward of ``batch`` sequences × ``tokens`` new tokens, from measured points."""

    points: tuple[tuple[int, int, float], ...]  # (batch, tokens, seconds)
    model: str = ""

    def __post_init__(self) -> None:
        key = ("points",)
        if not isinstance(self.points, tuple) or not self.points:
            raise ConfigError(key, "must be a non-empty list of [batch, tokens, seconds] points")
        seen = set()
        for index, point in enumerate(self.points):
            where = (*key, str(index))
            if not isinstance(point, tuple) or len(point) != 3:
                raise ConfigError(where, f"must be a [batch, tokens, seconds] point, got {point!r}")
            batch, tokens, seconds = point
            for name, value in (("batch", batch), ("tokens", tokens)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(where, f"{name} must be an integer >= 1, got {value!r}")
            if (isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds)
                    or seconds < 0):
                raise ConfigError(where, f"seconds must be a finite number >= 0, got {seconds!r}")
            if (batch, tokens) in seen:
                raise ConfigError(where, f"batch {batch} × tokens {tokens} is given twice")
            seen.add((batch, tokens))
        rows: dict[int, list[tuple[int, float]]] = {}
        for batch, tokens, seconds in sorted(self.points):
            rows.setdefault(batch, []).append((tokens, float(seconds)))
        object.__setattr__(self, "_rows", tuple((b, tuple(t for t, _ in r), tuple(s for _, s in r))
                                                for b, r in sorted(rows.items())))

    @classmethod
    def linear(cls, s_per_forward: float, s_per_extra_token: float = 0.0, *, batch: int = 1,
               model: str = "") -> ForwardCost:
        """A forward costs ``s_per_forward`` plus ``s_per_extra_token`` per token beyond the first."""
        return cls(((batch, 1, s_per_forward), (batch, 2, s_per_forward + s_per_extra_token)), model)

    @property
    def batches(self) -> tuple[int, ...]:
        return tuple(b for b, _, _ in self._rows)  # type: ignore[attr-defined]

    def seconds(self, batch: int, tokens: int) -> float:
        """Seconds of one forward of ``batch`` sequences with ``tokens`` new tokens each."""
        rows = self._rows  # type: ignore[attr-defined]
        per_row = [(b, _piecewise(ts, ss, tokens)) for b, ts, ss in rows]
        value = _piecewise([b for b, _ in per_row], [s for _, s in per_row], batch)
        return max(0.0, value)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "points": [list(p) for p in self.points]}


def forward_cost_from_dict(data: Any, key: tuple[str, ...]) -> ForwardCost:
    if not isinstance(data, dict):
        raise ConfigError(key, "must be a table with 'points'")
    unknown = set(data) - {"model", "points", "head_rows", "notes"}
    if unknown:
        raise ConfigError((*key, sorted(unknown)[0]), "unknown key; expected model, points")
    raw = data.get("points")
    if not isinstance(raw, list):
        raise ConfigError((*key, "points"), "must be a list of [batch, tokens, seconds] points")
    model = data.get("model", "")
    if not isinstance(model, str):
        raise ConfigError((*key, "model"), f"must be a string, got {model!r}")
    try:
        return ForwardCost(tuple(tuple(p) if isinstance(p, list) else p for p in raw), model)
    except ConfigError as exc:
        raise exc.prefixed(key) from None


@dataclass(frozen=True)
class ComputeProfile:
    """Forward costs of the edge and the cloud (``ForwardCost``: seconds by batch size and tokens).

    An edge burst of F forwards carrying T tokens is F - 1 single-token forwards plus one of
    T - F + 1 tokens (a prompt prefill or the tokens fed after a rollback). The cloud runs one
    round trip's context + window as one forward: ``serial`` batching (the CPU cloud daemon) runs
    round trips one at a time at batch 1; ``batched`` takes up to ``cloud_max_batch`` together in
    one padded forward of (batch, longest round trip).
    """

    edge: ForwardCost
    cloud: ForwardCost
    cloud_batching: str = "serial"
    source: str = ""

    def __post_init__(self) -> None:
        if self.cloud_batching not in BATCHING:
            raise ConfigError(("fleet", "cloud_batching"),
                              f"must be one of {', '.join(BATCHING)}, got {self.cloud_batching!r}")

    @property
    def serial(self) -> bool:
        return self.cloud_batching == "serial"

    def cloud_forward_s(self, batch: int, tokens: int = 1) -> float:
        """Seconds of one cloud forward of ``batch`` sequences of ``tokens`` tokens each."""
        return self.cloud.seconds(batch, tokens)

    def cloud_batch_s(self, batch: int, longest: int) -> float:
        """Seconds to verify ``batch`` round trips taken together, the longest carrying ``longest`` tokens
        (serial batching only ever takes one)."""
        return self.cloud.seconds(batch, longest)

    def edge_burst_s(self, forwards: int, tokens: int) -> float:
        if forwards <= 0:
            return 0.0
        return (forwards - 1) * self.edge.seconds(1, 1) + self.edge.seconds(1, max(1, tokens - forwards + 1))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "cloud_batching": self.cloud_batching, "edge": self.edge.to_dict(),
                "cloud": self.cloud.to_dict()}


def load_compute_profile(path: str | Path) -> ComputeProfile:
    """Read a compute profile file; errors name the file and the key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("compute_profile", f"no such compute profile file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("compute_profile", f"cannot read compute profile {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError("compute_profile", f"{path} is not a compute profile (format {FORMAT!r} expected)")
    try:
        batching = data.get("cloud_batching", "serial")
        if batching not in BATCHING:
            raise ConfigError("cloud_batching", f"must be one of {', '.join(BATCHING)}, got {batching!r}")
        return ComputeProfile(forward_cost_from_dict(data.get("edge"), ("edge",)),
                              forward_cost_from_dict(data.get("cloud"), ("cloud",)), batching, str(path))
    except ConfigError as exc:
        raise ConfigError(("compute_profile", *exc.key_path), f"{path}: {exc.message}") from None


# --- measuring (the recorder and benchmarks/des_compute_profile.py) ---------------------------------

def measure_forward_cost(model: Any, grid: Sequence[tuple[int, int]], *, context: int = 64, repeats: int = 3,
                         head_rows: int | None = None, budget_s: float | None = None, log=print
                         ) -> list[list[float]]:
    """Time one forward per ``(batch, tokens)`` of ``grid`` on ``model`` (an ``edgecloud`` LlamaModel):
    ``batch`` sequences that already hold ``context`` cached tokens, ``tokens`` new tokens each, the
    LM head on the last ``min(tokens, head_rows)`` rows (None: every row). The fastest of ``repeats``
    (fewer once ``budget_s`` is spent): on a shared machine other work only ever adds time. Returns ``[batch, tokens, seconds]`` points."""
    import time

    import torch

    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    points = []
    started = time.perf_counter()
    with torch.inference_mode():
        warm = model.new_cache(1)
        model(torch.randint(0, vocab, (1, 8), generator=gen), warm, last_n=1)
        for batch, tokens in grid:
            cache = model.new_cache(batch, initial_capacity=context + tokens + 8)
            model(torch.randint(0, vocab, (batch, context), generator=gen), cache, last_n=1)
            ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
            rows = tokens if head_rows is None else min(tokens, head_rows)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(ids, cache, last_n=rows)
                times.append(time.perf_counter() - t0)
                cache.crop(context)
                if budget_s is not None and time.perf_counter() - started > budget_s:
                    break
            seconds = min(times)
            points.append([batch, tokens, round(seconds, 5)])
            log(f"  batch {batch} × {tokens} tokens: {seconds * 1e3:.1f} ms ({len(times)} runs)")
    return points


def profile_grid(batches: Sequence[int], tokens: Sequence[int], *, max_batch_tokens: int) -> list[tuple[int, int]]:
    """Every (batch, tokens) with batch 1, and batch > 1 while batch × tokens <= ``max_batch_tokens``."""
    return [(b, t) for b, t in itertools.product(batches, tokens) if b == 1 or b * t <= max_batch_tokens]
