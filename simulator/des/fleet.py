"""``run_fleet``: scale an experiment to a fleet of devices and simulate it event by event.

Each simulated device plays one of the experiment's edges (round-robin over the workload's
target edges): that edge's routing policy and threshold (or target cloud share, calibrated on
the traces), and its own copy of that edge's link to the cloud (same profile, its own random
streams; timeline changes apply to every copy). Requests arrive over the whole fleet (Poisson
or evenly spaced), each to a device, and sample a recorded trace; a device serves its requests
one at a time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from edgecloud.simulator.des.config import ComputeProfile, FleetExperiment, load_fleet_experiment
from edgecloud.simulator.des.model import (
    CloudServer,
    CompiledPattern,
    Device,
    Recorder,
    compile_pattern,
    device_process,
)
from edgecloud.simulator.des.replay import build_patterns, calibrate_threshold
from edgecloud.simulator.des.report import CloudLoad, EdgeGroup, FleetReport, Percentiles
from edgecloud.simulator.des.traces import TraceSet, load_traces, synthetic_traces
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.experiment import EdgeSpec, Experiment, ExperimentLink

STOCHASTIC_POLICIES = frozenset({"random"})
SHIPPED_TRACES = Path(__file__).with_name("data") / "humaneval-qwen2.5-coder.json.gz"


@dataclass(frozen=True)
class _Group:
    edge: EdgeSpec
    threshold: float | None
    link: ExperimentLink | None
    patterns: tuple[tuple[CompiledPattern, ...], ...]  # [seed][trace]


def default_traces(path: str | None, *, max_tokens: int, seed: int) -> TraceSet:
    """The given trace file (``"synthetic"``: made-up traces); else the recording shipped with the
    package; else synthetic traces."""
    if path == "synthetic":
        return synthetic_traces(max_tokens=max_tokens, seed=seed)
    if path is not None:
        return load_traces(path)
    if SHIPPED_TRACES.is_file():
        return load_traces(SHIPPED_TRACES)
    return synthetic_traces(max_tokens=max_tokens, seed=seed)


def _as_setup(source: FleetExperiment | Experiment | str | Path) -> FleetExperiment:
    if isinstance(source, FleetExperiment):
        return source
    if isinstance(source, Experiment):
        return FleetExperiment(source)
    if isinstance(source, str | Path):
        return load_fleet_experiment(source)
    raise TypeError(f"expected an experiment, a fleet experiment or a path, got {type(source).__name__}")


def _cloud_link(experiment: Experiment, edge: str) -> ExperimentLink | None:
    ends = {edge, experiment.cloud.name}
    return next((link for link in experiment.links if {link.source, link.target} == ends), None)


def _groups(experiment: Experiment, traces: TraceSet, setup: FleetExperiment, seed: int) -> list[_Group]:
    fleet = setup.fleet
    names = experiment.workload.target_edges or tuple(e.name for e in experiment.edges)
    groups = []
    for name in names:
        index, edge = next((i, e) for i, e in enumerate(experiment.edges) if e.name == name)
        threshold = edge.threshold
        if edge.split_model is not None:
            raise ConfigError(("edges", index, "policy"), "fleet mode (--des) simulates hybrid routing; policy "
                              "'split' runs on the real daemons only (edgecloud simulate without --des)")
        try:
            if edge.cloud_share is not None:
                threshold = calibrate_threshold(edge.policy, traces.traces, edge.cloud_share)
            seeds = [seed * 7919 + i for i in range(fleet.policy_seeds if edge.policy in STOCHASTIC_POLICIES else 1)]
            patterns = build_patterns(traces.traces, edge.policy, threshold,
                                      max_new_tokens=experiment.workload.max_new_tokens, seeds=seeds)
        except ConfigError as exc:
            raise exc.prefixed(("edges", index)) from None
        compiled = tuple(tuple(compile_pattern(p, fleet.compute, fleet.wire) for p in row) for row in patterns)
        groups.append(_Group(edge, threshold, _cloud_link(experiment, name), compiled))
    return groups


def _arrivals(rng: np.random.Generator, kind: str, rate: float, requests: int, devices: int
              ) -> tuple[np.ndarray, np.ndarray]:
    if kind == "poisson":
        return np.cumsum(rng.exponential(1.0 / rate, requests)), rng.integers(0, devices, requests)
    return np.arange(requests) / rate, np.arange(requests) % devices


def _timeline(env: simpy.Environment, experiment: Experiment, devices: list[Device],
              groups: list[_Group]):
    for event in experiment.timeline:
        if event.at_s > env.now:
            yield env.timeout(event.at_s - env.now)
        for device in devices:
            group = groups[device.index % len(groups)]
            if device.link is not None and group.link is not None and group.link.name == event.link:
                device.link.set_profile(replace(event.profile, seed=device.seed_for(event.profile.seed)), env.now)


def run_fleet(experiment_or_config: FleetExperiment | Experiment | str | Path, *, devices: int | None = None,
              requests: int | None = None, seed: int | None = None, request_rate_per_s: float | None = None,
              traces: TraceSet | None = None, compute: ComputeProfile | None = None,
              cloud_replicas: int | None = None, cloud_max_batch: int | None = None) -> FleetReport:
    """Simulate the experiment scaled to ``devices`` devices serving ``requests`` requests.

    Keyword arguments override the ``[fleet]`` table; ``seed`` overrides the experiment's.
    Without ``traces`` (here or in the file) synthetic traces are used and the report says so.
    """
    started = time.perf_counter()
    setup = _as_setup(experiment_or_config).with_overrides(
        devices=devices, requests=requests, request_rate_per_s=request_rate_per_s, compute=compute,
        cloud_replicas=cloud_replicas, cloud_max_batch=cloud_max_batch)
    experiment, fleet = setup.experiment, setup.fleet
    workload = experiment.workload
    seed = experiment.seed if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError("seed", f"must be an integer, got {seed!r}")
    if traces is None:
        traces = default_traces(fleet.traces, max_tokens=workload.max_new_tokens, seed=seed)
    groups = _groups(experiment, traces, setup, seed)
    n_devices = fleet.devices or len(groups)
    rate = fleet.request_rate_per_s or workload.request_rate_per_s / len(groups) * n_devices
    n_requests = fleet.requests or max(1, round(rate * workload.duration_s))

    rng = np.random.default_rng(seed)
    arrival, target = _arrivals(rng, workload.arrival, rate, n_requests, n_devices)
    trace_index = rng.integers(0, len(traces.traces), n_requests)
    seed_index = rng.integers(0, fleet.policy_seeds, n_requests)
    jobs: list[list[tuple[float, int, CompiledPattern]]] = [[] for _ in range(n_devices)]
    chosen: list[CompiledPattern] = []
    for request, (t, d, k, s) in enumerate(zip(arrival.tolist(), target.tolist(), trace_index.tolist(),
                                               seed_index.tolist(), strict=True)):
        rows = groups[d % len(groups)].patterns
        compiled = rows[s % len(rows)][k]
        jobs[d].append((t, request, compiled))
        chosen.append(compiled)

    env = simpy.Environment()
    cloud = CloudServer(env, fleet.compute, replicas=fleet.cloud_replicas, max_batch=fleet.cloud_max_batch)
    recorder = Recorder(n_requests)
    fleet_devices = [Device(i, groups[i % len(groups)].link, experiment.cloud.name) for i in range(n_devices)]
    for device, device_jobs in zip(fleet_devices, jobs, strict=True):
        if device_jobs:
            env.process(device_process(env, device, device_jobs, cloud, recorder))
    if experiment.timeline:
        env.process(_timeline(env, experiment, fleet_devices, groups))
    loop_started = time.perf_counter()
    env.run()
    loop_s = time.perf_counter() - loop_started
    return _report(experiment, setup, seed, traces, groups, chosen, target, arrival, recorder, cloud, rate,
                   n_devices, time.perf_counter() - started, loop_s)


def _report(experiment: Experiment, setup: FleetExperiment, seed: int, traces: TraceSet, groups: list[_Group],
            chosen: list[CompiledPattern], target: np.ndarray, arrival: np.ndarray, rec: Recorder,
            cloud: CloudServer, rate: float, n_devices: int, wall_s: float, loop_s: float) -> FleetReport:
    fleet = setup.fleet
    start = np.asarray(rec.start)
    finish = np.asarray(rec.finish)
    patterns = [c.pattern for c in chosen]
    tokens = np.array([p.total_tokens for p in patterns], dtype=float)
    cloud_tokens = np.array([p.cloud_tokens + p.checked_tokens for p in patterns], dtype=float)
    round_trips = np.array([p.round_trips for p in patterns], dtype=float)
    busy = finish - start
    speed = np.divide(tokens, busy, out=np.full_like(tokens, np.inf), where=busy > 0)
    finite = np.isfinite(speed)
    simulated_s = float(finish.max()) if finish.size else 0.0
    group_of = target % len(groups)
    edge_groups = []
    for g, group in enumerate(groups):
        mask = group_of == g
        total = tokens[mask].sum()
        edge_groups.append(EdgeGroup(
            group.edge.name, group.edge.policy, group.threshold, group.link.name if group.link else None,
            len(range(g, n_devices, len(groups))), int(mask.sum()),
            float(cloud_tokens[mask].sum() / total) if total else 0.0,
            float(round_trips[mask].sum() / total) if total else 0.0, Percentiles.of(speed[mask & finite])))
    total_tokens = tokens.sum()
    load = CloudLoad(fleet.cloud_replicas, cloud.max_batch,
                     cloud.busy_s / (fleet.cloud_replicas * simulated_s) if simulated_s > 0 else 0.0,
                     cloud.busy_s, cloud.batches, cloud.round_trips,
                     cloud.round_trips / cloud.batches if cloud.batches else 0.0,
                     cloud.mean_queued(simulated_s), Percentiles.of(np.frombuffer(rec.cloud_wait, dtype=float)))
    compute = fleet.compute
    notes = [f"compute: {compute.source or 'given'}; cloud batching {compute.cloud_batching}"
             + (" (one round trip per forward, cloud_max_batch unused)" if compute.serial else ""),
             "round-trip granularity: one event per edge burst + uplink, per cloud batch, per downlink + burst",
             "positions follow each trace's recorded reference continuation (the LLM's output)",
             "outages of mode 'reset' are simulated as 'stall' (bytes wait for the link)"]
    if traces.synthetic:
        notes.insert(0, "SYNTHETIC traces: token agreement and features are made up, not recorded from models")
    if not finite.all():
        notes.append(f"{int((~finite).sum())} requests took no time (zero compute and latency): left out of tokens/s")
    models = sorted({group.edge.model for group in groups})
    if len(models) > 1:
        notes.append(f"edges name different models ({', '.join(models)}); all share one compute profile and "
                     "one trace set")
    for group in groups:
        if group.link is None:
            notes.append(f"edge {group.edge.name!r} has no link to {experiment.cloud.name!r}: its transfers take 0 s")
    config: dict[str, Any] = {
        "compute": fleet.compute.to_dict(), "wire": asdict(fleet.wire),
        "arrival": experiment.workload.arrival, "max_new_tokens": experiment.workload.max_new_tokens,
        "policy_seeds": fleet.policy_seeds, "event_loop_s": loop_s, "source": experiment.source,
    }
    return FleetReport(
        experiment=experiment.name, seed=seed, devices=n_devices, requests=len(chosen), traces=traces.describe(),
        synthetic_traces=traces.synthetic, request_rate_per_s=rate, simulated_s=simulated_s, wall_s=wall_s,
        events=rec.timeouts + 2 * cloud.batches + cloud.wakes, tokens=int(total_tokens),
        round_trips=int(round_trips.sum()),
        cloud_share=float(cloud_tokens.sum() / total_tokens) if total_tokens else 0.0,
        round_trips_per_token=float(round_trips.sum() / total_tokens) if total_tokens else 0.0,
        bytes_up=int(sum(sum(c.up_bytes) for c in chosen)),
        bytes_down=int(sum(c.down_bytes * c.pattern.round_trips for c in chosen)),
        tokens_per_s=Percentiles.of(speed[finite]), latency_s=Percentiles.of(finish - arrival),
        device_wait_s=Percentiles.of(start - arrival), cloud=load, edges=tuple(edge_groups), config=config,
        notes=tuple(notes))
