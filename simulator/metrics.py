"""Prometheus metrics of the shaped links, read from their counters at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from edgecloud.simulator.proxy import ShapingProxy
from edgecloud.simulator.stats import QUEUE_DELAY_BUCKETS_S

PREFIX = "edgecloud_netem"


class LinkCollector(Collector):
    """Exports every link that ``links()`` returns."""

    def __init__(self, links: Callable[[], Iterable[ShapingProxy]]) -> None:
        self.links = links

    def collect(self) -> Iterator[Metric]:
        labels = ["link", "direction"]
        moved = CounterMetricFamily(f"{PREFIX}_bytes", "Payload bytes through the link.", labels=labels)
        chunks = CounterMetricFamily(f"{PREFIX}_chunks", "Chunks scheduled by the link model.", labels=labels)
        lost = CounterMetricFamily(f"{PREFIX}_lost_segments", "Segments lost (and delayed by retransmission).",
                                   labels=labels)
        queue = HistogramMetricFamily(f"{PREFIX}_queue_delay_seconds",
                                      "Time chunks waited for the rate limiter or an outage.", labels=labels)
        latency = GaugeMetricFamily(f"{PREFIX}_configured_latency_seconds", "Configured one-way latency.",
                                    labels=labels)
        rate = GaugeMetricFamily(f"{PREFIX}_configured_rate_bits_per_second",
                                 "Configured rate (trace: its mean); absent when unlimited.", labels=labels)
        active = GaugeMetricFamily(f"{PREFIX}_connections_active", "Open proxied connections.", labels=["link"])
        total = CounterMetricFamily(f"{PREFIX}_connections", "Accepted connections.", labels=["link"])
        resets = CounterMetricFamily(f"{PREFIX}_connections_reset", "Connections reset by outages.",
                                     labels=["link"])
        failed = CounterMetricFamily(f"{PREFIX}_connections_failed", "Connections whose upstream was unreachable.",
                                     labels=["link"])
        for link in self.links():
            for name in ("uplink", "downlink"):
                stats = link.stats.direction(name)
                key = [link.name, name]
                moved.add_metric(key, stats.bytes)
                chunks.add_metric(key, stats.chunks)
                lost.add_metric(key, stats.lost_segments)
                cumulative, buckets = 0, []
                for bound, count in zip((*QUEUE_DELAY_BUCKETS_S, float("inf")), stats.queue_delay_counts,
                                        strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                queue.add_metric(key, buckets, stats.queue_delay_sum_s)
                direction = link.profile.direction(name)
                latency.add_metric(key, direction.latency_ms * 1e-3)
                if direction.trace is not None:
                    rate.add_metric(key, direction.trace.mean_rate_mbps * 1e6)
                elif direction.rate_mbps is not None:
                    rate.add_metric(key, direction.rate_mbps * 1e6)
            active.add_metric([link.name], link.stats.connections_active)
            total.add_metric([link.name], link.stats.connections_total)
            resets.add_metric([link.name], link.stats.connections_reset)
            failed.add_metric([link.name], link.stats.connections_failed)
        yield from (moved, chunks, lost, queue, latency, rate, active, total, resets, failed)


def metrics_registry(links: Callable[[], Iterable[ShapingProxy]]) -> CollectorRegistry:
    """A private registry (several servers in one process do not clash)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LinkCollector(links))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
