"""The experiment runner: real daemons with tiny random models, shaped links, a timeline."""

from __future__ import annotations

import json
import os
from io import StringIO
from pathlib import Path

import pytest
from rich.console import Console

from edgecloud.simulator.cluster import assign_cores, plan_routes
from edgecloud.simulator.experiment import parse_experiment
from edgecloud.simulator.records import percentile, read_jsonl, summarize
from edgecloud.simulator.runner import run_experiment
from edgecloud.simulator.workload import arrival_times, plan_arrivals

EXPERIMENT = """
name = "tiny-latency-step"
seed = 5

[cloud]
model = "{llm}"

[[edges]]
name = "edge0"
model = "{slm}"
policy = "llm-only"

[links.edge0-cloud]
from = "edge0"
to = "cloud"
latency_ms = 20

[links.coordinator-edge0]
from = "coordinator"
to = "edge0"
latency_ms = 5
downlink = {{ latency_ms = 2 }}

[[timeline]]
at_s = 1.9
link = "edge0-cloud"
latency_ms = 100

[[timeline]]
at_s = 3.0
link = "edge0-cloud"
outage_s = 1.0

[workload]
prompts = ["def fib(n):", "for i in range(10):"]
request_rate_per_s = 1
arrival = "constant"
duration_s = 4
max_new_tokens = 8
"""


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, make_tiny_pair) -> dict[str, Path]:
    return make_tiny_pair(tmp_path_factory.mktemp("runner-models"), (21, 22))  # conftest.PAIR_SEEDS


def _experiment(tiny_pair: dict[str, Path], text: str = EXPERIMENT):
    return parse_experiment(text.format(slm=tiny_pair["slm"], llm=tiny_pair["llm"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_run_applies_the_timeline_and_writes_everything(tiny_pair, tmp_path) -> None:
    experiment = _experiment(tiny_pair)
    out = tmp_path / "run"
    summary_path = run_experiment(experiment, out_dir=out, dtype="fp32", request_timeout_s=60,
                                  console=Console(file=StringIO()))
    summary = json.loads(summary_path.read_text())
    records = sorted(read_jsonl(out / "requests.jsonl"), key=lambda r: r["id"])

    assert [r["id"] for r in records] == [0, 1, 2, 3]
    assert summary["planned_requests"] == summary["requests"] == 4
    assert summary["ok"] + summary["failed"] == 4
    assert summary["ok"] == sum(r["status"] == "OK" for r in records)
    assert all(r["status"] == "OK" for r in records), [r["error"] for r in records]
    assert summary["output_tokens"] == sum(r["output_tokens"] for r in records) > 0
    assert all(r["cloud_round_trips"] > 0 for r in records)

    # the link state each request started under: 20 ms before the change at 1.9 s, 100 ms after
    one_way = [r["links_at_start"]["edge0-cloud"]["uplink_latency_ms"] for r in records]
    assert one_way == [20, 20, 100, 100]
    # every round trip pays the link's RTT, so the later requests are slower
    before, after = records[:2], records[2:]
    assert max(r["latency_s"] for r in before) < min(r["latency_s"] for r in after)
    for r in after:
        assert r["latency_s"] >= r["cloud_round_trips"] * 0.2 * 0.9
    # the outage from 3.0 s to 4.0 s stalls the request that starts at 3.0 s
    assert records[3]["end_s"] >= 4.0

    link_log = read_jsonl(out / "links.jsonl")
    changes = [e for e in link_log if e["event"] == "change"]
    assert [(e["link"], e["scheduled_s"]) for e in changes] == [("edge0-cloud", 1.9), ("edge0-cloud", 3.0)]
    assert all(abs(e["t_s"] - e["scheduled_s"]) < 0.1 for e in changes)
    outages = [e for e in link_log if e["event"] in ("outage_start", "outage_end") and e["link"] == "edge0-cloud"]
    assert [e["event"] for e in outages] == ["outage_start", "outage_end"]
    assert outages[0]["t_s"] == pytest.approx(3.0, abs=0.1) and outages[1]["t_s"] == pytest.approx(4.0, abs=0.1)
    mirrored = next(e for e in link_log if e["link"] == "coordinator-edge0")
    assert mirrored["state"]["uplink_latency_ms"] == 5 and mirrored["state"]["downlink_latency_ms"] == 2
    assert summary["wiring"]["links"]["coordinator-edge0"]["mirrored"] is True

    for name in summary["files"]["plots"]:
        assert (out / name).stat().st_size > 10_000
    assert {"latency.png", "tokens.png"} <= set(summary["files"]["plots"])
    assert summary["link_stats"]["edge0-cloud"]["uplink"]["bytes"] > 0
    assert summary["link_stats"]["coordinator-edge0"]["downlink"]["bytes"] > 0  # edge0 → coordinator
    pids = summary["wiring"]["processes"]
    assert set(pids) == {"coordinator", "cloud", "edge0"}
    assert not any(_alive(pid) for pid in pids.values())


def test_arrivals_are_seeded_and_bounded(tiny_pair) -> None:
    experiment = _experiment(tiny_pair)
    assert arrival_times(experiment.workload, experiment.seed) == [0.0, 1.0, 2.0, 3.0]
    poisson = _experiment(tiny_pair, EXPERIMENT.replace('arrival = "constant"', 'arrival = "poisson"')
                          .replace("duration_s = 4", "duration_s = 200"))
    times = arrival_times(poisson.workload, 5)
    assert times == arrival_times(poisson.workload, 5) != arrival_times(poisson.workload, 6)
    assert all(0 < t < 200 for t in times) and times == sorted(times)
    assert 150 < len(times) < 250  # rate 1/s
    plan = plan_arrivals(experiment)
    assert [a.prompt.text for a in plan] == ["def fib(n):", "for i in range(10):"] * 2
    assert {a.edge for a in plan} == {"edge0"}


def test_routes_cores_and_summary_helpers(tiny_pair) -> None:
    routes, idle = plan_routes(_experiment(tiny_pair))
    assert idle == []
    assert (routes["edge0-cloud"].dialer, routes["edge0-cloud"].acceptor) == ("edge0", "cloud")
    mirrored = routes["coordinator-edge0"]
    assert mirrored.mirrored and mirrored.proxy_profile(mirrored.link.profile).uplink.latency_ms == 2
    assert assign_cores(1, [0, 1]) == ([1], [[0]])
    assert assign_cores(2, [0]) == (None, [None, None])
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([], 95) is None
    base = {"edge": "e", "edge_tokens": 3, "cloud_tokens": 1, "checked_tokens": 1, "output_tokens": 4,
            "cloud_round_trips": 2, "bytes_up": 10, "bytes_down": 20, "latency_s": 1.0, "ttft_s": 0.1,
            "queue_delay_s": 0.0}
    summary = summarize([{**base, "status": "OK"}, {**base, "status": "UNAVAILABLE"}], makespan_s=2.0)
    assert (summary["requests"], summary["ok"], summary["failed"]) == (2, 1, 1)
    assert summary["failures"] == {"UNAVAILABLE": 1}
    assert summary["cloud_share"] == 0.5 and summary["tokens_per_s"] == 2.0
