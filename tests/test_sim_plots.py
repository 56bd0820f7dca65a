"""Experiment plots: what the shipped experiments promise to show is drawn."""

from __future__ import annotations

import pytest

from edgecloud.simulator.plots import ROUND_TRIPS_LABEL, latency_figure, make_plots


def record(i: int, start: float, trips: int, tokens: int, status: str = "OK") -> dict:
    return {"id": i, "edge": "edge0", "status": status, "start_s": start, "end_s": start + 2.0, "latency_s": 2.0,
            "ttft_s": 0.5, "output_tokens": tokens, "cloud_round_trips": trips, "edge_tokens": tokens,
            "checked_tokens": 0, "cloud_tokens": 0}


LINK_LOG = [
    {"event": "initial", "link": "edge0-cloud", "t_s": 0.0,
     "state": {"uplink_rate_mbps": 8.0, "downlink_rate_mbps": 25.0, "uplink_latency_ms": 25.0,
               "downlink_latency_ms": 25.0}},
    {"event": "change", "link": "edge0-cloud", "t_s": 5.0, "changes": {"rate_mbps": 1},
     "state": {"uplink_rate_mbps": 1.0, "downlink_rate_mbps": 1.0, "uplink_latency_ms": 25.0,
               "downlink_latency_ms": 25.0}},
    {"event": "end", "link": "edge0-cloud", "t_s": 12.0,
     "state": {"uplink_rate_mbps": 1.0, "downlink_rate_mbps": 1.0, "uplink_latency_ms": 25.0,
               "downlink_latency_ms": 25.0}},
]


def test_latency_plot_draws_round_trips_per_token_per_request(tmp_path) -> None:
    records = [record(0, 1.0, 4, 16), record(1, 4.0, 2, 8), record(2, 7.0, 0, 0), record(3, 9.0, 3, 12, "UNAVAILABLE")]
    fig = latency_figure(records, LINK_LOG, title="t")
    [axis] = [ax for ax in fig.axes if ax.get_ylabel() == ROUND_TRIPS_LABEL]
    [line] = axis.get_lines()[:1]
    # Successful requests with output only: 4/16 at t=1, 2/8 at t=4.
    assert list(line.get_xdata()) == [1.0, 4.0]
    assert list(line.get_ydata()) == pytest.approx([0.25, 0.25])
    paths = make_plots(tmp_path, records, LINK_LOG, title="t")
    assert [p.name for p in paths] == ["latency.png", "tokens.png"] and all(p.stat().st_size > 0 for p in paths)


def test_latency_plot_draws_the_split_cut_of_each_request() -> None:
    records = [{**record(i, 1.0 + 3 * i, 16, 16), "policy": "split", "split_cut": cut, "split_codec": codec}
               for i, (cut, codec) in enumerate([(0, "fp16"), (28, ""), (28, ""), (0, "int8-token")])]
    fig = latency_figure(records, LINK_LOG, title="t")
    [axis] = [ax for ax in fig.axes if ax.get_ylabel() == "split cut: layers on the edge"]
    [line] = axis.get_lines()
    assert list(line.get_xdata()) == [1.0, 4.0, 7.0, 10.0] and list(line.get_ydata()) == [0, 28, 28, 0]
    assert [t.get_text() for t in axis.texts] == ["fp16", "local", "local", "int8-token"]
