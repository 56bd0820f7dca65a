"""RouteLLM's routing metrics (PGR, APGR, CPT) and a paired bootstrap over problems.

How RouteLLM defines them (lm-sys/RouteLLM, ``routellm/evals/evaluate.py``, ``generate_results``,
with the sweep in ``routellm/evals/benchmarks.py``, ``Benchmark.evaluate``; read, not copied):

- The curve: a router gives each query a strong-model win rate; the thresholds are the 11 bin
  edges of a 10-quantile split of those scores (``pd.qcut(scores, num_results=10)``). Each threshold
  routes the queries at or above it to the strong model (strictly above for the last edge), giving
  one point (strong_percentage = % of queries sent to the strong model, accuracy). The first edge
  sends every query to the strong model and the last none, so the curve always runs from 0 % (the
  weak model's score) to 100 % (the strong model's). The random router is averaged over 10 runs.
- PGR = (q - q_weak) / (q_strong - q_weak), "performance gap recovered".
- APGR: ``AUC = trapz(accuracy, strong_percentage / 100)`` over the points sorted by strong share,
  and ``APGR = (AUC - AUC_weak) / (AUC_strong - AUC_weak)``, where AUC_weak / AUC_strong are the
  same trapezoid rule over the same x values for the constant weak / strong score. Algebraically
  that is the trapezoid-rule integral of PGR over the measured span divided by the span's width;
  with the span [0, 1] it is the area under the piecewise-linear PGR curve. (The paper writes APGR
  as the integral of PGR over the call share, approximated on a grid of call percentages; the
  code's trapezoid over the 11 sweep points is what produced the published numbers, so that is
  what is followed here.)
- CPT(x %), the "call-performance threshold" (columns "20% qual", "50% qual", "80% qual"):
  ``np.interp(q_weak + x * (q_strong - q_weak), accuracy, strong_percentage)`` with the points
  sorted by strong share: the strong-call share at which the piecewise-linear curve reaches the
  target quality. ``np.interp`` assumes the accuracies increase (it does not check) and clamps: a
  target above every point gives the last point's share, one below every point the first's.
- No confidence intervals.

How this module implements them:

- x is the *cloud share* (DESIGN.md: the share of tokens produced or checked by the cloud), a
  fraction in [0, 1] rather than a percentage; quality is in any unit (here, the pass rate).
- A curve is the measured points of one policy, sorted by cloud share (stable for ties). With
  ``anchors=True`` (default) the points (0, q_weak) and (1, q_strong) are added where no point has
  that share: the two ends RouteLLM's sweep always measures (all-edge is the SLM, all-cloud the
  LLM). No upper envelope is taken, as RouteLLM takes none: a dominated point lowers the area.
- ``apgr``: the trapezoid rule on PGR over the curve, divided by the curve's share span (1 with
  anchors): RouteLLM's formula exactly.
- ``cpt``: walks the piecewise-linear PGR curve from the smallest share and returns the first share
  at which PGR reaches the target (linear interpolation inside the crossing segment). Where PGR
  does not decrease along the curve and the target is within its range this is RouteLLM's
  ``np.interp``; otherwise it differs on purpose: a non-monotone curve gives its first crossing
  (``np.interp``'s answer is then unspecified), and an unreachable target gives None (``np.interp``
  would report the last share as if the target had been reached). A PGR within PGR_TOLERANCE
  (1e-9) below the target counts as reaching it, so that rounding in (q - q_weak) / (q_strong -
  q_weak) does not move an exact hit to the next segment or turn it into None.
- ``bootstrap_ci``: a percentile bootstrap over problems, paired: each resample is one index array
  applied to every configuration (SLM, LLM, each threshold of each policy), so that their
  correlations are kept; the statistic recomputes pass rates and token shares from it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Point = tuple[float, float]  # (cloud share in [0, 1], quality)
PGR_TOLERANCE = 1e-9  # a PGR this close below a CPT target counts as reaching it (rounding of q differences)


def pgr(quality: float, q_weak: float, q_strong: float) -> float:
    """Performance gap recovered: 0 at the weak (edge) model's quality, 1 at the strong (cloud) one's."""
    if q_strong == q_weak:
        raise ValueError(f"PGR is undefined when the strong and weak qualities are equal ({q_strong})")
    return (quality - q_weak) / (q_strong - q_weak)


def pgr_curve(points: Sequence[Point], q_weak: float, q_strong: float, *,
              anchors: bool = True) -> list[Point]:
    """(cloud share, PGR) of ``points`` sorted by share, with the (0, 0) and (1, 1) anchors if asked."""
    curve = sorted(((float(share), float(quality)) for share, quality in points), key=lambda p: p[0])
    for share, _ in curve:
        if not 0.0 <= share <= 1.0:  # also rejects NaN
            raise ValueError(f"cloud share must be in [0, 1], got {share}")
    if anchors and (not curve or curve[0][0] > 0.0):
        curve.insert(0, (0.0, q_weak))
    if anchors and curve[-1][0] < 1.0:
        curve.append((1.0, q_strong))
    if not curve:
        raise ValueError("no points, and anchors=False")
    return [(share, pgr(quality, q_weak, q_strong)) for share, quality in curve]


def apgr(points: Sequence[Point], q_weak: float, q_strong: float, *, anchors: bool = True) -> float:
    """Average PGR: trapezoid area under the PGR-vs-cloud-share curve, divided by its share span."""
    curve = pgr_curve(points, q_weak, q_strong, anchors=anchors)
    span = curve[-1][0] - curve[0][0]
    if span == 0.0:
        raise ValueError("APGR needs points at two different cloud shares at least")
    area = sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(curve))
    return area / span


def cpt(points: Sequence[Point], q_weak: float, q_strong: float, target_pgr: float, *,
        anchors: bool = True) -> float | None:
    """Smallest cloud share at which the piecewise-linear PGR curve reaches ``target_pgr``; None if never.

    CPT(50 %) is ``cpt(points, q_weak, q_strong, 0.5)``.
    """
    curve = pgr_curve(points, q_weak, q_strong, anchors=anchors)
    target = target_pgr - PGR_TOLERANCE
    if curve[0][1] >= target:
        return curve[0][0]
    for (x0, y0), (x1, y1) in itertools.pairwise(curve):
        if y1 >= target:  # y0 < target <= y1
            return x0 + min(1.0, (target_pgr - y0) / (y1 - y0)) * (x1 - x0)
    return None


@dataclass(frozen=True, eq=False)
class Measurement:
    """Per-problem results of one configuration (a model alone, or a policy at one threshold).

    ``passed``: 0/1 per problem; ``cloud_tokens`` / ``total_tokens``: tokens produced or checked by
    the cloud, and all tokens, per problem. Each method takes an optional index array (a bootstrap
    resample); None means every problem once.
    """

    passed: np.ndarray
    cloud_tokens: np.ndarray
    total_tokens: np.ndarray

    @classmethod
    def of(cls, passed: Sequence[float], cloud_tokens: Sequence[float],
           total_tokens: Sequence[float]) -> Measurement:
        arrays = [np.asarray(values, dtype=float) for values in (passed, cloud_tokens, total_tokens)]
        if any(a.ndim != 1 or a.shape != arrays[0].shape for a in arrays) or arrays[0].size == 0:
            raise ValueError(f"need three non-empty 1-D arrays of one length, got {[a.shape for a in arrays]}")
        if np.any(arrays[1] < 0) or np.any(arrays[1] > arrays[2]):
            raise ValueError("cloud_tokens must be in [0, total_tokens] for every problem")
        return cls(*arrays)

    @property
    def num_problems(self) -> int:
        return int(self.passed.size)

    def quality(self, idx: np.ndarray | None = None) -> float:
        """Pass rate over the problems ``idx``."""
        return float(np.mean(self.passed if idx is None else self.passed[idx]))

    def cloud_share(self, idx: np.ndarray | None = None) -> float:
        """Pooled token share: cloud tokens / all tokens over the problems ``idx`` (0 if no tokens)."""
        cloud = self.cloud_tokens if idx is None else self.cloud_tokens[idx]
        total = self.total_tokens if idx is None else self.total_tokens[idx]
        total_sum = float(np.sum(total))
        return float(np.sum(cloud)) / total_sum if total_sum > 0 else 0.0

    def point(self, idx: np.ndarray | None = None) -> Point:
        return self.cloud_share(idx), self.quality(idx)


def curve(measurements: Sequence[Measurement], idx: np.ndarray | None = None) -> list[Point]:
    """The (cloud share, quality) points of one policy's thresholds on the problems ``idx``."""
    return [m.point(idx) for m in measurements]


def bootstrap_ci(num_problems: int, statistic: Callable[[np.ndarray], float | None], *,
                 resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval (level 1 - alpha) of ``statistic`` over problems.

    Each resample draws ``num_problems`` problem indices with replacement (one array, shared by
    every configuration the statistic looks at) and calls ``statistic(idx)``. A statistic may
    return None for "not reached" (a CPT): it ranks above every number, so an upper bound of
    ``inf`` means the target was missed in more than alpha/2 of the resamples. The bounds are order
    statistics (no interpolation). A statistic returns NaN where it is undefined in a resample (a
    PGR whose quality gap vanished: with 40 problems, 60 % vs 72.5 % and the LLM solving a superset,
    about 1 resample in 200 draws none of the 5 gap problems); such resamples are dropped, and if
    more than ``alpha`` of them are, ``ValueError`` says the interval cannot be trusted.
    """
    if num_problems < 1 or resamples < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need num_problems >= 1, resamples >= 1, 0 < alpha < 1; got "
                         f"{num_problems}, {resamples}, {alpha}")
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    for r in range(resamples):
        value = statistic(rng.integers(0, num_problems, size=num_problems))
        values[r] = math.inf if value is None else float(value)
    undefined = np.isnan(values)
    if undefined.mean() > alpha:
        raise ValueError(f"the statistic is undefined (NaN) in {int(undefined.sum())} of {resamples} resamples")
    values = values[~undefined]
    low = float(np.quantile(values, alpha / 2, method="lower"))
    high = float(np.quantile(values, 1 - alpha / 2, method="higher"))
    return low, high
