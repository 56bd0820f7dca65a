"""Per-request records (JSONL, written as they come) and the run's summary statistics."""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

OK = "OK"


class JsonlWriter:
    """Append JSON objects to a file, one a line, flushed at once; safe to call from threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._handle = path.open("w")
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=_json_default)
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()
            self.count += 1

    def close(self) -> None:
        with self._lock:
            self._handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _stats(values: Sequence[float]) -> dict[str, float | None]:
    return {"mean": sum(values) / len(values) if values else None, "p50": percentile(values, 50),
            "p95": percentile(values, 95), "max": max(values) if values else None}


def _totals(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    records = list(records)
    ok = [r for r in records if r["status"] == OK]
    tokens = sum(r["output_tokens"] for r in ok)
    cloud = sum(r["cloud_tokens"] + r["checked_tokens"] for r in ok)
    trips = sum(r["cloud_round_trips"] for r in ok)
    return {
        "requests": len(records), "ok": len(ok), "failed": len(records) - len(ok),
        "output_tokens": tokens,
        "edge_tokens": sum(r["edge_tokens"] for r in ok),
        "cloud_tokens": sum(r["cloud_tokens"] for r in ok),
        "checked_tokens": sum(r["checked_tokens"] for r in ok),
        "cloud_share": cloud / tokens if tokens else None,
        "cloud_round_trips": trips,
        "round_trips_per_token": trips / tokens if tokens else None,
        "bytes_up": sum(r["bytes_up"] for r in ok),
        "bytes_down": sum(r["bytes_down"] for r in ok),
        "latency_s": _stats([r["latency_s"] for r in ok]),
        "ttft_s": _stats([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "queue_delay_s": _stats([r["queue_delay_s"] for r in records]),
    }


def summarize(records: Sequence[dict[str, Any]], *, makespan_s: float) -> dict[str, Any]:
    """Counts, latency and TTFT percentiles (successful requests), throughput, cloud share
    (tokens produced or checked by the cloud over output tokens), failures by status, per edge."""
    summary = _totals(records)
    summary["makespan_s"] = makespan_s
    summary["tokens_per_s"] = summary["output_tokens"] / makespan_s if makespan_s > 0 else None
    per_request = [r["output_tokens"] / r["latency_s"] for r in records if r["status"] == OK and r["latency_s"] > 0]
    summary["request_tokens_per_s"] = _stats(per_request)
    summary["failures"] = dict(Counter(r["status"] for r in records if r["status"] != OK))
    edges = sorted({r["edge"] for r in records})
    summary["by_edge"] = {edge: _totals(r for r in records if r["edge"] == edge) for edge in edges}
    return summary
