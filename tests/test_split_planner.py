"""The split planner: the analytically best cut on a synthetic profile, and one switch at the crossover."""

from __future__ import annotations

import random

import pytest

from edgecloud.split.planner import (
    CutProfile,
    LinkEstimate,
    LinkEstimator,
    SplitPlanner,
    best_plan,
    crossover_mbps,
)

# All in the cloud uploads the raw input; the middle cut sends a small tensor; all on the edge sends nothing.
PROFILES = (
    CutProfile(0, "cloud", edge_s=0.0, cloud_s=0.010, bytes_up={"fp32": 100_000}),
    CutProfile(2, "mid", edge_s=0.020, cloud_s=0.005, bytes_up={"fp32": 40_000, "int8": 10_000}),
    CutProfile(4, "edge", edge_s=0.080, cloud_s=0.0),
)


def _by_hand(mbps: float, rtt_ms: float) -> tuple[str, str]:
    """The formula of the module docstring, written out for each candidate."""
    options = {("cloud", "fp32"): 0.010 + rtt_ms / 1e3 + 100_000 * 8 / (mbps * 1e6),
               ("mid", "fp32"): 0.025 + rtt_ms / 1e3 + 40_000 * 8 / (mbps * 1e6),
               ("mid", "int8"): 0.025 + rtt_ms / 1e3 + 10_000 * 8 / (mbps * 1e6),
               ("edge", ""): 0.080}
    return min(options, key=options.get)


@pytest.mark.parametrize("mbps", [0.5, 1, 2, 5, 10, 30, 47, 49, 100, 1000])
@pytest.mark.parametrize("rtt_ms", [0, 10, 50])
def test_planner_picks_the_analytically_best_plan(mbps, rtt_ms) -> None:
    plan = best_plan(PROFILES, LinkEstimate(mbps, rtt_ms))
    assert (plan.label, plan.codec) == _by_hand(mbps, rtt_ms)


def test_crossover_is_where_both_plans_take_as_long() -> None:
    link = LinkEstimate(100, 10)
    cloud, mid = best_plan(PROFILES[:1], link), best_plan(PROFILES[1:2], link, codecs=["int8"])
    mbps = crossover_mbps(cloud, mid, rtt_ms=10)
    assert mbps == pytest.approx(8 * 90_000 / 0.015 / 1e6)  # 48 Mbit/s
    at = LinkEstimate(mbps, 10)
    assert best_plan(PROFILES[:1], at).expected_s == pytest.approx(best_plan(PROFILES[1:2], at).expected_s)


def _sweep(planner: SplitPlanner, noise: float, seed: int = 0) -> list[tuple[float, str]]:
    """Bandwidth falls from 200 to 5 Mbit/s, the estimate wobbling by ±noise; (bandwidth, label) per switch."""
    rng = random.Random(seed)
    switches = []
    mbps = 200.0
    while mbps > 5:
        estimate = mbps * (1 + rng.uniform(-noise, noise))
        decision = planner.update(LinkEstimate(estimate, 10))
        if decision.switched:
            switches.append((mbps, decision.plan.label))
        mbps *= 0.99
    return switches


def test_planner_switches_once_at_the_crossover_despite_noisy_estimates() -> None:
    switches = _sweep(SplitPlanner(PROFILES, margin=0.15), noise=0.1)
    assert [label for _, label in switches] == ["cloud", "mid"]  # the first plan, then one switch
    at = switches[1][0]
    assert 25 < at < 48, f"switched at {at:.1f} Mbit/s; the crossover is 48 (hysteresis only delays it)"


def test_without_hysteresis_noisy_estimates_make_it_flap() -> None:
    switches = _sweep(SplitPlanner(PROFILES, margin=0.0), noise=0.1)
    assert len(switches) > 3


def test_planner_explains_its_decisions() -> None:
    planner = SplitPlanner(PROFILES)
    first = planner.update(LinkEstimate(1000, 10))
    assert first.switched and "first plan" in first.reason and "cut cloud" in first.reason
    kept = planner.update(LinkEstimate(45, 10))  # mid is faster now, but by less than the margin
    assert not kept.switched and kept.best.label == "mid" and "within 15%" in kept.reason
    moved = planner.update(LinkEstimate(5, 10))
    assert moved.switched and moved.plan.label == "mid" and moved.plan.codec == "int8"


@pytest.mark.parametrize(("mbps", "rtt"), [(0, 10), (-1, 10), (float("nan"), 10), (10, -1), (10, float("inf"))])
def test_bad_link_estimates_are_refused(mbps, rtt) -> None:
    with pytest.raises(ValueError):
        LinkEstimate(mbps, rtt)


def test_no_allowed_codec_is_an_error() -> None:
    with pytest.raises(ValueError, match="no candidate"):
        best_plan(PROFILES[:2], LinkEstimate(10, 10), codecs=["int4"])


def _calls(rtt_s: float, mbps: float, sizes) -> list[tuple[int, float]]:
    return [(b, rtt_s + b * 8 / (mbps * 1e6)) for b in sizes]


def test_link_estimator_fits_rtt_and_bandwidth_from_mixed_calls() -> None:
    estimator = LinkEstimator(LinkEstimate(1000, 1))
    for nbytes, seconds in _calls(0.020, 10, [400_000, 3_000, 3_000, 3_000, 3_000, 400_000, 3_000]):
        estimator.observe(nbytes, seconds)
    assert estimator.estimate.rtt_ms == pytest.approx(20, rel=1e-6)
    assert estimator.estimate.bandwidth_mbps == pytest.approx(10, rel=1e-6)


def test_link_estimator_follows_a_collapse_within_its_window() -> None:
    estimator = LinkEstimator(LinkEstimate(100, 10), window=8)
    for nbytes, seconds in _calls(0.010, 100, [200_000, 3_000] * 8):
        estimator.observe(nbytes, seconds)
    assert estimator.estimate.bandwidth_mbps == pytest.approx(100, rel=1e-6)
    for nbytes, seconds in _calls(0.010, 1, [200_000, 3_000] * 4):
        estimator.observe(nbytes, seconds)
    assert estimator.estimate.bandwidth_mbps == pytest.approx(1, rel=1e-6)


def test_link_estimator_with_calls_of_one_size_keeps_the_rtt() -> None:
    estimator = LinkEstimator(LinkEstimate(100, 10))
    for nbytes, seconds in _calls(0.010, 2, [50_000] * 5):
        estimator.observe(nbytes, seconds)
    assert estimator.estimate.rtt_ms == 10 and estimator.estimate.bandwidth_mbps == pytest.approx(2)
    for nbytes, seconds in _calls(0.010, 1000, [500] * 16):  # transfers hidden in the RTT: no bandwidth
        estimator.observe(nbytes, seconds)
    assert estimator.estimate.bandwidth_mbps == pytest.approx(2, rel=0.05)


def test_link_estimator_believes_recent_samples_after_a_recovery() -> None:
    now = [0.0]
    estimator = LinkEstimator(LinkEstimate(1, 300), half_life_s=10, clock=lambda: now[0])
    for nbytes, seconds in _calls(0.300, 0.4, [24_000, 1_500] * 6):  # a collapsed link, probed for a minute
        estimator.observe(nbytes, seconds)
        now[0] += 5
    now[0] += 20
    for nbytes, seconds in _calls(0.024, 20, [24_000, 1_500]):  # one probe after the recovery
        estimator.observe(nbytes, seconds)
    link = estimator.estimate
    assert link.rtt_ms < 60 and link.bandwidth_mbps > 5, link
