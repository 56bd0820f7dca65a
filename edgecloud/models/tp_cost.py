"""How fast a tensor-parallel group decodes, and which devices to leave out.

Cost model per token, for a group whose shares follow each device's speed:

    compute = 1 / sum(1 / t_i)           t_i: device i's ms/token for the whole model alone
    communication = 2 * layers * (2 * L + 2 * (N - 1) * S / B + overhead)   (two allreduces a layer)
                    + L + (N - 1) * S / B + overhead                        (the layer input, broadcast)

with L the slowest link's one-way latency to the master (a star step waits for its slowest
member), S the bytes of one hidden state (the allreduced partial sums), B the slowest worker link's rate
and ``overhead`` the measured per-collective cost on this software stack (framing, wake-ups).
Adding a device shortens compute and lengthens communication: ``plan_group`` adds devices in order
of latency while the prediction improves, so a device behind a slow link is left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

COLLECTIVE_OVERHEAD_MS = 0.25  # star allreduce on this machine's loopback at decode sizes (benchmarks/allreduce.py)


@dataclass(frozen=True)
class Device:
    name: str
    ms_per_token: float  # the whole model alone on this device
    one_way_ms: float = 0.0  # to the master (0 for the master itself)
    rate_mbps: float = 1000.0


@dataclass(frozen=True)
class GroupCost:
    devices: tuple[str, ...]
    compute_ms: float
    communication_ms: float

    @property
    def ms_per_token(self) -> float:
        return self.compute_ms + self.communication_ms


def predict(devices: Sequence[Device], *, layers: int, hidden_size: int, bytes_per_value: int = 4,
            overhead_ms: float = COLLECTIVE_OVERHEAD_MS) -> GroupCost:
    """The cost model's ms/token for ``devices`` (the first is the master)."""
    if not devices:
        raise ValueError("a group needs at least its master")
    compute = 1.0 / sum(1.0 / d.ms_per_token for d in devices)
    n = len(devices)
    if n == 1:
        return GroupCost((devices[0].name,), compute, 0.0)
    size_bits = hidden_size * bytes_per_value * 8
    rate_bits_per_ms = min(d.rate_mbps for d in devices[1:]) * 1e3
    latency, transfer = max(d.one_way_ms for d in devices[1:]), (n - 1) * size_bits / rate_bits_per_ms
    allreduce = 2 * latency + 2 * transfer + overhead_ms
    broadcast = latency + transfer + overhead_ms
    return GroupCost(tuple(d.name for d in devices), compute, 2 * layers * allreduce + broadcast)


def plan_group(master: Device, candidates: Sequence[Device], *, layers: int, hidden_size: int,
               bytes_per_value: int = 4, overhead_ms: float = COLLECTIVE_OVERHEAD_MS
               ) -> tuple[GroupCost, list[tuple[str, str]]]:
    """The fastest group by the model, adding candidates nearest first while each makes it faster;
    with the reason each candidate left out was dropped."""
    group, best = [master], predict([master], layers=layers, hidden_size=hidden_size,
                                    bytes_per_value=bytes_per_value, overhead_ms=overhead_ms)
    dropped: list[tuple[str, str]] = []
    for device in sorted(candidates, key=lambda d: (d.one_way_ms, d.ms_per_token)):
        trial = predict([*group, device], layers=layers, hidden_size=hidden_size, bytes_per_value=bytes_per_value,
                        overhead_ms=overhead_ms)
        if trial.ms_per_token < best.ms_per_token:
            group, best = [*group, device], trial
        else:
            dropped.append((device.name, f"with it {trial.ms_per_token:.1f} ms/token, without "
                                         f"{best.ms_per_token:.1f} (its link: {device.one_way_ms:g} ms one way)"))
    return best, dropped
