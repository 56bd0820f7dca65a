"""Plots of an experiment run (matplotlib, Agg backend, PNG files).

- ``latency.png``: each request's latency (and time to first token) against its start time,
  failures marked; below it each request's cloud round trips per output token; below that the
  state of the links: rate steps (Mbit/s, solid uplink, dashed downlink), one-way latency
  steps (ms, dotted), outages shaded, timeline events as lines.
- ``tokens.png``: tokens by source per request (edge unchecked, edge checked by the cloud, cloud).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

OUTAGE_COLOR = "tab:red"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def outage_windows(link_log: Sequence[dict[str, Any]], end_s: float) -> dict[str, list[tuple[float, float]]]:
    """``(start, end)`` of every outage, by link (one still open at the end is closed at ``end_s``)."""
    windows: dict[str, list[tuple[float, float]]] = defaultdict(list)
    open_at: dict[str, float] = {}
    for entry in link_log:
        name = entry["link"]
        if entry["event"] == "outage_start":
            open_at[name] = entry["t_s"]
        elif entry["event"] == "outage_end" and name in open_at:
            windows[name].append((open_at.pop(name), entry["t_s"]))
    for name, start in open_at.items():
        windows[name].append((start, end_s))
    return dict(windows)


def link_steps(link_log: Sequence[dict[str, Any]], key: str) -> dict[str, tuple[list[float], list[float]]]:
    """Step series ``(times, values)`` of one state field by link (None → NaN: not drawn)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for entry in link_log:
        if entry["event"] not in ("initial", "change", "end"):
            continue
        times, values = series.setdefault(entry["link"], ([], []))
        value = entry["state"].get(key)
        times.append(entry["t_s"])
        values.append(math.nan if value is None else float(value))
    return series


def _end_s(records: Sequence[dict[str, Any]], link_log: Sequence[dict[str, Any]]) -> float:
    ends = [r["end_s"] for r in records] + [e["t_s"] for e in link_log]
    return max(ends, default=1.0) or 1.0


def _shade_and_mark(axes: Sequence[Any], link_log: Sequence[dict[str, Any]], end_s: float) -> None:
    for index, (name, spans) in enumerate(sorted(outage_windows(link_log, end_s).items())):
        for span_index, (start, end) in enumerate(spans):
            for ax_index, ax in enumerate(axes):
                label = f"outage {name}" if ax_index == 0 and span_index == 0 else None
                ax.axvspan(start, end, color=OUTAGE_COLOR, alpha=0.12 + 0.06 * (index % 3), lw=0, label=label)
    changes = [e for e in link_log if e["event"] == "change"]
    for entry in changes:
        for ax in axes:
            ax.axvline(entry["t_s"], color="0.4", ls="--", lw=0.8)
        text = ", ".join(f"{k}={v}" for k, v in entry.get("changes", {}).items())
        axes[0].annotate(f"{entry['link']}: {text}", (entry["t_s"], 1.0), xycoords=("data", "axes fraction"),
                         rotation=90, va="top", ha="right", fontsize=7, color="0.3")


ROUND_TRIPS_LABEL = "cloud round trips per token"


def round_trips_per_token(record: dict[str, Any]) -> float | None:
    """A request's cloud round trips over its output tokens (None without output)."""
    tokens = record.get("output_tokens") or 0
    return record["cloud_round_trips"] / tokens if tokens else None


def latency_figure(records: Sequence[dict[str, Any]], link_log: Sequence[dict[str, Any]], *, title: str = ""):
    """The figure of ``latency.png`` (axes: latency, round trips per token, link state)."""
    plt = _pyplot()
    end_s = _end_s(records, link_log)
    fig, (top, middle, bottom) = plt.subplots(3, 1, sharex=True, figsize=(11, 9), height_ratios=(2, 1, 1))
    edges = sorted({r["edge"] for r in records})
    for edge in edges:
        ok = [r for r in records if r["edge"] == edge and r["status"] == "OK"]
        line = top.plot([r["start_s"] for r in ok], [r["latency_s"] for r in ok], "o", label=f"{edge} latency")[0]
        ttft = [r for r in ok if r["ttft_s"] is not None]
        top.plot([r["start_s"] for r in ttft], [r["ttft_s"] for r in ttft], "v", ms=4, alpha=0.6,
                 color=line.get_color(), label=f"{edge} time to first token")
    failed = [r for r in records if r["status"] != "OK"]
    if failed:
        statuses = ", ".join(sorted({r["status"] for r in failed}))
        top.plot([r["start_s"] for r in failed], [r["latency_s"] for r in failed], "x", color=OUTAGE_COLOR, ms=9,
                 mew=2, label=f"failed ({statuses})")
    top.set_ylabel("seconds")
    top.set_title(title or "latency over time")
    for edge in edges:
        ok = [(r["start_s"], round_trips_per_token(r)) for r in records if r["edge"] == edge and r["status"] == "OK"]
        ok = [(t, v) for t, v in ok if v is not None]
        middle.plot([t for t, _ in ok], [v for _, v in ok], "o", label=edge)
    middle.set_ylabel(ROUND_TRIPS_LABEL)
    middle.set_ylim(bottom=0)
    if edges:
        middle.legend(fontsize=7, loc="upper left")
    _plot_split_cuts(middle.twinx(), records, edges)
    rate_ax, latency_ax = bottom, bottom.twinx()
    ups, downs = link_steps(link_log, "uplink_rate_mbps"), link_steps(link_log, "downlink_rate_mbps")
    up_ms, down_ms = link_steps(link_log, "uplink_latency_ms"), link_steps(link_log, "downlink_latency_ms")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, name in enumerate(sorted(ups)):
        color = colors[index % len(colors)]
        rate_ax.step(*ups[name], where="post", color=color, label=f"{name} up Mbit/s")
        rate_ax.step(*downs[name], where="post", color=color, ls="--", label=f"{name} down Mbit/s")
        latency_ax.step(*up_ms[name], where="post", color=color, ls=":", label=f"{name} one-way ms (up)")
        if down_ms[name][1] != up_ms[name][1]:
            latency_ax.step(*down_ms[name], where="post", color=color, ls="-.", label=f"{name} one-way ms (down)")
    rate_ax.set_ylabel("rate, Mbit/s (unlimited: not drawn)")
    latency_ax.set_ylabel("one-way latency, ms")
    latency_ax.set_ylim(bottom=0)
    bottom.set_xlabel("seconds since the workload started")
    bottom.set_xlim(0, end_s * 1.02)
    _shade_and_mark([top, middle, bottom], link_log, end_s)
    top.legend(fontsize=7, loc="upper left")
    handles = rate_ax.get_legend_handles_labels()
    more = latency_ax.get_legend_handles_labels()
    if handles[0] or more[0]:
        rate_ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _plot_split_cuts(ax: Any, records: Sequence[dict[str, Any]], edges: Sequence[str]) -> None:
    """Split requests: the cut the planner chose (layers run on the edge), with its codec as the label."""
    split = [r for r in records if r.get("policy") == "split" and r["status"] == "OK"]
    if not split:
        ax.set_axis_off()
        return
    for edge in edges:
        mine = [r for r in split if r["edge"] == edge]
        ax.step([r["start_s"] for r in mine], [r["split_cut"] for r in mine], "s-", where="post", color="tab:purple",
                alpha=0.8, label=f"{edge} split cut")
        for r in mine:
            ax.annotate(r.get("split_codec") or "local", (r["start_s"], r["split_cut"]), fontsize=6,
                        xytext=(2, 3), textcoords="offset points")
    ax.set_ylabel("split cut: layers on the edge")
    ax.set_ylim(bottom=-0.5)
    ax.legend(fontsize=7, loc="upper right")


def plot_latency(records: Sequence[dict[str, Any]], link_log: Sequence[dict[str, Any]], path: Path,
                 *, title: str = "") -> Path:
    plt = _pyplot()
    fig = latency_figure(records, link_log, title=title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_tokens(records: Sequence[dict[str, Any]], path: Path, *, title: str = "") -> Path:
    plt = _pyplot()
    ids = [r["id"] for r in records]
    unchecked = [r["edge_tokens"] - r["checked_tokens"] for r in records]
    checked = [r["checked_tokens"] for r in records]
    cloud = [r["cloud_tokens"] for r in records]
    fig, ax = plt.subplots(figsize=(max(6, min(16, 0.25 * len(ids) + 4)), 4))
    ax.bar(ids, unchecked, label="edge", color="tab:green")
    ax.bar(ids, checked, bottom=unchecked, label="edge, checked by cloud", color="tab:olive")
    ax.bar(ids, cloud, bottom=[a + b for a, b in zip(unchecked, checked, strict=True)], label="cloud",
           color="tab:blue")
    failed = [r["id"] for r in records if r["status"] != "OK"]
    if failed:
        ax.plot(failed, [0] * len(failed), "x", color=OUTAGE_COLOR, ms=9, mew=2, label="failed")
    ax.set_xlabel("request")
    ax.set_ylabel("output tokens")
    ax.set_title(title or "tokens by source")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(out_dir: Path, records: Sequence[dict[str, Any]], link_log: Sequence[dict[str, Any]],
               *, title: str = "") -> list[Path]:
    """Write ``latency.png`` and ``tokens.png`` into ``out_dir``."""
    return [plot_latency(records, link_log, out_dir / "latency.png", title=f"{title}: latency over time"),
            plot_tokens(records, out_dir / "tokens.png", title=f"{title}: tokens by source")]
