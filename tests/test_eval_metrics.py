"""RouteLLM metrics (PGR, APGR, CPT) on hand-computed toy curves, and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecloud.evaluation.metrics import (
    Measurement,
    apgr,
    bootstrap_ci,
    cpt,
    curve,
    pgr,
    pgr_curve,
)

# Toy curve: q_weak 0.5, q_strong 0.9 (gap 0.4); measured (0.2, 0.7) and (0.5, 0.8).
# With the anchors (0, 0.5) and (1, 0.9) the PGR curve is
#   share: 0.0   0.2   0.5   1.0
#   PGR:   0.0   0.5   0.75  1.0      ((0.7 - 0.5) / 0.4 = 0.5, (0.8 - 0.5) / 0.4 = 0.75)
Q_WEAK, Q_STRONG = 0.5, 0.9
TOY = [(0.5, 0.8), (0.2, 0.7)]  # unsorted on purpose


def test_pgr_formula() -> None:
    assert pgr(0.5, Q_WEAK, Q_STRONG) == pytest.approx(0.0)
    assert pgr(0.9, Q_WEAK, Q_STRONG) == pytest.approx(1.0)
    assert pgr(0.6, Q_WEAK, Q_STRONG) == pytest.approx(0.25)  # 0.1 / 0.4
    assert pgr(0.4, Q_WEAK, Q_STRONG) == pytest.approx(-0.25)  # worse than the edge model alone
    assert pgr(72.5, 60.0, 72.5) == pytest.approx(1.0)  # any unit (RouteLLM uses percent)
    with pytest.raises(ValueError, match="undefined"):
        pgr(0.7, 0.6, 0.6)


def test_pgr_curve_sorts_and_anchors() -> None:
    points = pgr_curve(TOY, Q_WEAK, Q_STRONG)
    assert [x for x, _ in points] == [0.0, 0.2, 0.5, 1.0]
    assert [y for _, y in points] == pytest.approx([0.0, 0.5, 0.75, 1.0])
    # A measured end replaces the anchor.
    measured_ends = pgr_curve([(0.0, 0.55), (1.0, 0.85)], Q_WEAK, Q_STRONG)
    assert [y for _, y in measured_ends] == pytest.approx([0.125, 0.875])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgr_curve([(1.5, 0.7)], Q_WEAK, Q_STRONG)


def test_apgr_toy_curve() -> None:
    # Trapezoids: [0, 0.2]: 0.2 * (0 + 0.5) / 2 = 0.05; [0.2, 0.5]: 0.3 * (0.5 + 0.75) / 2 = 0.1875;
    # [0.5, 1]: 0.5 * (0.75 + 1) / 2 = 0.4375. Sum 0.675 over a span of 1.
    assert apgr(TOY, Q_WEAK, Q_STRONG) == pytest.approx(0.675)


def test_apgr_random_routing_is_one_half() -> None:
    # Random routing in expectation: quality linear in share, PGR(x) = x, area 1/2.
    assert apgr([], Q_WEAK, Q_STRONG) == pytest.approx(0.5)
    assert apgr([(0.3, 0.62), (0.6, 0.74)], Q_WEAK, Q_STRONG) == pytest.approx(0.5)


def test_apgr_matches_routellm_auc_formula() -> None:
    # RouteLLM: (AUC - AUC_weak) / (AUC_strong - AUC_weak) with trapezoids on the quality curve
    # over the sweep's x values, which here run over [0, 1].
    shares = np.array([0.0, 0.1, 0.3, 0.45, 0.7, 1.0])
    quality = np.array([0.5, 0.66, 0.71, 0.79, 0.85, 0.9])

    def trapezoid(y: np.ndarray) -> float:
        return float(np.sum(np.diff(shares) * (y[1:] + y[:-1]) / 2))

    auc, weak, strong = trapezoid(quality), trapezoid(np.full(6, Q_WEAK)), trapezoid(np.full(6, Q_STRONG))
    expected = (auc - weak) / (strong - weak)
    assert apgr(list(zip(shares, quality, strict=True)), Q_WEAK, Q_STRONG) == pytest.approx(expected)


def test_apgr_without_anchors_divides_by_the_span() -> None:
    # Only (0.2, 0.5) and (0.5, 0.75) in PGR: area 0.1875 over a span of 0.3 = 0.625 (mean PGR).
    assert apgr(TOY, Q_WEAK, Q_STRONG, anchors=False) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="two different"):
        apgr([(0.4, 0.7)], Q_WEAK, Q_STRONG, anchors=False)


def test_cpt_toy_curve() -> None:
    # Exactly the measured point, although (0.7 - 0.5) / 0.4 rounds to 0.49999999999999994.
    assert cpt(TOY, Q_WEAK, Q_STRONG, 0.5) == pytest.approx(0.2, abs=1e-9)
    assert cpt(TOY, Q_WEAK, Q_STRONG, 0.25) == pytest.approx(0.1)  # halfway up [0, 0.2] (PGR 0 -> 0.5)
    # [0.5, 1] climbs from 0.75 to 1: 0.8 is 0.05 / 0.25 = 1/5 of the way, 0.5 + 0.5 / 5 = 0.6.
    assert cpt(TOY, Q_WEAK, Q_STRONG, 0.8) == pytest.approx(0.6)
    assert cpt(TOY, Q_WEAK, Q_STRONG, 0.0) == 0.0
    assert cpt(TOY, Q_WEAK, Q_STRONG, 1.0) == pytest.approx(1.0)


def test_cpt_matches_routellm_interp_on_a_monotone_curve() -> None:
    shares = [0.0, 0.1, 0.3, 0.45, 0.7, 1.0]
    quality = [0.5, 0.66, 0.71, 0.79, 0.85, 0.9]
    points = list(zip(shares, quality, strict=True))
    for target in (0.2, 0.5, 0.8):
        expected = float(np.interp(Q_WEAK + target * (Q_STRONG - Q_WEAK), quality, shares))
        assert cpt(points, Q_WEAK, Q_STRONG, target) == pytest.approx(expected)


def test_cpt_takes_the_first_crossing_of_a_non_monotone_curve() -> None:
    # PGR: (0, 0), (0.2, 0.75), (0.4, 0.25), (1, 1). 0.5 is first reached in [0, 0.2]: 0.2 * 0.5 / 0.75.
    points = [(0.2, 0.8), (0.4, 0.6)]
    assert cpt(points, Q_WEAK, Q_STRONG, 0.5) == pytest.approx(0.2 * 0.5 / 0.75)


def test_cpt_none_when_unreachable() -> None:
    # Without anchors the best measured PGR is (0.7 - 0.5) / 0.4 = 0.5.
    points = [(0.3, 0.6), (0.6, 0.7)]
    assert cpt(points, Q_WEAK, Q_STRONG, 0.8, anchors=False) is None
    assert cpt(points, Q_WEAK, Q_STRONG, 0.5, anchors=False) == pytest.approx(0.6)  # reached exactly
    # [0.3, 0.6] climbs from PGR 0.25 to 0.5: 0.45 is 4/5 of the way, 0.3 + 0.8 * 0.3 = 0.54.
    assert cpt(points, Q_WEAK, Q_STRONG, 0.45, anchors=False) == pytest.approx(0.54)
    # With anchors the all-cloud end has PGR 1, so only a target above 1 is out of reach ...
    assert cpt(points, Q_WEAK, Q_STRONG, 1.2) is None
    # ... or an all-cloud point measured below the LLM's quality.
    assert cpt([(1.0, 0.8)], Q_WEAK, Q_STRONG, 0.9) is None


def test_measurement_quality_share_and_resampling() -> None:
    m = Measurement.of([1, 0, 1, 1], [10, 0, 5, 5], [20, 10, 10, 10])
    assert m.point() == pytest.approx((20 / 50, 0.75))  # pooled tokens, not a mean of ratios
    idx = np.array([0, 0, 1])
    assert m.point(idx) == pytest.approx((20 / 50, 2 / 3))
    assert curve([m, m], idx) == [m.point(idx)] * 2
    with pytest.raises(ValueError, match="cloud_tokens"):
        Measurement.of([1], [11], [10])
    with pytest.raises(ValueError, match="one length"):
        Measurement.of([1, 0], [1], [2])


def test_bootstrap_ci_contains_the_estimate_and_is_deterministic() -> None:
    n = 40
    rng = np.random.default_rng(0)
    weak_passed = rng.random(n) < 0.5  # pass rate 0.4
    # The LLM solves what the SLM does and 13 more (0.725), so no resample of 500 loses the whole gap.
    strong_passed = weak_passed | (rng.random(n) < 0.6)
    mid_passed = weak_passed | (strong_passed & (rng.random(n) < 0.5))
    weak = Measurement.of(weak_passed, np.zeros(n), np.full(n, 100.0))
    strong = Measurement.of(strong_passed, np.full(n, 100.0), np.full(n, 100.0))
    mid = Measurement.of(mid_passed, np.full(n, 30.0), np.full(n, 100.0))

    def mid_pgr(idx: np.ndarray) -> float:
        return pgr(mid.quality(idx), weak.quality(idx), strong.quality(idx))

    estimate = mid_pgr(np.arange(n))
    low, high = bootstrap_ci(n, mid_pgr, resamples=500, seed=3)
    assert low <= estimate <= high
    assert low < high
    assert bootstrap_ci(n, mid_pgr, resamples=500, seed=3) == (low, high)
    assert bootstrap_ci(n, mid_pgr, resamples=500, seed=4) != (low, high)

    def policy_apgr(idx: np.ndarray) -> float:
        return apgr(curve([mid], idx), weak.quality(idx), strong.quality(idx))

    a_low, a_high = bootstrap_ci(n, policy_apgr, resamples=300)
    assert a_low <= policy_apgr(np.arange(n)) <= a_high


def test_bootstrap_ci_shrinks_with_more_problems() -> None:
    def width(n: int) -> float:
        passed = (np.arange(n) % 10 < 7).astype(float)  # pass rate 0.7
        low, high = bootstrap_ci(n, lambda idx: float(np.mean(passed[idx])), resamples=500)
        assert low <= 0.7 <= high
        return high - low

    small, large = width(40), width(400)
    # The standard error falls as 1 / sqrt(n): about sqrt(10) ~ 3.2 times narrower.
    assert large < small / 2


def test_bootstrap_ci_unreached_ranks_above_every_share() -> None:
    low, high = bootstrap_ci(10, lambda idx: None if idx[0] < 5 else 0.3, resamples=200)
    assert low == pytest.approx(0.3)
    assert math.isinf(high)
    with pytest.raises(ValueError):
        bootstrap_ci(0, lambda idx: 0.0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(5, lambda idx: math.nan, resamples=3)


def test_bootstrap_ci_drops_resamples_where_the_statistic_is_undefined() -> None:
    low, high = bootstrap_ci(50, lambda idx: math.nan if idx[0] == 0 else 0.25, resamples=400)
    assert low == high == pytest.approx(0.25)
