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
    compute_profile = "profile.json"   # measured seconds per forward by batch size and tokens
                                   # (default: the shipped profile of this project's 2-core CPU)
    cloud_batching = "batched"     # default: the profile's ("serial": one round trip per forward)
    cloud_max_batch = 32           # round trips verified together in one batch (batched only)
    # or costs by hand, each replacing that side of the profile:
    # edge_s_per_token = 0.086; edge_s_per_extra_token = 0.05
    # cloud_s_per_forward = [[1, 0.224], [8, 0.40]]   # (batch size, seconds), linear in between
    wire = { up_overhead_bytes = 100 }

Both keys are removed before the rest is validated as an experiment, so errors elsewhere read
as they do for ``edgecloud simulate``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecloud.simulator.des.compute import (
    SHIPPED_PROFILE,
    ComputeProfile,
    ForwardCost,
    load_compute_profile,
)
from edgecloud.simulator.des.replay import WireProfile
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.experiment import Experiment, experiment_from_dict

# Used only when the shipped compute profile file is missing (a stripped install): the batch-1
# decode speeds of benchmarks/decode_speed.py on this project's 2-core CPU machine (bf16):
# Qwen2.5-Coder-0.5B-Instruct 11.7 tok/s => 0.086 s per forward; 1.5B 4.46 tok/s => 0.224 s.
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


def linear_compute(edge_s_per_token: float = MEASURED_EDGE_S_PER_TOKEN, edge_s_per_extra_token: float = 0.0,
                   cloud_s_per_forward: tuple[tuple[int, float], ...] = ((1, MEASURED_CLOUD_S_PER_FORWARD),),
                   cloud_s_per_extra_token: float = 0.0, *, cloud_batching: str | None = None,
                   source: str = "linear") -> ComputeProfile:
    """Made-up-by-hand costs: a forward costs ``*_s_per_forward`` (by batch size, linear in between)
    plus ``*_s_per_extra_token`` per token beyond one per sequence. A table with batch sizes above 1
    means ``batched`` unless ``cloud_batching`` says otherwise."""
    return ComputeProfile(_edge_linear(edge_s_per_token, edge_s_per_extra_token),
                          _cloud_linear(cloud_s_per_forward, cloud_s_per_extra_token),
                          cloud_batching or ("batched" if any(b > 1 for b, _ in cloud_s_per_forward) else "serial"),
                          source)


def _edge_linear(s_per_token: float, s_per_extra_token: float) -> ForwardCost:
    _positive(("fleet", "edge_s_per_token"), s_per_token, zero_ok=True)
    _positive(("fleet", "edge_s_per_extra_token"), s_per_extra_token, zero_ok=True)
    return ForwardCost.linear(float(s_per_token), float(s_per_extra_token), model="edge_s_per_token")


def _cloud_linear(table: Any, s_per_extra_token: float) -> ForwardCost:
    key = ("fleet", "cloud_s_per_forward")
    _positive(("fleet", "cloud_s_per_extra_token"), s_per_extra_token, zero_ok=True)
    if not isinstance(table, tuple) or not table:
        raise ConfigError(key, "must be a non-empty list of [batch_size, seconds] pairs")
    last = 0
    points: list[tuple[int, int, float]] = []
    for index, pair in enumerate(table):
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ConfigError((*key, str(index)), f"must be a [batch_size, seconds] pair, got {pair!r}")
        batch = _count((*key, str(index)), pair[0])
        seconds = _positive((*key, str(index)), pair[1], zero_ok=True)
        if batch <= last:
            raise ConfigError(key, "batch sizes must increase")
        last = batch
        points += [(batch, 1, seconds), (batch, 2, seconds + float(s_per_extra_token))]
    return ForwardCost(tuple(points), "cloud_s_per_forward")


@functools.cache
def _shipped_profile() -> ComputeProfile | None:
    return load_compute_profile(SHIPPED_PROFILE) if SHIPPED_PROFILE.is_file() else None


def default_compute(path: str | Path | None = None) -> ComputeProfile:
    """The compute profile file at ``path``; else the measured profile shipped with the package; else
    the batch-1 decode speeds measured by benchmarks/decode_speed.py (serial cloud, extra tokens at a
    decode step's cost each — never free)."""
    measured = load_compute_profile(path) if path is not None else _shipped_profile()
    if measured is None:
        return linear_compute(MEASURED_EDGE_S_PER_TOKEN, MEASURED_EDGE_S_PER_TOKEN,
                                     ((1, MEASURED_CLOUD_S_PER_FORWARD),), MEASURED_CLOUD_S_PER_FORWARD,
                                     source="decode_speed.json batch-1 decode (no profile file)")
    return measured


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
    compute: ComputeProfile = field(default_factory=default_compute)
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


_LINEAR_KEYS = ("edge_s_per_token", "edge_s_per_extra_token", "cloud_s_per_forward", "cloud_s_per_extra_token")
_COMPUTE_KEYS = {*_LINEAR_KEYS, "compute_profile", "cloud_batching"}
_FLEET_KEYS = {f.name for f in fields(FleetConfig)} - {"compute"} | _COMPUTE_KEYS


def compute_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None) -> ComputeProfile:
    """The compute model of a ``[fleet]`` table: ``compute_profile`` (a file; default: the shipped
    measured profile), ``cloud_batching`` over the profile's, and hand-made linear costs
    (``edge_s_per_token`` & ``edge_s_per_extra_token``; ``cloud_s_per_forward`` & ``cloud_s_per_extra_token``)
    each replacing that side of the profile."""
    path = data.get("compute_profile")
    if path is not None:
        if not isinstance(path, str) or not path:
            raise ConfigError(("fleet", "compute_profile"), f"must be a path string, got {path!r}")
        if base_dir is not None and not Path(path).is_absolute():
            path = str(base_dir / path)
    try:
        compute = default_compute(path)
    except ConfigError as exc:
        raise exc.prefixed(("fleet",)) from None
    edge, cloud = compute.edge, compute.cloud
    if "edge_s_per_token" in data or "edge_s_per_extra_token" in data:
        edge = _edge_linear(data.get("edge_s_per_token", MEASURED_EDGE_S_PER_TOKEN),
                            data.get("edge_s_per_extra_token", 0.0))
    batching = data.get("cloud_batching", compute.cloud_batching)
    if "cloud_s_per_forward" in data or "cloud_s_per_extra_token" in data:
        raw = data.get("cloud_s_per_forward", [[1, MEASURED_CLOUD_S_PER_FORWARD]])
        if not isinstance(raw, list | tuple):
            raise ConfigError(("fleet", "cloud_s_per_forward"), "must be a list of [batch_size, seconds] pairs")
        table = tuple(tuple(p) if isinstance(p, list) else p for p in raw)
        cloud = _cloud_linear(table, data.get("cloud_s_per_extra_token", 0.0))
        if "cloud_batching" not in data:
            batching = "batched" if any(b > 1 for b in cloud.batches) else "serial"
    if batching == "serial" and cloud.batches[0] != 1:
        raise ConfigError(("fleet", "cloud_batching"), "serial batching needs the cloud's batch-1 costs")
    if batching == "batched" and len(cloud.batches) < 2:
        raise ConfigError(("fleet", "cloud_batching"), "batched needs the cloud's costs at batch sizes above 1 "
                          "(the profile has one batch size; a batch would cost what one sequence costs)")
    source = compute.source if (edge, cloud) == (compute.edge, compute.cloud) else "[fleet] table"
    return ComputeProfile(edge, cloud, batching, source)


def fleet_from_dict(data: Any, *, base_dir: Path | None = None) -> FleetConfig:
    """Validate a ``[fleet]`` table."""
    if not isinstance(data, Mapping):
        raise ConfigError("fleet", f"must be a table, got {type(data).__name__}")
    for name in data:
        if name not in _FLEET_KEYS:
            raise ConfigError(("fleet", name), f"unknown key; expected one of {', '.join(sorted(_FLEET_KEYS))}")
    compute = compute_from_dict(data, base_dir=base_dir)
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
    return FleetConfig(**rest, compute=compute, wire=WireProfile(**wire))


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
