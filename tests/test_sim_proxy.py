"""The shaping proxy on real loopback sockets: latency, jitter, rate, traces, run-time changes."""

from __future__ import annotations

import asyncio
import statistics
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from edgecloud.simulator.control import NetemServer
from edgecloud.simulator.measure import BulkServer, Pinger, measure_rate_mbps, ping_rtts_ms, start_echo_server
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile, Outages
from edgecloud.simulator.proxy import ShapingProxy
from edgecloud.simulator.traces import Trace

HOST = "127.0.0.1"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 60))


@pytest.mark.parametrize("latency_ms", [20.0, 50.0])
def test_rtt_matches_configured_latency(latency_ms: float) -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        async with ShapingProxy.create(upstream=(HOST, port), profile=LinkProfile.symmetric(latency_ms=latency_ms)) \
                as link:
            pinger = await Pinger.connect(HOST, link.port)
            await pinger.rtts_ms(5)  # warm-up: connection set-up, timer calibration
            rtts = await pinger.rtts_ms(50)
            pinger.close()
        echo.close()
        assert statistics.median(rtts) == pytest.approx(2 * latency_ms, rel=0.05)

    run(main)


def test_jitter_spread_as_configured() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        profile = LinkProfile(uplink=DirectionProfile(latency_ms=25.0, jitter_ms=6.0),
                              downlink=DirectionProfile(latency_ms=15.0), seed=11)
        async with ShapingProxy.create(upstream=(HOST, port), profile=profile) as link:
            rtts = await ping_rtts_ms(HOST, link.port, 100)
        echo.close()
        q1, _, q3 = statistics.quantiles(rtts[2:], n=4)
        assert statistics.median(rtts) == pytest.approx(40.0, rel=0.06)
        assert (q3 - q1) / 1.349 == pytest.approx(6.0, rel=0.3)  # robust sigma of a normal

    run(main)


@pytest.mark.parametrize("connections", [1, 4])
def test_rate_limit_shared_by_connections(connections: int) -> None:
    async def main() -> None:
        bulk = await BulkServer.start()
        profile = LinkProfile.symmetric(latency_ms=5.0, rate_mbps=10.0)
        async with ShapingProxy.create(upstream=(HOST, bulk.port), profile=profile) as link:
            up = await measure_rate_mbps(bulk, HOST, link.port, 2_500_000, connections=connections)
            assert link.stats.connections_total == connections
        await bulk.close()
        assert up == pytest.approx(10.0, rel=0.05)

    run(main)


def test_downlink_rate_differs_from_uplink() -> None:
    async def main() -> None:
        bulk = await BulkServer.start()
        profile = LinkProfile(uplink=DirectionProfile(rate_mbps=2.0), downlink=DirectionProfile(rate_mbps=16.0))
        async with ShapingProxy.create(upstream=(HOST, bulk.port), profile=profile) as link:
            down = await measure_rate_mbps(bulk, HOST, link.port, 3_000_000, direction="downlink")
            up = await measure_rate_mbps(bulk, HOST, link.port, 400_000, direction="uplink")
        await bulk.close()
        assert down == pytest.approx(16.0, rel=0.05)
        assert up == pytest.approx(2.0, rel=0.05)

    run(main)


def test_mahimahi_trace_12_mbps() -> None:
    async def main() -> None:
        bulk = await BulkServer.start()
        profile = LinkProfile.symmetric(trace=Trace((1,)))
        async with ShapingProxy.create(upstream=(HOST, bulk.port), profile=profile) as link:
            rate = await measure_rate_mbps(bulk, HOST, link.port, 3_000_000)
        await bulk.close()
        assert rate == pytest.approx(12.0, rel=0.05)

    run(main)


def test_control_api_change_takes_effect_on_open_connection() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        async with NetemServer.create() as server, aiohttp.ClientSession(server.control_url) as http:
            created = await http.post("/links", json={"name": "edge0-cloud", "listen": f"{HOST}:0",
                                                      "upstream": f"{HOST}:{port}", "latency_ms": 10})
            assert created.status == 201
            link_port = int((await created.json())["listen"].rsplit(":", 1)[1])
            pinger = await Pinger.connect(HOST, link_port)
            await pinger.rtts_ms(3)  # warm-up: connection set-up, timer calibration
            before = statistics.median(await pinger.rtts_ms(25))
            patched = await http.patch("/links/edge0-cloud", json={"uplink": {"latency_ms": 40}})
            assert patched.status == 200
            assert (await patched.json())["profile"]["uplink"]["latency_ms"] == 40
            after = statistics.median(await pinger.rtts_ms(25))
            bad = await http.patch("/links/edge0-cloud", json={"rate_mbps": -1})
            assert bad.status == 400 and (await bad.json())["key"] == "rate_mbps"
            assert (await http.post("/reset")).status == 204
            reset = statistics.median(await pinger.rtts_ms(25))
            pinger.close()
            listing = await (await http.get("/links")).json()
            assert listing["edge0-cloud"]["stats"]["connections_total"] == 1
            metrics = await (await http.get("/metrics")).text()
            assert 'edgecloud_netem_bytes_total{direction="uplink",link="edge0-cloud"}' in metrics
            assert "edgecloud_netem_queue_delay_seconds_bucket" in metrics
            assert (await http.delete("/links/edge0-cloud")).status == 204
            assert (await http.get("/links/edge0-cloud")).status == 404
        echo.close()
        assert before == pytest.approx(20.0, rel=0.1)
        assert after == pytest.approx(50.0, rel=0.1)
        assert reset == pytest.approx(20.0, rel=0.1)

    run(main)


def test_control_api_rejects_bad_links() -> None:
    async def main() -> None:
        async with NetemServer.create() as server, aiohttp.ClientSession(server.control_url) as http:
            cases = [({"name": "a", "listen": f"{HOST}:0", "upstream": f"{HOST}:1", "bogus": 1}, 400, "bogus"),
                     ({"name": "a b", "listen": f"{HOST}:0", "upstream": f"{HOST}:1"}, 400, "name"),
                     ({"name": "a", "upstream": f"{HOST}:1"}, 400, "listen"),
                     ({"name": "a", "listen": f"{HOST}:0", "upstream": f"{HOST}:1", "preset": "6g"}, 400, "preset")]
            for body, status, key in cases:
                response = await http.post("/links", json=body)
                assert response.status == status, body
                assert (await response.json())["key"] == key
            ok = {"name": "a", "listen": f"{HOST}:0", "upstream": f"{HOST}:1", "preset": "4g"}
            assert (await http.post("/links", json=ok)).status == 201
            assert (await http.post("/links", json=ok)).status == 409
            assert (await http.post("/links", data=b"{nope")).status == 400
            assert (await http.patch("/links/zzz", json={})).status == 404

    run(main)


def test_reset_outage_resets_connections_then_recovers() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        async with ShapingProxy.create(upstream=(HOST, port)) as link:
            pinger = await Pinger.connect(HOST, link.port)
            await pinger.rtts_ms(2)
            start = asyncio.get_running_loop().time()
            link.set_profile(LinkProfile(outages=Outages(scheduled_s=((0.0, 0.5),), mode="reset")))
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await pinger.rtts_ms(1)
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await ping_rtts_ms(HOST, link.port, 1)  # refused while down
            await asyncio.sleep(max(0.0, start + 0.55 - asyncio.get_running_loop().time()))  # the schedule's end
            assert len(await ping_rtts_ms(HOST, link.port, 3)) == 3
            assert link.stats.connections_reset >= 2
        echo.close()

    run(main)


def test_unreachable_upstream_resets_client() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        echo.close()
        await echo.wait_closed()
        async with ShapingProxy.create(upstream=(HOST, port)) as link:
            with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
                await ping_rtts_ms(HOST, link.port, 1)
            assert link.stats.connections_failed == 1

    run(main)


def test_zeromq_through_the_proxy() -> None:
    zmq = pytest.importorskip("zmq")
    zmq_asyncio = pytest.importorskip("zmq.asyncio")

    async def main() -> None:
        context = zmq_asyncio.Context()
        rep = context.socket(zmq.REP)
        port = rep.bind_to_random_port(f"tcp://{HOST}")
        async with ShapingProxy.create(upstream=(HOST, port), profile=LinkProfile.symmetric(latency_ms=10.0,
                                                                                          rate_mbps=50.0)) as link:
            req = context.socket(zmq.REQ)
            req.connect(f"tcp://{HOST}:{link.port}")
            payload = bytes(range(256)) * 4096  # 1 MiB
            loop = asyncio.get_running_loop()
            times = []
            for message in (b"hello", payload, b"again", b"again", b"again"):
                start = loop.time()
                await req.send_multipart([b"hdr", message])
                frames = await rep.recv_multipart()
                await rep.send_multipart(frames[::-1])
                assert await req.recv_multipart() == [message, b"hdr"]
                times.append(loop.time() - start)
            req.close(linger=0)
        rep.close(linger=0)
        context.term()
        assert min(times[2:]) == pytest.approx(0.020, abs=0.006)  # the best of three: a busy machine adds delay
        assert times[1] >= 2 * len(payload) * 8 / 50e6  # both ways at 50 Mbit/s

    run(main)


def test_loss_shows_as_retransmission_delay_not_lost_bytes() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        profile = LinkProfile(uplink=DirectionProfile(latency_ms=5.0, loss_pct=20.0, rto_ms=60.0),
                              downlink=DirectionProfile(latency_ms=5.0), seed=4)
        async with ShapingProxy.create(upstream=(HOST, port), profile=profile) as link:
            rtts = await ping_rtts_ms(HOST, link.port, 60, payload_bytes=1000)  # every byte comes back
            lost = link.stats.uplink.lost_segments
        echo.close()
        slow = [rtt for rtt in rtts if rtt > 60.0]
        assert 0 < lost <= len(slow) + 1  # each loss costs at least one RTO
        assert len(slow) / len(rtts) == pytest.approx(0.2, abs=0.15)
        assert statistics.median(rtts) == pytest.approx(10.0, rel=0.15)

    run(main)


def test_stall_outage_holds_bytes_until_the_link_is_back() -> None:
    async def main() -> None:
        echo = await start_echo_server()
        port = echo.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        async with ShapingProxy.create(upstream=(HOST, port)) as link:
            pinger = await Pinger.connect(HOST, link.port)
            await pinger.rtts_ms(2)
            start = loop.time()
            link.set_profile(LinkProfile(outages=Outages(scheduled_s=((0.0, 0.4),))))
            (held,) = await pinger.rtts_ms(1)
            pinger.close()
        echo.close()
        assert loop.time() - start >= 0.4 - 0.002
        assert held == pytest.approx(400.0, abs=40.0)

    run(main)


class _ResetPeer(asyncio.Transport):
    """A socket transport whose peer reset the connection before the loop saw it: shutdown(2) fails."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        import errno

        raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

    def write(self, data) -> None:
        self.written.append(bytes(data))

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name, default=None):
        return default


def test_half_close_towards_a_reset_peer_is_dropped_without_a_traceback() -> None:
    """The `OSError: [Errno 107]` of `_flush` at the end of an experiment: the EOF queued for a
    daemon that is already gone must not escape as an unhandled callback exception."""
    from edgecloud.simulator.proxy import _EOF, TimerLead, _Pipe, _Side
    from edgecloud.simulator.stats import DirectionStats

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        src, dst = _Side(None, "client"), _Side(None, "upstream")  # type: ignore[arg-type]
        dst.transport = peer = _ResetPeer()
        pipe = _Pipe(loop, None, DirectionStats(), src, dst, TimerLead())
        pipe.queue.append((loop.time(), b"last bytes"))
        pipe.feed_end(_EOF)
        await asyncio.sleep(0.05)
        assert errors == [], errors[0].get("exception")
        assert peer.written == [b"last bytes"] and peer.closed  # delivered what it could, then dropped
        assert pipe.ended and not pipe.queue and not pipe.eof_delivered

    run(main)
