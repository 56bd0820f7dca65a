"""Discrete-event fleet mode: determinism, routing extremes, queueing, capacity, analytic latency, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgecloud.simulator.des.__main__ import main as des_main
from edgecloud.simulator.des.compute import FORMAT, SHIPPED_PROFILE, ForwardCost, load_compute_profile
from edgecloud.simulator.des.config import (
    FleetConfig,
    fleet_experiment_from_dict,
    linear_compute,
    load_fleet_experiment,
)
from edgecloud.simulator.des.fleet import run_fleet
from edgecloud.simulator.des.replay import WireProfile, build_patterns
from edgecloud.simulator.des.traces import TokenTrace, TraceSet, load_traces, save_traces, synthetic_traces
from edgecloud.simulator.errors import ConfigError

LINK = {"latency_ms": 20.0, "rate_mbps": 10.0}


def setup(policy: str = "entropy", *, threshold: float | None = None, cloud_share: float | None = None,
          link: dict[str, Any] | None = None, rate: float = 1.0, max_new: int = 48, fleet: dict | None = None,
          arrival: str = "poisson", timeline: list | None = None, seed: int = 3):
    edge: dict[str, Any] = {"name": "e0", "policy": policy}
    if threshold is not None:
        edge["threshold"] = threshold
    if cloud_share is not None:
        edge["cloud_share"] = cloud_share
    data: dict[str, Any] = {
        "name": "des-test", "seed": seed, "edges": [edge],
        "links": {"e0-cloud": {"from": "e0", "to": "cloud", **(LINK if link is None else link)}},
        "workload": {"prompts": ["x"], "request_rate_per_s": rate, "duration_s": 10.0, "max_new_tokens": max_new,
                     "arrival": arrival},
        "fleet": fleet or {},
    }
    if timeline:
        data["timeline"] = timeline
    return fleet_experiment_from_dict(data)


TRACES = synthetic_traces(count=12, max_tokens=48, seed=5)
# Hand-made costs of a batched cloud, for the tests of queueing dynamics (independent of the shipped profile).
BATCHED = {"edge_s_per_token": 0.086, "edge_s_per_extra_token": 0.002, "cloud_s_per_forward": [[1, 0.224], [8, 0.4]],
           "cloud_s_per_extra_token": 0.002}


def comparable(report) -> dict:
    data = report.to_dict()
    for key in ("wall_s", "events_per_s"):
        data.pop(key)
    data["config"].pop("event_loop_s")
    return data


def test_same_seed_same_report_and_another_seed_differs() -> None:
    exp = setup(cloud_share=0.3)
    first = run_fleet(exp, devices=20, requests=200, seed=1, traces=TRACES, request_rate_per_s=2.0)
    again = run_fleet(exp, devices=20, requests=200, seed=1, traces=TRACES, request_rate_per_s=2.0)
    other = run_fleet(exp, devices=20, requests=200, seed=2, traces=TRACES, request_rate_per_s=2.0)
    assert comparable(first) == comparable(again)
    assert comparable(first) != comparable(other)
    json.loads(first.to_json())  # valid JSON, no NaN/inf


def test_never_flagging_threshold_gives_no_cloud_load() -> None:
    report = run_fleet(setup("max-prob", threshold=0.0), devices=10, requests=50, traces=TRACES)
    assert report.cloud_share == 0.0
    assert report.round_trips == 0 and report.round_trips_per_token == 0.0
    assert report.cloud.batches == 0 and report.cloud.busy_s == 0.0 and report.cloud.utilisation == 0.0
    assert report.cloud.queue_delay_s.count == 0
    assert report.tokens > 0


def test_llm_only_routes_every_token_through_the_cloud() -> None:
    report = run_fleet(setup("llm-only"), devices=5, requests=20, traces=TRACES)
    assert report.cloud_share == pytest.approx(1.0)
    assert report.round_trips >= report.tokens


def test_higher_arrival_rate_means_longer_cloud_queues() -> None:
    exp = setup("speculative", fleet={"cloud_max_batch": 4, **BATCHED})
    delays = [run_fleet(exp, devices=200, requests=400, traces=TRACES, request_rate_per_s=rate).cloud.queue_delay_s
              for rate in (0.5, 4.0, 20.0)]
    assert delays[0].mean < delays[1].mean < delays[2].mean
    assert delays[0].p95 < delays[2].p95


def test_cloud_capacity_bottleneck_shows_as_full_utilisation() -> None:
    exp = setup("speculative", fleet={"cloud_max_batch": 2, **BATCHED})
    light = run_fleet(exp, devices=100, requests=100, traces=TRACES, request_rate_per_s=0.05)
    heavy = run_fleet(exp, devices=100, requests=500, traces=TRACES, request_rate_per_s=50.0)
    assert light.cloud.utilisation < 0.3
    assert heavy.cloud.utilisation > 0.95
    assert heavy.cloud.mean_batch > 1.5
    assert heavy.cloud.queue_delay_s.p50 > 10 * light.cloud.queue_delay_s.p50
    assert heavy.tokens_per_s.p50 < light.tokens_per_s.p50
    more = run_fleet(setup("speculative", fleet={"cloud_max_batch": 2, "cloud_replicas": 4, **BATCHED}), devices=100,
                     requests=500, traces=TRACES, request_rate_per_s=50.0)
    assert more.cloud.queue_delay_s.p50 < heavy.cloud.queue_delay_s.p50


def agreeing_trace(length: int = 30, prompt: int = 40) -> TraceSet:
    tokens = tuple(range(100, 100 + length))
    return TraceSet((TokenTrace(prompt, tokens, tokens, (1.0,) * length, (0.5,) * length, (0.2,) * length),),
                    synthetic=True)


def test_single_request_latency_equals_the_analytic_sum() -> None:
    latency_s, up_mbps, down_mbps, burst = 0.020, 2.0, 8.0, 1
    link = {"latency_ms": latency_s * 1e3, "uplink": {"rate_mbps": up_mbps}, "downlink": {"rate_mbps": down_mbps},
            "burst_bytes": burst}
    compute = linear_compute(edge_s_per_token=0.05, edge_s_per_extra_token=0.002,
                             cloud_s_per_forward=((1, 0.2), (8, 0.5)), cloud_s_per_extra_token=0.01)
    wire = WireProfile()
    exp = setup("entropy", threshold=0.5, link=link, max_new=20)
    traces = agreeing_trace()
    [[pattern]] = build_patterns(traces.traces, "entropy", 0.5, max_new_tokens=20)
    # Every token is flagged: windows of 8 (the policy's cap), then the 2 tokens left in the budget.
    assert pattern.windows == (8, 8, 2) and pattern.accepted == (8, 8, 2) and pattern.context == (40, 1, 1)
    assert pattern.bursts == (8, 8, 2, 0) and pattern.total_tokens == 20
    report = run_fleet(exp, devices=1, requests=1, traces=traces, compute=compute)
    edge = 18 * 0.05 + ((40 - 1) + 1 + 1) * 0.002  # 18 forwards; prefill and two 2-token feeds add tokens
    network = cloud = 0.0
    for context, window in zip(pattern.context, pattern.windows, strict=True):
        up, down = wire.up_bytes(context, window), wire.down_bytes()
        network += 2 * latency_s + (up - burst) * 8 / (up_mbps * 1e6) + (down - burst) * 8 / (down_mbps * 1e6)
        cloud += 0.2 + 0.01 * (context + window - 1)
    expected = edge + network + cloud
    assert report.latency_s.count == 1
    assert report.latency_s.max == pytest.approx(expected, rel=1e-9)
    assert report.tokens_per_s.p50 == pytest.approx(20 / expected, rel=1e-9)
    assert report.cloud.queue_delay_s.max == 0.0
    assert report.cloud.busy_s == pytest.approx(cloud, rel=1e-9)


def test_scheduled_outage_delays_the_request() -> None:
    traces = agreeing_trace()
    base = run_fleet(setup("entropy", threshold=0.5, max_new=20, fleet=BATCHED), devices=1, requests=1, traces=traces)
    cut = run_fleet(setup("entropy", threshold=0.5, max_new=20, fleet=BATCHED, timeline=[{"at_s": 0, "link": "e0-cloud",
                                                                          "outage_s": 5.0}]),
                    devices=1, requests=1, traces=traces)
    assert cut.latency_s.max > base.latency_s.max + 3.0


def test_cloud_share_target_is_calibrated_on_the_traces() -> None:
    low = run_fleet(setup("entropy", cloud_share=0.1), devices=10, requests=100, traces=TRACES)
    high = run_fleet(setup("entropy", cloud_share=0.6), devices=10, requests=100, traces=TRACES)
    assert low.edges[0].threshold is not None and low.edges[0].threshold > high.edges[0].threshold
    assert low.cloud_share < high.cloud_share


def test_synthetic_traces_are_labelled_and_files_round_trip(tmp_path) -> None:
    report = run_fleet(setup(), devices=3, requests=5, traces=TRACES)
    assert report.synthetic_traces and report.traces["kind"] == "synthetic"
    assert any("SYNTHETIC" in note for note in report.notes)
    path = save_traces(TRACES, tmp_path / "t.json.gz")
    loaded = load_traces(path)
    assert loaded.synthetic and len(loaded.traces) == len(TRACES.traces)
    for got, want in zip(loaded.traces, TRACES.traces, strict=True):
        assert (got.prompt_tokens, got.slm_tokens, got.llm_tokens) == (want.prompt_tokens, want.slm_tokens,
                                                                       want.llm_tokens)
        assert got.entropy == pytest.approx(want.entropy, abs=1e-5)


def test_fleet_table_and_workload_keys_are_read(tmp_path) -> None:
    text = """
name = "fleet-file"
[[edges]]
name = "e0"
policy = "max-prob"
threshold = 0.5
[links.e0-cloud]
from = "e0"
to = "cloud"
preset = "4g"
[workload]
prompts = ["x"]
request_rate_per_s = 0.5
duration_s = 10
max_new_tokens = 32
devices = 7
[fleet]
requests = 11
cloud_replicas = 2
cloud_s_per_forward = [[1, 0.1], [4, 0.2]]
"""
    path = tmp_path / "exp.toml"
    path.write_text(text)
    exp = load_fleet_experiment(path)
    assert exp.fleet.devices == 7 and exp.fleet.requests == 11 and exp.fleet.cloud_replicas == 2
    assert exp.fleet.compute.cloud_forward_s(2) == pytest.approx(0.1 + 0.1 / 3)
    out = tmp_path / "report.json"
    assert des_main([str(path), "--requests", "9", "--traces", "synthetic", "--json", str(out),
                     "--quiet"]) == 0
    data = json.loads(out.read_text())
    assert data["devices"] == 7 and data["requests"] == 9 and data["synthetic_traces"] is True


@pytest.mark.parametrize(("fleet", "where"), [
    ({"devices": 0}, "fleet.devices"),
    ({"cloud_max_batch": 1.5}, "fleet.cloud_max_batch"),
    ({"bogus": 1}, "fleet.bogus"),
    ({"cloud_s_per_forward": [[4, 0.1], [2, 0.2]]}, "fleet.cloud_s_per_forward"),
    ({"edge_s_per_token": -1}, "fleet.edge_s_per_token"),
    ({"cloud_batching": "free"}, "fleet.cloud_batching"),
    ({"compute_profile": 3}, "fleet.compute_profile"),
    ({"compute_profile": "/nonexistent/profile.json"}, "fleet.compute_profile"),
    ({"wire": {"bytes_per_tokn": 3}}, "fleet.wire.bytes_per_tokn"),
])
def test_bad_fleet_values_name_the_key(fleet: dict, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        setup(fleet=fleet)
    assert info.value.key == where


def test_default_compute_is_the_shipped_measured_profile_with_a_serial_cloud() -> None:
    compute = FleetConfig().compute
    assert SHIPPED_PROFILE.is_file() and compute.source == str(SHIPPED_PROFILE)
    shipped = load_compute_profile(SHIPPED_PROFILE)
    assert compute.cloud_batching == "serial" and compute.cloud == shipped.cloud and compute.edge == shipped.edge
    for side in (compute.edge, compute.cloud):
        assert side.batches[0] == 1
        assert side.seconds(1, 64) > 4 * side.seconds(1, 1)  # extra tokens do not come free on a CPU
        if len(side.batches) > 1:
            assert side.seconds(4, 1) > 1.5 * side.seconds(1, 1)  # nor does a larger batch
    if len(compute.cloud.batches) == 1:  # batching would be free: refused
        with pytest.raises(ConfigError, match="batched needs"):
            setup(fleet={"cloud_batching": "batched"})


def test_serial_cloud_runs_one_round_trip_per_forward_and_batching_is_only_a_what_if(tmp_path) -> None:
    points = [[1, 1, 0.1], [1, 64, 1.0], [4, 1, 0.15], [4, 64, 3.0]]
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"format": FORMAT, "edge": {"points": [[1, 1, 0.01], [1, 64, 0.1]]},
                                "cloud": {"points": points}}))
    traces = agreeing_trace()
    runs = {}
    for batching in ("serial", "batched"):
        exp = setup("llm-only", rate=1000.0, max_new=20, arrival="constant",
                    fleet={"compute_profile": str(path), "cloud_batching": batching, "cloud_max_batch": 4})
        runs[batching] = run_fleet(exp, devices=8, requests=8, traces=traces)
    serial, batched = runs["serial"], runs["batched"]
    assert serial.cloud.batches == serial.cloud.round_trips == serial.round_trips  # never two in one forward
    assert serial.cloud.max_batch == 1 and batched.cloud.max_batch == 4
    assert batched.cloud.batches < batched.cloud.round_trips
    # 8 requests arrive at once: serial makes them queue; a batched cloud serves 4 per forward.
    assert serial.cloud.busy_s > batched.cloud.busy_s
    assert serial.latency_s.max > batched.latency_s.max
    assert any("cloud batching serial" in note for note in serial.notes)


def test_forward_cost_grid_interpolates_and_extrapolates_linearly() -> None:
    cost = ForwardCost(((1, 1, 0.1), (1, 9, 0.5), (4, 1, 0.2), (4, 9, 1.4)))
    assert cost.seconds(1, 1) == pytest.approx(0.1)
    assert cost.seconds(1, 5) == pytest.approx(0.3)
    assert cost.seconds(1, 17) == pytest.approx(0.9)  # along the last segment
    assert cost.seconds(2, 1) == pytest.approx(0.1 + 0.1 / 3)
    assert cost.seconds(8, 1) == pytest.approx(0.2 + 0.1 * 4 / 3)
    with pytest.raises(ConfigError, match="given twice"):
        ForwardCost(((1, 1, 0.1), (1, 1, 0.2)))


def test_compute_profile_file_is_read_relative_to_the_experiment(tmp_path) -> None:
    (tmp_path / "p.json").write_text(json.dumps({"format": FORMAT, "cloud_batching": "batched",
                                                 "edge": {"points": [[1, 1, 0.02]]},
                                                 "cloud": {"points": [[1, 1, 0.3], [2, 1, 0.4]]}}))
    (tmp_path / "exp.toml").write_text('name = "p"\n[[edges]]\nname = "e0"\nthreshold = 0.5\n'
                                       '[workload]\nprompts = ["x"]\nrequest_rate_per_s = 1\nduration_s = 1\n'
                                       '[fleet]\ncompute_profile = "p.json"\n')
    compute = load_fleet_experiment(tmp_path / "exp.toml").fleet.compute
    assert compute.cloud_batching == "batched" and compute.cloud_forward_s(2) == pytest.approx(0.4)
    assert compute.edge_burst_s(3, 3) == pytest.approx(0.06)
    (tmp_path / "p.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ConfigError, match="not a compute profile"):
        load_fleet_experiment(tmp_path / "exp.toml")
    (tmp_path / "p.json").write_text(json.dumps({"format": FORMAT, "edge": {"points": [[1, 0, 0.1]]},
                                                 "cloud": {"points": [[1, 1, 0.1]]}}))
    with pytest.raises(ConfigError, match="tokens must be an integer") as info:
        load_fleet_experiment(tmp_path / "exp.toml")
    assert "compute_profile.edge.points.0" in str(info.value)


def test_the_recorder_measures_a_compute_profile(slm) -> None:
    from edgecloud.simulator.des.compute import measure_forward_cost, profile_grid

    grid = profile_grid((1, 2), (1, 4), max_batch_tokens=4)
    assert grid == [(1, 1), (1, 4), (2, 1)]
    points = measure_forward_cost(slm, grid, context=8, repeats=2, head_rows=1, log=lambda _: None)
    assert [p[:2] for p in points] == [[1, 1], [1, 4], [2, 1]] and all(p[2] > 0 for p in points)
    cost = ForwardCost(tuple(tuple(p) for p in points))
    assert cost.seconds(1, 2) > 0


def test_bad_input_gets_clear_errors(tmp_path, capsys) -> None:
    with pytest.raises(ConfigError, match="hidden states"):
        run_fleet(setup("reward", threshold=0.5), devices=1, requests=1, traces=TRACES)
    with pytest.raises(ConfigError, match="cannot calibrate policy 'speculative'"):
        run_fleet(setup("speculative", cloud_share=0.2), devices=1, requests=1, traces=TRACES)
    with pytest.raises(ConfigError, match="no such trace file"):
        load_traces(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "edgecloud-des-traces", "version": 1, "traces": [
        {"prompt_tokens": 3, "slm_tokens": [1, 2], "llm_tokens": [1], "entropy": [0.1], "max_prob": [0.9],
         "margin": [0.5]}]}))
    with pytest.raises(ConfigError, match=r"traces\[0\]\.slm_tokens: has 2 positions"):
        load_traces(bad)
    with pytest.raises(ValueError, match="devices"):
        run_fleet(setup(), devices=-3, requests=1, traces=TRACES)
    missing = tmp_path / "nope.toml"
    assert des_main([str(missing)]) == 2
    assert "cannot read" in capsys.readouterr().err


SIMULATOR = Path(__file__).resolve().parent.parent / "simulator"
SPLIT_EXPERIMENTS = [SIMULATOR / "experiments/split-uplink-collapse.toml"]  # real daemons only
EXPERIMENTS = [*sorted(p for p in SIMULATOR.glob("experiments/*.toml") if p not in SPLIT_EXPERIMENTS),
               SIMULATOR / "des/examples/city-fleet.toml"]


def test_split_experiments_are_refused_by_the_fleet_mode_with_a_reason() -> None:
    with pytest.raises(ConfigError, match="real daemons only"):
        run_fleet(SPLIT_EXPERIMENTS[0], devices=4, requests=4, traces=TRACES)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_shipped_experiments_run_at_small_scale(path: Path) -> None:
    report = run_fleet(path, devices=12, requests=40, traces=TRACES)
    assert report.requests == 40 and report.tokens > 0
    assert 0.0 <= report.cloud_share <= 1.0 and 0.0 <= report.cloud.utilisation <= 1.0 + 1e-9
    assert report.latency_s.p5 > 0 and len(report.edges) >= 1
