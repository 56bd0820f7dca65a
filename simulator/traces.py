"""Mahimahi packet-delivery traces: one line per 1500-byte delivery opportunity, in ms, wrapping.

A line ``t`` says that at ``t`` ms after the trace starts the link may deliver one 1500-byte
packet; several lines with the same ``t`` are several packets in that millisecond. After the
last line the trace starts again, shifted by the last timestamp (its period). A file holding
the single line ``1`` is a constant 12 Mbit/s link.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgecloud.simulator.errors import ConfigError

MTU_BYTES = 1500


@dataclass(frozen=True)
class Trace:
    """Delivery opportunities (ms after the trace starts, non-decreasing, last > 0)."""

    opportunities_ms: tuple[int, ...]
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.opportunities_ms:
            raise ConfigError("trace", "a trace needs at least one delivery opportunity")
        previous = 0
        for index, value in enumerate(self.opportunities_ms, start=1):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError("trace", f"opportunity {index}: {value!r} is not a non-negative integer ms")
            if value < previous:
                raise ConfigError("trace", f"opportunity {index}: {value} ms comes before {previous} ms")
            previous = value
        if self.opportunities_ms[-1] <= 0:
            raise ConfigError("trace", "the last timestamp (the period) must be > 0 ms")

    @property
    def period_ms(self) -> int:
        return self.opportunities_ms[-1]

    @property
    def mean_rate_mbps(self) -> float:
        """Average capacity: opportunities × 1500 bytes per period."""
        return len(self.opportunities_ms) * MTU_BYTES * 8 / (self.period_ms * 1e-3) / 1e6

    @classmethod
    def constant(cls, rate_mbps: float, period_ms: int = 1000) -> Trace:
        """A trace of evenly spread opportunities that adds up to ``rate_mbps``."""
        count = max(1, round(rate_mbps * 1e6 / 8 / MTU_BYTES * period_ms / 1000))
        return cls(tuple(max(1, round((i + 1) * period_ms / count)) for i in range(count)))


def parse_trace(text: str, source: str = "<trace>") -> Trace:
    """Parse Mahimahi trace text; a bad line raises ConfigError naming the line."""
    values: list[int] = []
    previous = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.isdigit():
            raise ConfigError((), f"{line[:40]!r} is not a non-negative integer ms timestamp "
                              "(a Mahimahi trace has one integer per line)", source=source, line=number)
        value = int(line)
        if value < previous:
            raise ConfigError((), f"timestamp {value} ms comes before the previous {previous} ms "
                              "(timestamps must not decrease)", source=source, line=number)
        values.append(value)
        previous = value
    if not values:
        raise ConfigError((), "empty trace: no delivery opportunities", source=source)
    if values[-1] <= 0:
        raise ConfigError((), "the last timestamp (the trace's period) must be > 0 ms", source=source,
                          line=len(text.splitlines()))
    return Trace(tuple(values), source=source)


def load_trace(path: str | Path) -> Trace:
    """Read a Mahimahi trace file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError((), f"cannot read trace: {exc.strerror or exc}", source=str(path)) from exc
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError((), "not a Mahimahi trace (binary data)", source=str(path), line=line) from exc
    return parse_trace(text, source=str(path))


def write_trace(trace: Trace, path: str | Path) -> Path:
    """Write a trace in Mahimahi format."""
    path = Path(path)
    path.write_text("".join(f"{value}\n" for value in trace.opportunities_ms))
    return path
