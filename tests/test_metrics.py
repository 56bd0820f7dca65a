"""Prometheus metrics: the guard's call counts by code, generation counters, and every daemon's
``/metrics`` (real processes) agreeing with what the SDK's summary reports."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgecloud import Client, metrics
from edgecloud.client import EdgecloudError, Summary
from edgecloud.processes import DaemonGroup
from edgecloud.routing.router import Accounting
from edgecloud.rpc import SecurityConfig

TOKEN = "metrics-client-token"
NODE_TOKEN = "metrics-node-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text page."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(url: str, token: str | None = TOKEN) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return samples(response.read().decode())


def test_served_counts_each_call_by_its_final_code() -> None:
    before = samples(metrics.render().decode())
    with metrics.served("/t.S/Ok"):
        pass
    with pytest.raises(RuntimeError), metrics.served("/t.S/Bad") as call:
        call.code = grpc.StatusCode.INVALID_ARGUMENT
        raise RuntimeError
    after = samples(metrics.render().decode())
    for method, code in (("/t.S/Ok", "OK"), ("/t.S/Bad", "INVALID_ARGUMENT")):
        assert value(after, "edgecloud_rpcs_total", method=method, code=code) == \
            value(before, "edgecloud_rpcs_total", method=method, code=code) + 1
        assert value(after, "edgecloud_rpc_duration_seconds_count", method=method) == \
            value(before, "edgecloud_rpc_duration_seconds_count", method=method) + 1
        assert value(after, "edgecloud_rpcs_in_flight", method=method) == 0


def test_record_generation_splits_edge_tokens_into_edge_and_degraded() -> None:
    before = samples(metrics.render().decode())
    metrics.record_generation(Accounting(edge_tokens=7, cloud_tokens=3, degraded_tokens=5, checked_tokens=2,
                                         cloud_round_trips=4, bytes_up=100, bytes_down=50, cloud_failures=1,
                                         finish_reason="length", wall_s=0.3), "speculative")
    after = samples(metrics.render().decode())
    for name, labels, delta in (("edgecloud_tokens_total", {"source": "edge"}, 2),
                                ("edgecloud_tokens_total", {"source": "degraded"}, 5),
                                ("edgecloud_tokens_total", {"source": "cloud"}, 3),
                                ("edgecloud_checked_tokens_total", {}, 2),
                                ("edgecloud_cloud_round_trips_total", {}, 4),
                                ("edgecloud_cloud_bytes_total", {"direction": "up"}, 100),
                                ("edgecloud_cloud_failures_total", {}, 1),
                                ("edgecloud_generations_total", {"policy": "speculative", "finish_reason": "length"},
                                 1),
                                ("edgecloud_generation_duration_seconds_count", {"policy": "speculative"}, 1)):
        assert value(after, name, **labels) - value(before, name, **labels) == delta, name


def test_a_bad_listen_address_fails_before_binding() -> None:
    with pytest.raises(ValueError, match="metrics listener address"):
        metrics.MetricsServer("no-port", SecurityConfig(auth_token=TOKEN))


def test_an_unauthorized_scrape_is_401() -> None:
    async def run() -> None:
        server = metrics.MetricsServer("127.0.0.1:0", SecurityConfig(auth_token=TOKEN))
        url = await server.start()
        try:
            for token in (None, "wrong"):
                with pytest.raises(urllib.error.HTTPError) as err:
                    await asyncio.to_thread(scrape, url, token)
                assert err.value.code == 401
            page = await asyncio.to_thread(scrape, url)
            assert any(name.startswith("edgecloud_tokens") for name, _ in page)
        finally:
            await server.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, make_tiny_pair, start_tiny_nodes):
    root = tmp_path_factory.mktemp("metrics")
    folders = make_tiny_pair(root, (21, 22))
    flags = ["--metrics-listen", "127.0.0.1:0", "--auth-token", TOKEN, "--node-token", NODE_TOKEN]
    with DaemonGroup(log_dir=root / "logs") as group:
        coordinator, cloud, edge = start_tiny_nodes(group, folders, coordinator_args=["--mqtt-listen", "none"],
                                                    node_args=flags, max_tokens=32)
        client = Client(coordinator.address, security=SecurityConfig(auth_token=TOKEN), timeout_s=120)
        client.wait_for_nodes(2)
        yield client, {name: d.endpoints["metrics"] for name, d in
                       (("coordinator", coordinator), ("cloud", cloud), ("edge", edge))}
        client.close()


def test_every_daemon_serves_metrics_that_match_the_summaries(cluster) -> None:
    client, urls = cluster
    assert all(url.startswith("http://127.0.0.1:") and url.endswith("/metrics") for url in urls.values())
    before = {name: scrape(url) for name, url in urls.items()}
    summaries = []
    for policy in ("speculative", "llm-only", "slm-only"):
        events = list(client.generate("def fib(n):", max_tokens=24, policy=policy))
        assert isinstance(events[-1], Summary)
        summaries.append((policy, events[-1]))
    with pytest.raises(EdgecloudError):
        list(client.generate("x", max_tokens=4, policy="no-such-policy"))
    deadline = time.monotonic() + 10  # the coordinator counts a call once its stream is closed
    while True:
        after = {name: scrape(url) for name, url in urls.items()}
        coordinator_calls = sum(v for (n, labels), v in after["coordinator"].items()
                                if n == "edgecloud_rpcs_total" and ("method", "/edgecloud.v1.Coordinator/Generate")
                                in labels) - sum(v for (n, labels), v in before["coordinator"].items()
                                                 if n == "edgecloud_rpcs_total"
                                                 and ("method", "/edgecloud.v1.Coordinator/Generate") in labels)
        if coordinator_calls == 4 or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    def delta(daemon: str, name: str, **labels: str) -> float:
        return value(after[daemon], name, **labels) - value(before[daemon], name, **labels)

    edge_tokens = sum(s.edge_tokens - s.degraded_tokens for _, s in summaries)
    assert delta("edge", "edgecloud_tokens_total", source="edge") == edge_tokens > 0
    assert delta("edge", "edgecloud_tokens_total", source="cloud") == sum(s.cloud_tokens for _, s in summaries) > 0
    assert delta("edge", "edgecloud_tokens_total", source="degraded") == 0
    assert delta("edge", "edgecloud_cloud_round_trips_total") == sum(s.cloud_round_trips for _, s in summaries)
    assert delta("edge", "edgecloud_cloud_bytes_total", direction="up") == sum(s.bytes_up for _, s in summaries)
    for policy, _ in summaries:
        assert delta("edge", "edgecloud_generation_duration_seconds_count", policy=policy) == 1
        assert delta("edge", "edgecloud_time_to_first_token_seconds_count", policy=policy) == 1
    assert delta("coordinator", "edgecloud_rpcs_total", method="/edgecloud.v1.Coordinator/Generate", code="OK") == 3
    assert delta("coordinator", "edgecloud_rpcs_total", method="/edgecloud.v1.Coordinator/Generate",
                 code="INVALID_ARGUMENT") == 1
    assert delta("edge", "edgecloud_rpcs_total", method="/edgecloud.v1.EdgeNode/Generate", code="OK") == 3
    assert delta("cloud", "edgecloud_rpcs_total", method="/edgecloud.v1.CloudNode/Verify", code="OK") > 0
    assert value(after["coordinator"], "edgecloud_live_edge_nodes") == 1
    assert value(after["coordinator"], "edgecloud_live_cloud_nodes") == 1
    for gauge in ("edgecloud_active_sessions", "edgecloud_kv_bytes", "edgecloud_active_requests"):
        assert after["cloud"][(gauge, ())] == 0  # exported, and nothing left over: the edge closed its sessions
    assert after["cloud"][("edgecloud_max_sessions", ())] > 0
    assert value(after["edge"], "edgecloud_slm_queue_depth") == 0
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(urls["edge"], token=None)
    assert err.value.code == 401


def test_under_mutual_tls_a_scrape_needs_a_client_certificate(tmp_path) -> None:
    """HTTPS with the daemon's certificate; with a client CA (mutual TLS, as on the gRPC listener) a scraper
    without a certificate signed by it is refused in the handshake."""
    import ssl

    from edgecloud.certs import write_dev_certificates

    certs = write_dev_certificates(tmp_path / "certs", ["127.0.0.1"])
    security = SecurityConfig(tls_cert_path=str(certs.node_cert), tls_key_path=str(certs.node_key),
                              tls_client_ca_path=str(certs.ca_cert))

    def fetch(url: str, with_certificate: bool) -> int:
        context = ssl.create_default_context(cafile=str(certs.ca_cert))
        if with_certificate:
            context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
        with urllib.request.urlopen(url, timeout=10, context=context) as response:
            return response.status

    async def run() -> None:
        server = metrics.MetricsServer("127.0.0.1:0", security)
        url = await server.start()
        try:
            assert url.startswith("https://127.0.0.1:")
            assert await asyncio.to_thread(fetch, url, True) == 200
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                await asyncio.to_thread(fetch, url, False)
        finally:
            await server.close()

    asyncio.run(run())
