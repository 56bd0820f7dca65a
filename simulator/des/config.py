"""Fleet-mode configuration: compute profiles, cloud capacity, fleet size, and the ``[fleet]`` table.

An experiment file for ``edgecloud simulate --des`` is an ordinary experiment plus an optional
``[fleet]`` table (``devices`` and ``requests`` may also sit in ``[workload]``)::

    [fleet]
    devices = 10000
    requests = 100000
    request_rate_per_s = 1500      # whole fleet; default: workload rate per edge × devices
    traces = "traces.json"         # recorded SLM features ("synthetic": made up; default: the
                                   # shipped recording if present, else synthetic, labelled so)
    cloud_replicas = 4             # cloud servers, each running one batch at a time
    cloud_max_batch = 32           # round trips verified together in one batch
    edge_s_per_token = 0.086
    cloud_s_per_forward = [[1, 0.224], [8, 0.40]]   # (batch size, seconds), linear in between
    wire = { up_overhead_bytes = 100 }

Both keys are removed before the rest is validated as an experiment, so errors elsewhere read
as they do for ``edgecloud simulate``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecloud.simulator.des.replay import WireProfile
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.experiment import Experiment, experiment_from_dict

# Measured on this project's 2-core CPU machine (bf16, plain PyTorch runtime, batch 1;
# benchmarks/decode_speed.py -> benchmarks/results/decode_speed.json):
# Qwen2.5-Coder-0.5B-Instruct decodes 11.7 tok/s => 0.086 s per forward;
# Qwen2.5-Coder-1.5B-Instruct decodes 4.46 tok/s => 0.224 s per forward.
MEASURED_EDGE_S_PER_TOKEN = 0.086
MEASURED_CLOUD_S_PER_FORWARD = 0.224


def _positive(key: tuple[str, ...], value: Any, *, zero_ok: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or math.isinf(value):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not zero_ok):
        raise ConfigError(key, f"must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return float(value)


def _count(key: tuple[str, ...], value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(key, f"must be an integer >= {low}, got {value!r}")
    return value


@dataclass(frozen=True)
class ComputeProfile:
    """Per-token compute times. One forward (a decode step) costs ``*_s_per_token`` (edge) or
    ``cloud_s_per_forward`` at the batch's size; each further token in the same forward (a prompt
    prefill, a verification window, the tokens fed after a rollback) adds ``*_s_per_extra_token``.
    A cloud batch of B round trips carrying T tokens in all costs
    ``cloud_s_per_forward(B) + cloud_s_per_extra_token × (T - B)``."""

    edge_s_per_token: float = MEASURED_EDGE_S_PER_TOKEN
    edge_s_per_extra_token: float = 0.0
    cloud_s_per_forward: tuple[tuple[int, float], ...] = ((1, MEASURED_CLOUD_S_PER_FORWARD),)
    cloud_s_per_extra_token: float = 0.0

    def __post_init__(self) -> None:
        _positive(("fleet", "edge_s_per_token"), self.edge_s_per_token, zero_ok=True)
        _positive(("fleet", "edge_s_per_extra_token"), self.edge_s_per_extra_token, zero_ok=True)
        _positive(("fleet", "cloud_s_per_extra_token"), self.cloud_s_per_extra_token, zero_ok=True)
        key = ("fleet", "cloud_s_per_forward")
        table = self.cloud_s_per_forward
        if not isinstance(table, tuple) or not table:
            raise ConfigError(key, "must be a non-empty list of [batch_size, seconds] pairs")
        last = 0
        for index, pair in enumerate(table):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ConfigError((*key, str(index)), f"must be a [batch_size, seconds] pair, got {pair!r}")
            batch = _count((*key, str(index)), pair[0])
            _positive((*key, str(index)), pair[1], zero_ok=True)
            if batch <= last:
                raise ConfigError(key, "batch sizes must increase")
            last = batch

    def cloud_forward_s(self, batch: int) -> float:
        """Seconds for one forward of ``batch`` sequences: linear between the table's points,
        constant below the first, extended along the last segment above the last (a table of one
        point: the same for every batch size)."""
        table = self.cloud_s_per_forward
        if batch <= table[0][0] or len(table) == 1:
            return table[0][1]
        for (b0, s0), (b1, s1) in itertools.pairwise(table):
            if batch <= b1:
                return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)
        (b0, s0), (b1, s1) = table[-2], table[-1]
        return s1 + (s1 - s0) * (batch - b1) / (b1 - b0)

    def cloud_batch_s(self, batch: int, tokens: int) -> float:
        return self.cloud_forward_s(batch) + self.cloud_s_per_extra_token * max(0, tokens - batch)

    def edge_burst_s(self, forwards: int, tokens: int) -> float:
        return self.edge_s_per_token * forwards + self.edge_s_per_extra_token * max(0, tokens - forwards)

    def to_dict(self) -> dict[str, Any]:
        return {"edge_s_per_token": self.edge_s_per_token, "edge_s_per_extra_token": self.edge_s_per_extra_token,
                "cloud_s_per_forward": [list(p) for p in self.cloud_s_per_forward],
                "cloud_s_per_extra_token": self.cloud_s_per_extra_token}


@dataclass(frozen=True)
class FleetConfig:
    """How far to scale the experiment and what the cloud can do.

    ``request_rate_per_s`` is the whole fleet's arrival rate; None keeps each device as busy
    as one edge of the experiment (workload rate ÷ target edges × devices). ``traces``: a trace
    file, or None for synthetic traces. ``policy_seeds``: distinct seeds (and so patterns) per
    trace for policies that draw random numbers.
    """

    devices: int | None = None
    requests: int | None = None
    request_rate_per_s: float | None = None
    traces: str | None = None
    cloud_replicas: int = 1
    cloud_max_batch: int = 8
    policy_seeds: int = 4
    compute: ComputeProfile = field(default_factory=ComputeProfile)
    wire: WireProfile = field(default_factory=WireProfile)

    def __post_init__(self) -> None:
        if self.devices is not None:
            _count(("fleet", "devices"), self.devices)
        if self.requests is not None:
            _count(("fleet", "requests"), self.requests)
        if self.request_rate_per_s is not None:
            _positive(("fleet", "request_rate_per_s"), self.request_rate_per_s)
        _count(("fleet", "cloud_replicas"), self.cloud_replicas)
        _count(("fleet", "cloud_max_batch"), self.cloud_max_batch)
        _count(("fleet", "policy_seeds"), self.policy_seeds)


_COMPUTE_KEYS = {f.name for f in fields(ComputeProfile)}
_FLEET_KEYS = {f.name for f in fields(FleetConfig)} - {"compute"} | _COMPUTE_KEYS


def fleet_from_dict(data: Any, *, base_dir: Path | None = None) -> FleetConfig:
    """Validate a ``[fleet]`` table."""
    if not isinstance(data, Mapping):
        raise ConfigError("fleet", f"must be a table, got {type(data).__name__}")
    for name in data:
        if name not in _FLEET_KEYS:
            raise ConfigError(("fleet", name), f"unknown key; expected one of {', '.join(sorted(_FLEET_KEYS))}")
    compute = {k: v for k, v in data.items() if k in _COMPUTE_KEYS}
    if "cloud_s_per_forward" in compute:
        raw = compute["cloud_s_per_forward"]
        if not isinstance(raw, list):
            raise ConfigError(("fleet", "cloud_s_per_forward"), "must be a list of [batch_size, seconds] pairs")
        compute["cloud_s_per_forward"] = tuple(tuple(p) if isinstance(p, list) else p for p in raw)
    rest = {k: v for k, v in data.items() if k not in _COMPUTE_KEYS}
    wire = rest.pop("wire", {})
    if not isinstance(wire, Mapping):
        raise ConfigError(("fleet", "wire"), "must be a table")
    known = {f.name for f in fields(WireProfile)}
    for name in wire:
        if name not in known:
            raise ConfigError(("fleet", "wire", name), f"unknown key; expected one of {', '.join(sorted(known))}")
    traces = rest.get("traces")
    if traces is not None:
        if not isinstance(traces, str) or not traces:
            raise ConfigError(("fleet", "traces"), f"must be a path string, got {traces!r}")
        path = Path(traces)
        if traces != "synthetic" and base_dir is not None and not path.is_absolute():
            rest["traces"] = str(base_dir / path)
    return FleetConfig(**rest, compute=ComputeProfile(**compute), wire=WireProfile(**wire))


@dataclass(frozen=True)
class FleetExperiment:
    """An experiment and how to scale it."""

    experiment: Experiment
    fleet: FleetConfig = field(default_factory=FleetConfig)

    def with_overrides(self, **changes: Any) -> FleetExperiment:
        """A copy with the given ``FleetConfig`` fields replaced (None values are ignored)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, fleet=replace(self.fleet, **changes)) if changes else self


def fleet_experiment_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None,
                               source: str | None = None) -> FleetExperiment:
    """Split off ``[fleet]`` (and ``workload.devices``/``workload.requests``), validate both parts."""
    data = dict(data)
    fleet_raw = dict(data.pop("fleet", {}) or {})
    workload = data.get("workload")
    if isinstance(workload, Mapping):
        workload = dict(workload)
        for name in ("devices", "requests"):
            if name in workload:
                value = workload.pop(name)
                if name in fleet_raw:
                    raise ConfigError(("workload", name), "given in both [workload] and [fleet]")
                fleet_raw[name] = value
        data["workload"] = workload
    fleet = fleet_from_dict(fleet_raw, base_dir=base_dir)
    return FleetExperiment(experiment_from_dict(data, base_dir=base_dir, source=source), fleet)


def load_fleet_experiment(path: str | Path) -> FleetExperiment:
    """Read an experiment file with its optional ``[fleet]`` table; errors name file, line and key."""
    from edgecloud.simulator.config import load_toml

    path = Path(path)
    data, text = load_toml(path)
    try:
        return fleet_experiment_from_dict(data, base_dir=path.parent, source=str(path))
    except ConfigError as exc:
        raise exc.located(str(path), text) from None
