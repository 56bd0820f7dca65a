"""``edgecloud simulate EXPERIMENT.toml``: run an experiment with the real daemons as processes.

What happens, in order:

1. The workload is planned (arrival times, prompt and edge of every request) and the models
   are resolved (zoo names pulled if missing) before anything starts.
2. Coordinator, cloud and edges start as processes on loopback ports; each link of the file
   gets a shaping proxy in front of the node that accepts its connections (see ``cluster``):
   an edge reaches the cloud through ``--cloud <its edge–cloud proxy>`` and the coordinator
   through ``--coordinator <its edge–coordinator proxy>``; the cloud reaches the coordinator
   through its own link. So every edge has its own edge–cloud link.
3. Requests go from the client SDK straight to their edge node (the application runs on the
   edge device, so that hop is local and unshaped); the edge verifies with the cloud over its
   own link. The coordinator sees registrations and heartbeats over the edge–coordinator
   links, but is not on the request path: it would hand every edge the same cloud address.
4. One short warm-up request per edge (not recorded) pages the models in, then the workload
   starts (t = 0): the links get their initial profiles (outages counted from here), timeline
   events are applied at their times, arrivals are open-loop (a bounded pool of worker
   threads, one client per request, so a slow request does not hold up later arrivals).
5. Outputs in ``out_dir``: ``requests.jsonl`` (one record per request, written as each ends),
   ``links.jsonl`` (every link state change), ``summary.json``, ``latency.png``,
   ``tokens.png``, ``logs/`` (each daemon's stderr) and a copy of the experiment file.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgecloud.loop_thread import LoopThread
from edgecloud.processes import DaemonGroup
from edgecloud.simulator.cluster import Route, SimCluster, plan_routes
from edgecloud.simulator.experiment import EdgeSpec, Experiment, split_model_key
from edgecloud.simulator.link_timeline import LinkTimeline
from edgecloud.simulator.records import OK, JsonlWriter, read_jsonl, summarize
from edgecloud.simulator.workload import Arrival, plan_arrivals

log = logging.getLogger(__name__)

SUMMARY_FIELDS = ("edge_tokens", "cloud_tokens", "checked_tokens", "drafted_tokens", "cloud_round_trips",
                  "bytes_up", "bytes_down", "edge_compute_s", "cloud_compute_s", "network_s", "cloud_share",
                  "prompt_tokens", "split_cut", "split_codec", "split_plan")
WARMUP_TOKENS = 4


def default_out_dir(experiment: Experiment, root: Path = Path("runs")) -> Path:
    """``runs/<experiment>-<UTC timestamp>``."""
    return root / f"{experiment.name}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"


def resolve_models(experiment: Experiment, overrides: Mapping[str, str | Path] | None = None) -> dict[str, Path]:
    """Model source by node name: ``overrides`` keyed by node name or by model name win; zoo
    names are pulled if missing (before any daemon starts)."""
    from edgecloud.models.loader import resolve_source

    overrides = dict(overrides or {})
    wanted = {experiment.cloud.name: experiment.cloud.model, **{e.name: e.model for e in experiment.edges},
              **{split_model_key(e.name): e.split_model for e in experiment.edges if e.split_model}}
    resolved: dict[str, Path] = {}
    cache: dict[str, Path] = {}
    for node, model in wanted.items():
        source = str(overrides.get(node, overrides.get(model, model)))
        if source not in cache:
            cache[source] = resolve_source(source)
        resolved[node] = cache[source]
    return resolved


def parse_model_overrides(items: list[str]) -> dict[str, str]:
    """``["edge0=path/to/folder", "qwen2.5-coder-1.5b-instruct=other.gguf"]`` → a dict for
    ``run_experiment(models_override=...)`` (keys: node names or model names)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"expected NODE_OR_MODEL=SOURCE, got {item!r}")
        overrides[key] = value
    return overrides


class _Workload:
    """Sends the planned requests and writes one record per request."""

    def __init__(self, experiment: Experiment, cluster: SimCluster, timeline: LinkTimeline, writer: JsonlWriter,
                 *, request_timeout_s: float) -> None:
        self.experiment = experiment
        self.cluster = cluster
        self.timeline = timeline
        self.writer = writer
        self.request_timeout_s = request_timeout_s
        self.edges: dict[str, EdgeSpec] = {edge.name: edge for edge in experiment.edges}
        self.edge_links = {edge: [link.name for link in experiment.links if edge in (link.source, link.target)]
                           for edge in self.edges}
        self.t0 = 0.0
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def request_kwargs(self, arrival: Arrival, max_tokens: int | None = None) -> dict[str, Any]:
        edge = self.edges[arrival.edge]
        return dict(max_tokens=max_tokens or self.experiment.workload.max_new_tokens, policy=edge.policy,
                    threshold=edge.threshold, target_cloud_share=edge.cloud_share,
                    temperature=self.experiment.workload.temperature, seed=self.experiment.seed + arrival.index,
                    assistant_prefix=arrival.prompt.assistant_prefix, stop=arrival.prompt.stop)

    def warm_up(self, arrivals: list[Arrival]) -> None:
        """One short request per edge (its own policy), so that the first records do not pay for
        loading weights; failures are logged, not fatal."""
        from edgecloud.client import Client, EdgecloudError

        for name in self.edges:
            arrival = next((a for a in arrivals if a.edge == name), None)
            if arrival is None:
                continue
            try:
                with Client(self.cluster.addresses[name], target="edge", timeout_s=self.request_timeout_s) as client:
                    client.text(arrival.prompt.text, **self.request_kwargs(arrival, WARMUP_TOKENS))
            except EdgecloudError as exc:
                log.warning("warm-up request on %s failed: %s", name, exc)

    def run_one(self, arrival: Arrival) -> dict[str, Any]:
        """Send one request; any failure becomes a record with its status code."""
        from edgecloud.client import Client, EdgecloudError, TokenEvent

        edge = self.edges[arrival.edge]
        record: dict[str, Any] = {
            "id": arrival.index, "edge": arrival.edge, "prompt_index": arrival.prompt_index,
            "prompt_label": arrival.prompt.label, "policy": edge.policy, "threshold": edge.threshold,
            "target_cloud_share": edge.cloud_share, "scheduled_s": arrival.at_s,
            "links_at_start": self.timeline.states(self.edge_links[arrival.edge])}
        start = time.monotonic()
        first: float | None = None
        received = 0
        status, error, summary = OK, None, None
        try:
            with Client(self.cluster.addresses[arrival.edge], target="edge", timeout_s=self.request_timeout_s) as client:
                for event in client.generate(arrival.prompt.text, **self.request_kwargs(arrival)):
                    if isinstance(event, TokenEvent) and event.token_id >= 0:
                        received += 1
                        if first is None:
                            first = time.monotonic()
                summary = client.last_summary
                if summary is None:
                    status, error = "NO_SUMMARY", "the stream ended without a summary"
        except EdgecloudError as exc:
            status, error = exc.code.name, exc.message
        except Exception as exc:  # a broken request must not end the run
            status, error = "CLIENT_ERROR", f"{type(exc).__name__}: {exc}"
        end = time.monotonic()
        record.update(start_s=start - self.t0, end_s=end - self.t0, latency_s=end - start,
                      ttft_s=None if first is None else first - start, queue_delay_s=start - self.t0 - arrival.at_s,
                      status=status, error=error, tokens_received=received)
        if summary is not None and status == OK:
            record.update({name: getattr(summary, name) for name in SUMMARY_FIELDS})
            record.update(output_tokens=summary.output_tokens, server_wall_s=summary.wall_s,
                          finish_reason=summary.finish_reason, round_trips_per_token=summary.round_trips_per_token)
        else:
            record.update({name: 0 for name in SUMMARY_FIELDS})
            record.update(output_tokens=0, server_wall_s=None, finish_reason="", round_trips_per_token=None)
        self.writer.write(record)
        with self._lock:
            self.records.append(record)
        return record

    def drive(self, arrivals: list[Arrival], t0: float, *, max_workers: int, progress: Progress) -> None:
        """Submit each request at its arrival time; return when all have ended."""
        self.t0 = t0
        task = progress.add_task("requests", total=len(arrivals))
        counts = {"ok": 0, "failed": 0}

        def done(future: Future) -> None:
            record = future.result()
            counts["ok" if record["status"] == OK else "failed"] += 1
            progress.update(task, advance=1, description=f"requests ({counts['ok']} ok, {counts['failed']} failed)")

        pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sim-request")
        try:
            for arrival in arrivals:
                delay = t0 + arrival.at_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # open-loop arrivals: the schedule, not synchronisation
                pool.submit(self.run_one, arrival).add_done_callback(done)
        except BaseException:
            # Ctrl-C or an error: drop queued requests; those in flight fail once the daemons stop
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def run_experiment(experiment: Experiment, *, out_dir: Path, models_override: Mapping[str, str | Path] | None = None,
                   dtype: str = "bf16", max_workers: int = 32, request_timeout_s: float = 600.0,
                   cloud_timeout_s: float | None = None, warmup: bool = True, pin_cpus: bool = True,
                   console: Console | None = None) -> Path:
    """Run ``experiment`` end to end (see the module docstring); returns the path of ``summary.json``.

    ``models_override`` maps node names or model names to model sources (zoo names, folders,
    .gguf files). ``dtype`` is passed to every node. Every daemon and proxy is stopped on return,
    also on errors and Ctrl-C.
    """
    console = console or Console()
    out_dir = Path(out_dir)
    arrivals = plan_arrivals(experiment)
    models = resolve_models(experiment, models_override)
    out_dir.mkdir(parents=True, exist_ok=True)
    if experiment.source and Path(experiment.source).is_file():
        shutil.copyfile(experiment.source, out_dir / "experiment.toml")
    routes, idle = plan_routes(experiment)
    for name in idle:
        log.warning("link %s joins two edges: no traffic crosses it in this mode; recorded, not shaped", name)
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    console.print(f"[bold]{experiment.name}[/]: {len(arrivals)} requests over {experiment.workload.duration_s:g} s, "
                  f"{len(experiment.edges)} edge(s), {len(routes)} shaped link(s); output in {out_dir}")
    with LoopThread() as loop, JsonlWriter(out_dir / "requests.jsonl") as requests, \
            JsonlWriter(out_dir / "links.jsonl") as links:
        cluster = SimCluster(experiment, loop, DaemonGroup(log_dir=out_dir / "logs"), routes, idle)
        try:
            with cluster.group:
                with console.status("starting daemons"):
                    cluster.start(models, dtype=dtype, pin_cpus=pin_cpus, cloud_timeout_s=cloud_timeout_s)
                timeline = LinkTimeline(experiment, loop, cluster.proxies, routes, links)
                workload = _Workload(experiment, cluster, timeline, requests, request_timeout_s=request_timeout_s)
                if warmup:
                    with console.status("warming up"):
                        workload.warm_up(arrivals)
                t0 = time.monotonic()
                timeline.start(t0)
                try:
                    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), console=console) as progress:
                        workload.drive(arrivals, t0, max_workers=max_workers, progress=progress)
                finally:
                    makespan_s = time.monotonic() - t0
                    timeline.stop()
                    link_stats = {name: _link_stats(routes[name].mirrored, proxy.describe()["stats"])
                                  for name, proxy in cluster.proxies.items()}
                    cluster.unshape()  # daemons then stop without waiting on slow or stalled links
        finally:
            cluster.close_proxies()
    records = sorted(workload.records, key=lambda r: r["id"])
    summary: dict[str, Any] = {
        "experiment": experiment.name, "description": experiment.description, "source": experiment.source,
        "seed": experiment.seed, "started_utc": started_utc, "out_dir": str(out_dir),
        "settings": {"dtype": dtype, "max_workers": max_workers, "request_timeout_s": request_timeout_s,
                     "cloud_timeout_s": cloud_timeout_s, "warmup": warmup, "pin_cpus": pin_cpus,
                     "models": {node: str(path) for node, path in models.items()},
                     "workload": asdict(experiment.workload)},
        "wiring": _wiring(cluster, routes, idle),
        "planned_requests": len(arrivals),
        **summarize(records, makespan_s=makespan_s),
        "timeline": timeline.applied,
        "link_stats": link_stats,
        "files": {"requests": "requests.jsonl", "links": "links.jsonl", "logs": "logs"},
    }
    summary["files"]["plots"] = _plots(out_dir, records, read_jsonl(out_dir / "links.jsonl"), summary)
    path = out_dir / "summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    _report(console, summary, path)
    return path


def _wiring(cluster: SimCluster, routes: dict[str, Route], idle: list[str]) -> dict[str, Any]:
    return {"requests": "client -> edge node (direct); edge -> cloud over its own link",
            "links": {name: {"from": r.link.source, "to": r.link.target, "dialer": r.dialer, "acceptor": r.acceptor,
                             "mirrored": r.mirrored, "proxy": cluster.proxies[name].address
                             if name in cluster.proxies else None} for name, r in routes.items()},
            "idle_links": idle, "addresses": dict(cluster.addresses), "processes": dict(cluster.pids)}


def _link_stats(mirrored: bool, stats: dict[str, Any]) -> dict[str, Any]:
    """A proxy's counters in the link's own terms (its uplink is from → to)."""
    if mirrored:
        stats = {**stats, "uplink": stats["downlink"], "downlink": stats["uplink"]}
    return stats


def _plots(out_dir: Path, records: list[dict[str, Any]], link_log: list[dict[str, Any]],
           summary: dict[str, Any]) -> list[str]:
    try:
        from edgecloud.simulator.plots import make_plots

        return [p.name for p in make_plots(out_dir, records, link_log, title=summary["experiment"])]
    except Exception as exc:  # the records and summary matter more than the plots
        log.exception("plotting failed")
        summary["plot_error"] = f"{type(exc).__name__}: {exc}"
        return []


def _report(console: Console, summary: dict[str, Any], path: Path) -> None:
    latency = summary["latency_s"]
    p50 = "-" if latency["p50"] is None else f"{latency['p50']:.2f} s"
    p95 = "-" if latency["p95"] is None else f"{latency['p95']:.2f} s"
    share = "-" if summary["cloud_share"] is None else f"{summary['cloud_share']:.1%}"
    console.print(f"{summary['ok']}/{summary['requests']} requests ok, latency p50 {p50} p95 {p95}, "
                  f"cloud share {share}; summary: {path}")
