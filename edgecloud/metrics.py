"""Prometheus metrics of a daemon: served calls (by method and status code, latency, in flight),
generations (tokens by source, round trips, bytes, latency, time to first token, cloud failures),
and gauges each daemon binds to its own state (sessions, active requests, queue depth).

One registry per process (a daemon is one process); ``--metrics-listen HOST:PORT`` serves it as
``GET /metrics`` (HTTPS with the daemon's certificate, the client token when auth is on).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import grpc
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from edgecloud.http_listen import HttpListener, bearer_ok

if TYPE_CHECKING:
    from edgecloud import rpc

PREFIX = "edgecloud"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     120.0, 300.0)

REGISTRY = CollectorRegistry()

RPC_SECONDS = Histogram(f"{PREFIX}_rpc_duration_seconds", "Served gRPC calls, arrival to the last response.",
                        ["method"], buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
RPCS = Counter(f"{PREFIX}_rpcs", "Served gRPC calls by method and final status code.", ["method", "code"],
               registry=REGISTRY)
RPCS_IN_FLIGHT = Gauge(f"{PREFIX}_rpcs_in_flight", "gRPC calls being served now (those past the one the model "
                       "runs wait for it: the queue).", ["method"], registry=REGISTRY)

TOKENS = Counter(f"{PREFIX}_tokens", "Tokens of finished generations by source: edge (the SLM), cloud (the LLM), "
                 "degraded (the SLM alone while the cloud was unreachable).", ["source"], registry=REGISTRY)
CHECKED_TOKENS = Counter(f"{PREFIX}_checked_tokens", "Edge tokens the cloud verified.", registry=REGISTRY)
ROUND_TRIPS = Counter(f"{PREFIX}_cloud_round_trips", "Blocking round trips to the cloud.", registry=REGISTRY)
CLOUD_BYTES = Counter(f"{PREFIX}_cloud_bytes", "Bytes to (up) and from (down) the cloud.", ["direction"],
                      registry=REGISTRY)
CLOUD_FAILURES = Counter(f"{PREFIX}_cloud_failures", "Cloud calls that failed (dead, hung or unreachable).",
                         registry=REGISTRY)
CLOUD_RECOVERY_SECONDS = Histogram(f"{PREFIX}_cloud_recovery_seconds", "From finding a cloud up again after an "
                                   "outage to the first verification on the rebuilt session (the replay's cost).",
                                   buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
CLOUD_SWITCHES = Counter(f"{PREFIX}_cloud_switches", "Sessions moved to another cloud node.", registry=REGISTRY)
GENERATIONS = Counter(f"{PREFIX}_generations", "Finished generations by policy and finish reason.",
                      ["policy", "finish_reason"], registry=REGISTRY)
GENERATION_SECONDS = Histogram(f"{PREFIX}_generation_duration_seconds", "Arrival to the last token.", ["policy"],
                               buckets=LATENCY_BUCKETS_S, registry=REGISTRY)
FIRST_TOKEN_SECONDS = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Arrival to the first token.",
                                ["policy"], buckets=LATENCY_BUCKETS_S, registry=REGISTRY)

_gauges: dict[str, Gauge] = {}


def bind_gauge(name: str, documentation: str, read: Callable[[], float]) -> None:
    """A gauge read from ``read()`` at scrape time (binding a name again replaces its reader)."""
    gauge = _gauges.get(name)
    if gauge is None:
        gauge = _gauges[name] = Gauge(f"{PREFIX}_{name}", documentation, registry=REGISTRY)
    gauge.set_function(read)


def record_generation(accounting, policy: str) -> None:
    """Count one finished generation (``accounting``: ``routing.router.Accounting``)."""
    TOKENS.labels("edge").inc(accounting.edge_tokens - accounting.degraded_tokens)
    TOKENS.labels("degraded").inc(accounting.degraded_tokens)
    TOKENS.labels("cloud").inc(accounting.cloud_tokens)
    CHECKED_TOKENS.inc(accounting.checked_tokens)
    ROUND_TRIPS.inc(accounting.cloud_round_trips)
    CLOUD_BYTES.labels("up").inc(accounting.bytes_up)
    CLOUD_BYTES.labels("down").inc(accounting.bytes_down)
    CLOUD_FAILURES.inc(accounting.cloud_failures)
    CLOUD_SWITCHES.inc(accounting.cloud_switches)
    GENERATIONS.labels(policy, accounting.finish_reason or "unknown").inc()
    GENERATION_SECONDS.labels(policy).observe(accounting.wall_s)
    FIRST_TOKEN_SECONDS.labels(policy).observe(accounting.time_to_first_token_s)


class RpcCall:
    """What the request guard learns of one served call: its final status code."""

    code: grpc.StatusCode = grpc.StatusCode.OK


@contextlib.contextmanager
def served(method: str) -> Iterator[RpcCall]:
    """Time a served call and count it by its code (set ``.code`` before leaving)."""
    call = RpcCall()
    started = time.perf_counter()
    RPCS_IN_FLIGHT.labels(method).inc()
    try:
        yield call
    finally:
        RPCS_IN_FLIGHT.labels(method).dec()
        RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
        RPCS.labels(method, call.code.name).inc()


def render() -> bytes:
    return generate_latest(REGISTRY)


class MetricsServer:
    """``GET /metrics`` in the Prometheus text format on ``listen``."""

    def __init__(self, listen: str, security: rpc.SecurityConfig) -> None:
        self.token = security.auth_token
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        # Under mutual TLS the scraper presents a certificate too (Prometheus: tls_config cert_file).
        self._listener = HttpListener(app, listen, security, what="metrics listener", client_certificates=True)

    async def _metrics(self, request: web.Request) -> web.Response:
        if not bearer_ok(request.headers.get("Authorization"), self.token):
            return web.Response(status=401, text="send 'Authorization: Bearer <client token>'\n",
                                headers={"WWW-Authenticate": "Bearer"})
        return web.Response(body=render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> str:
        """Bind; the URL of the metrics page."""
        return f"{await self._listener.start()}/metrics"

    async def close(self) -> None:
        await self._listener.close()
