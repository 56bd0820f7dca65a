"""Recorded SLM feature traces: what the edge model drafted, how unsure it was, what the LLM said.

One ``TokenTrace`` holds, for each position ``i`` of a reference continuation (the cloud LLM's
greedy output for one prompt), the SLM's own choice ``slm_tokens[i]`` with its features
(entropy, max-prob, top-2 margin) and the LLM's token ``llm_tokens[i]``. The replay drafter
serves the SLM side, the replay cloud answers verification from the LLM side. A trace ends
where the LLM stopped (or where recording stopped); beyond that both sides say "stop".

File format (JSON, optionally gzip-compressed when the name ends in ``.gz``)::

    {"format": "edgecloud-des-traces", "version": 1, "synthetic": false,
     "source": {"edge_model": "...", "cloud_model": "...", ...},
     "traces": [{"prompt_tokens": 87, "slm_tokens": [...], "llm_tokens": [...],
                 "entropy": [...], "max_prob": [...], "margin": [...]}, ...]}
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.simulator.errors import ConfigError

FORMAT = "edgecloud-des-traces"
VERSION = 1


@dataclass(frozen=True)
class TokenTrace:
    """One prompt's recorded positions (all per-position tuples have the same length)."""

    prompt_tokens: int
    slm_tokens: tuple[int, ...]
    llm_tokens: tuple[int, ...]
    entropy: tuple[float, ...]
    max_prob: tuple[float, ...]
    margin: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.llm_tokens)
        if isinstance(self.prompt_tokens, bool) or not isinstance(self.prompt_tokens, int) or self.prompt_tokens < 1:
            raise ConfigError("prompt_tokens", f"must be an integer >= 1, got {self.prompt_tokens!r}")
        if n == 0:
            raise ConfigError("llm_tokens", "a trace needs at least one position")
        for name in ("slm_tokens", "entropy", "max_prob", "margin"):
            if len(getattr(self, name)) != n:
                raise ConfigError(name, f"has {len(getattr(self, name))} positions, llm_tokens has {n}")
        for name in ("entropy", "max_prob", "margin"):
            for value in getattr(self, name):
                if not math.isfinite(value) or value < 0:
                    raise ConfigError(name, f"values must be finite and >= 0, got {value!r}")

    def __len__(self) -> int:
        return len(self.llm_tokens)

    @property
    def agreement(self) -> float:
        """Share of positions where the SLM's choice equals the LLM's."""
        return sum(a == b for a, b in zip(self.slm_tokens, self.llm_tokens, strict=True)) / len(self)


@dataclass(frozen=True)
class TraceSet:
    """Traces plus where they came from; ``synthetic`` is reported with every result."""

    traces: tuple[TokenTrace, ...]
    synthetic: bool
    source: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.traces:
            raise ConfigError("traces", "a trace set needs at least one trace")

    def describe(self) -> dict[str, Any]:
        """Summary for reports: kind, count, positions, SLM/LLM agreement."""
        positions = sum(len(t) for t in self.traces)
        agree = sum(t.agreement * len(t) for t in self.traces)
        return {"kind": "synthetic" if self.synthetic else "recorded", "traces": len(self.traces),
                "positions": positions, "agreement": agree / positions, "source": dict(self.source)}


def _trace_from_dict(data: Any, index: int) -> TokenTrace:
    key = ("traces", index)
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"must be an object, got {type(data).__name__}")
    missing = {"prompt_tokens", "slm_tokens", "llm_tokens", "entropy", "max_prob", "margin"} - set(data)
    if missing:
        raise ConfigError(key, f"missing {', '.join(sorted(missing))}")
    try:
        ints = {name: tuple(int(v) for v in data[name]) for name in ("slm_tokens", "llm_tokens")}
        floats = {name: tuple(float(v) for v in data[name]) for name in ("entropy", "max_prob", "margin")}
        return TokenTrace(prompt_tokens=data["prompt_tokens"], **ints, **floats)
    except ConfigError as exc:
        raise exc.prefixed(key) from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(key, f"bad value: {exc}") from None


def traces_from_dict(data: Any) -> TraceSet:
    """Validate the dict form of a trace file."""
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise ConfigError("format", f"not an {FORMAT} file (expected \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise ConfigError("version", f"unsupported version {data.get('version')!r}; this reader knows {VERSION}")
    raw = data.get("traces")
    if not isinstance(raw, list) or not raw:
        raise ConfigError("traces", "must be a non-empty array")
    source = data.get("source", {})
    if not isinstance(source, Mapping):
        raise ConfigError("source", "must be an object")
    return TraceSet(tuple(_trace_from_dict(t, i) for i, t in enumerate(raw)), bool(data.get("synthetic", False)),
                    dict(source))


def traces_to_dict(traces: TraceSet) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "synthetic": traces.synthetic, "source": dict(traces.source),
            "traces": [{"prompt_tokens": t.prompt_tokens, "slm_tokens": list(t.slm_tokens),
                        "llm_tokens": list(t.llm_tokens), "entropy": [round(v, 5) for v in t.entropy],
                        "max_prob": [round(v, 5) for v in t.max_prob], "margin": [round(v, 5) for v in t.margin]}
                       for t in traces.traces]}


def load_traces(path: str | Path) -> TraceSet:
    """Read a trace file (JSON, or gzip JSON for ``*.gz``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("traces", f"no such trace file: {path}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("traces", f"cannot read {path}: {exc}") from None
    try:
        return traces_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.key_path, exc.message, source=str(path)) from None


def save_traces(traces: TraceSet, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        json.dump(traces_to_dict(traces), handle, separators=(",", ":"))
    return path


def synthetic_traces(*, count: int = 32, max_tokens: int = 128, agreement: float = 0.8,
                     prompt_tokens: tuple[int, int] = (60, 200), seed: int = 0,
                     vocab: int = 32_000) -> TraceSet:
    """Made-up traces for tests and for when nothing was recorded (labelled synthetic everywhere).

    Each position agrees (SLM token = LLM token) with probability ``agreement``; the SLM is
    less sure where it disagrees: entropy ~ Exp(mean 0.4 nats) where it agrees, Exp(mean 1.8)
    where it does not; max-prob and margin follow from the entropy. Lengths are uniform in
    ``[max_tokens // 2, max_tokens]``, so some requests end early (the LLM's stop token).
    """
    if count < 1 or max_tokens < 1:
        raise ConfigError("synthetic", f"count and max_tokens must be >= 1, got {count}, {max_tokens}")
    if not 0 <= agreement <= 1:
        raise ConfigError("agreement", f"must be in [0, 1], got {agreement}")
    rng = random.Random(f"synthetic-traces:{seed}")
    traces = []
    for _ in range(count):
        n = rng.randint(max(1, max_tokens // 2), max_tokens)
        llm = [rng.randrange(vocab) for _ in range(n)]
        agree = [rng.random() < agreement for _ in range(n)]
        slm = [t if a else (t + 1) % vocab for t, a in zip(llm, agree, strict=True)]
        entropy = [rng.expovariate(1 / 0.4) if a else rng.expovariate(1 / 1.8) for a in agree]
        max_prob = [min(1.0, math.exp(-0.8 * h)) for h in entropy]
        margin = [p * rng.uniform(0.3, 1.0) for p in max_prob]
        traces.append(TokenTrace(rng.randint(*prompt_tokens), tuple(slm), tuple(llm), tuple(entropy),
                                 tuple(max_prob), tuple(margin)))
    return TraceSet(tuple(traces), synthetic=True,
                    source={"generator": "synthetic_traces", "seed": seed, "agreement": agreement,
                            "max_tokens": max_tokens})
