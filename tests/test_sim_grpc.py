"""Real gRPC (HTTP/2) through the shaping proxy: outages fail calls with their deadline, the
next call after the outage succeeds, and an unshaped proxy adds little to a round trip."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from edgecloud.loop_thread import LoopThread
from edgecloud.simulator.profiles import LinkProfile, Outages
from edgecloud.simulator.proxy import ShapingProxy

HOST = "127.0.0.1"
METHOD = "/edgecloud.test.Echo/Call"
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 200)]


def _echo(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


@pytest.fixture(scope="module")
def grpc_port() -> Iterator[int]:
    """A gRPC server with one generic unary method on raw bytes."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "edgecloud.test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(_echo)})
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    yield port
    server.stop(grace=None)


@pytest.fixture()
def loop_thread() -> Iterator[LoopThread]:
    with LoopThread() as thread:
        yield thread


def _call(port: int) -> grpc.UnaryUnaryMultiCallable:
    channel = grpc.insecure_channel(f"{HOST}:{port}", options=CHANNEL_OPTIONS)
    return channel.unary_unary(METHOD)


@pytest.mark.parametrize("mode", ["stall", "reset"])
def test_outage_fails_calls_then_next_call_succeeds(grpc_port: int, loop_thread: LoopThread, mode: str) -> None:
    link = loop_thread.run(ShapingProxy.create(upstream=(HOST, grpc_port), profile=LinkProfile.symmetric(
        latency_ms=5.0)))
    call = _call(link.port)
    assert call(b"before", timeout=10) == b"before"
    outage = LinkProfile.symmetric(latency_ms=5.0, outages=Outages(scheduled_s=((0.0, 1.0),), mode=mode))
    loop_thread.call(link.set_profile, outage)
    back_at = time.monotonic() + 1.0
    with pytest.raises(grpc.RpcError) as info:
        call(b"during", timeout=0.3)
    assert info.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    time.sleep(max(0.0, back_at - time.monotonic()) + 0.05)  # wait out the scheduled outage
    assert call(b"after", timeout=10, wait_for_ready=True) == b"after"
    loop_thread.run(link.close())


def test_unshaped_proxy_adds_under_0_3_ms(grpc_port: int, loop_thread: LoopThread) -> None:
    link = loop_thread.run(ShapingProxy.create(upstream=(HOST, grpc_port)))
    direct, proxied = _call(grpc_port), _call(link.port)
    payload = b"x" * 100
    for _ in range(50):  # warm-up: connections, HTTP/2 windows
        direct(payload, timeout=10)
        proxied(payload, timeout=10)
    samples: dict[str, list[float]] = {"direct": [], "proxied": []}
    for _ in range(400):  # interleaved, so load changes hit both alike
        for name, call in (("direct", direct), ("proxied", proxied)):
            start = time.perf_counter()
            call(payload, timeout=10)
            samples[name].append(time.perf_counter() - start)
    loop_thread.run(link.close())
    added_ms = (statistics.median(samples["proxied"]) - statistics.median(samples["direct"])) * 1e3
    print(f"direct p50 {statistics.median(samples['direct']) * 1e3:.3f} ms, added {added_ms:.3f} ms")
    assert added_ms < 0.3
