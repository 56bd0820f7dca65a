"""The pure link model: reproducible draws, rates, traces, jitter, loss, outages (no sockets)."""

from __future__ import annotations

import itertools
import statistics

import pytest

from edgecloud.simulator.link_model import DirectionModel, LinkModel, OutageSchedule, derived_rng
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile, Outages
from edgecloud.simulator.traces import Trace

JITTERY = DirectionProfile(latency_ms=20.0, jitter_ms=5.0, jitter_distribution="pareto", jitter_correlation=0.3,
                           rate_mbps=10.0, loss_model="gilbert-elliott", ge_good_to_bad_pct=2.0,
                           ge_bad_to_good_pct=30.0)


def delays(profile: LinkProfile, count: int = 500) -> list[tuple[float, float]]:
    link = LinkModel(profile, 0.0)
    models = link.for_connection(0.0)
    return [(models["uplink"].send(1200, i * 0.003).deliver_s, models["downlink"].send(700, i * 0.003).deliver_s)
            for i in range(count)]


def test_same_seed_same_per_packet_delays() -> None:
    profile = LinkProfile(JITTERY, JITTERY, Outages(mean_up_s=0.5, mean_down_s=0.1), seed=7)
    first, second = delays(profile), delays(profile)
    assert first == second
    other = delays(LinkProfile(JITTERY, JITTERY, Outages(mean_up_s=0.5, mean_down_s=0.1), seed=8))
    assert first != other
    ups = [u for u, _ in first]
    downs = [d for _, d in first]
    assert ups != downs  # directions draw from their own streams


def test_token_bucket_rate_and_burst() -> None:
    model = DirectionModel(DirectionProfile(rate_mbps=10.0, burst_bytes=15_000), seed=0, name="up", start_s=0.0)
    departures = [model.send(1250, 0.0).depart_s for _ in range(1000)]  # 1.25 MB at once
    assert departures[11] == 0.0  # the burst goes at once
    assert departures[-1] == pytest.approx((1_250_000 - 15_000) * 8 / 10e6)
    idle = model.send(100, 10.0)  # after a pause the bucket is full again
    assert idle.depart_s == 10.0 and idle.queue_s == 0.0


def test_trace_constant_12_mbps() -> None:
    model = DirectionModel(DirectionProfile(trace=Trace((1,))), seed=0, name="up", start_s=0.0)
    last = [model.send(1500, 0.0).depart_s for _ in range(3000)][-1]
    assert 3000 * 1500 * 8 / last / 1e6 == pytest.approx(12.0, rel=1e-3)
    assert Trace((1,)).mean_rate_mbps == pytest.approx(12.0)


def test_trace_wraps_and_wastes_idle_opportunities() -> None:
    trace = Trace((5, 5, 10))  # two packets at 5 ms, one at 10 ms, period 10 ms
    model = DirectionModel(DirectionProfile(trace=trace), seed=0, name="up", start_s=0.0)
    times = [model.send(1500, 0.0).depart_s for _ in range(5)]
    assert times == pytest.approx([0.005, 0.005, 0.010, 0.015, 0.015])
    assert model.send(1500, 0.1).depart_s == pytest.approx(0.105)  # idle opportunities are gone
    small = [model.send(500, 0.2).depart_s for _ in range(3)]  # three small chunks share one opportunity
    assert small == pytest.approx([0.205] * 3)


def test_jitter_spread_and_correlation() -> None:
    for distribution in ("uniform", "normal", "pareto"):
        profile = DirectionProfile(latency_ms=50.0, jitter_ms=4.0, jitter_distribution=distribution)
        model = DirectionModel(profile, seed=3, name="up", start_s=0.0)
        samples = [(model.send(100, float(i)).deliver_s - i) * 1e3 for i in range(20_000)]
        assert statistics.fmean(samples) == pytest.approx(50.0, abs=0.2)
        assert statistics.stdev(samples) == pytest.approx(4.0, rel=0.1)
    correlated = DirectionModel(DirectionProfile(latency_ms=50.0, jitter_ms=4.0, jitter_correlation=0.8),
                                seed=3, name="up", start_s=0.0)
    xs = [correlated.send(100, float(i)).deliver_s - i for i in range(20_000)]
    assert statistics.correlation(xs[:-1], xs[1:]) == pytest.approx(0.8, abs=0.03)
    assert statistics.stdev(xs) * 1e3 == pytest.approx(4.0, rel=0.1)


def test_loss_becomes_retransmission_delay() -> None:
    profile = DirectionProfile(latency_ms=10.0, loss_pct=5.0, rto_ms=200.0)
    model = DirectionModel(profile, seed=1, name="up", start_s=0.0)
    results = [model.send(1500, float(i)) for i in range(4000)]
    lost = [r for r in results if r.lost_segments]
    assert len(lost) / len(results) == pytest.approx(0.05, abs=0.012)
    assert all(r.deliver_s - r.depart_s >= 0.21 - 1e-9 for r in lost)
    assert all(r.deliver_s - r.depart_s == pytest.approx(0.01) for r in results if not r.lost_segments)


def test_gilbert_elliott_losses_come_in_bursts() -> None:
    profile = DirectionProfile(loss_model="gilbert-elliott", ge_good_to_bad_pct=1.0, ge_bad_to_good_pct=25.0)
    model = DirectionModel(profile, seed=2, name="up", start_s=0.0)
    lost = [model.send(1500, float(i)).lost_segments > 0 for i in range(40_000)]
    rate = sum(lost) / len(lost)
    assert rate == pytest.approx(0.01 / (0.01 + 0.25), rel=0.25)  # stationary share of the bad state
    after_loss = sum(b for a, b in itertools.pairwise(lost) if a) / sum(lost[:-1])
    assert after_loss > 3 * rate  # bursty, unlike Bernoulli


def test_outages_hold_bytes_until_the_link_is_back() -> None:
    profile = LinkProfile.symmetric(latency_ms=10.0, outages=Outages(scheduled_s=((1.0, 2.0),)))
    link = LinkModel(profile, 100.0)
    up = link.for_connection(100.0)["uplink"]
    assert up.send(10, 100.5).deliver_s == pytest.approx(100.51)
    assert up.send(10, 101.2).deliver_s == pytest.approx(102.01)
    assert up.send(10, 100.995).deliver_s == pytest.approx(102.01)  # in flight when it went down
    schedule = OutageSchedule(Outages(mean_up_s=1.0, mean_down_s=0.2), 0.0, derived_rng(1, "o"))
    down = sum(schedule.down_interval(t / 100) is not None for t in range(20_000))
    assert down / 20_000 == pytest.approx(0.2 / 1.2, abs=0.06)


def test_profile_change_keeps_queued_bytes_in_order() -> None:
    link = LinkModel(LinkProfile.symmetric(rate_mbps=1.0), 0.0)
    up = link.for_connection(0.0)["uplink"]
    before = [up.send(12_500, 0.0).depart_s for _ in range(4)]  # 50 kB at 1 Mbit/s: 0.4 s minus burst
    link.set_profile(LinkProfile.symmetric(rate_mbps=100.0), 0.0)
    after = up.send(12_500, 0.0).depart_s
    assert after >= before[-1]
    assert after - before[-1] == pytest.approx(12_500 * 8 / 100e6, rel=0.01)


def test_private_buckets_when_rate_not_shared() -> None:
    link = LinkModel(LinkProfile.symmetric(rate_mbps=1.0, burst_bytes=1500, rate_shared=False), 0.0)
    a, b = link.for_connection(0.0)["uplink"], link.for_connection(0.0)["uplink"]
    assert a is not b
    assert a.send(125_000, 0.0).depart_s == pytest.approx(b.send(125_000, 0.0).depart_s)
