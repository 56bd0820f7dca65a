"""Token router policies: when must the cloud's large model supply or check a token?

A policy looks at the edge model's features for each drafted token and flags it (the cloud
checks it) or lets it pass (the edge token stands). Flagged tokens that follow each other
form one verification window, checked in one round trip. Three policies are special:

- ``llm-only`` drafts nothing: every token comes from the cloud;
- ``speculative`` flags every token, with an adaptive window (lossless for greedy);
- ``query`` decides once per request, from the first tokens' uncertainty, to hand the whole
  request to the cloud or keep it on the edge.

A policy object belongs to one request (``make_policy`` builds a fresh one), since some keep
state (random's generator, speculative's window, query's decision).
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from edgecloud.errors import InvalidInput
from edgecloud.routing.features import TokenFeatures


class PolicyError(InvalidInput):
    """Unknown policy name or a threshold outside the policy's range."""


class RoutingPolicy(ABC):
    """Decides, per drafted token, whether the cloud must check it."""

    name: ClassVar[str]
    threshold_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    default_threshold: ClassVar[float] = 0.5
    uses_edge_draft: ClassVar[bool] = True
    needs_hidden: ClassVar[bool] = False
    max_window: int = 8

    def __init__(self, threshold: float | None = None, *, seed: int = 0) -> None:
        value = self.default_threshold if threshold is None else float(threshold)
        low, high = self.threshold_range
        if math.isnan(value) or not low <= value <= high:
            raise PolicyError(f"threshold {value} is out of range [{low}, {high}] for policy {self.name!r}")
        self.threshold = value
        self.seed = seed

    @abstractmethod
    def flags(self, features: TokenFeatures) -> bool:
        """True when the cloud must check this token."""

    def score(self, features: TokenFeatures) -> float:
        """The quantity compared with the threshold (for calibration); higher = more uncertain."""
        raise PolicyError(f"policy {self.name!r} has no per-token score to calibrate")

    def calibrate(self, features: Sequence[TokenFeatures], share: float) -> float:
        """Threshold that would flag about ``share`` of the tokens described by ``features``."""
        return self.threshold_for_share([self.score(f) for f in features], share)

    @classmethod
    def threshold_for_share(cls, scores: Sequence[float], share: float) -> float:
        """Threshold that flags about ``share`` of tokens whose scores are given."""
        if not 0 <= share <= 1:
            raise PolicyError(f"target cloud share {share} is out of range [0, 1]")
        ordered = sorted(scores)
        if not ordered:
            raise PolicyError("cannot calibrate a threshold without calibration scores")
        first_flagged = round((1 - share) * len(ordered))  # scores from here on are to be flagged
        if first_flagged >= len(ordered):
            return cls.threshold_from_score(ordered[-1])
        cut = ordered[first_flagged - 1] if first_flagged > 0 else ordered[0] - 1e-9
        return cls.threshold_from_score(cut)  # flag when score > cut

    @classmethod
    def threshold_from_score(cls, score: float) -> float:
        """Map a score cut (flag if score > cut) to this policy's threshold."""
        low, high = cls.threshold_range
        return min(high, max(low, score))

    def after_verification(self, window: int, accepted: int) -> None:  # noqa: B027 - optional hook
        """Told how many of ``window`` drafted tokens the cloud accepted."""


class SlmOnly(RoutingPolicy):
    name = "slm-only"

    def flags(self, features: TokenFeatures) -> bool:
        return False


class LlmOnly(RoutingPolicy):
    name = "llm-only"
    uses_edge_draft = False

    def flags(self, features: TokenFeatures) -> bool:
        return True


class RandomPolicy(RoutingPolicy):
    """Flags each token with probability ``threshold`` (seeded): the baseline."""

    name = "random"
    default_threshold = 0.1

    def __init__(self, threshold: float | None = None, *, seed: int = 0) -> None:
        super().__init__(threshold, seed=seed)
        self._rng = random.Random(seed)

    def flags(self, features: TokenFeatures) -> bool:
        return self._rng.random() < self.threshold

    def calibrate(self, features: Sequence[TokenFeatures], share: float) -> float:
        if not 0 <= share <= 1:
            raise PolicyError(f"target cloud share {share} is out of range [0, 1]")
        return share


class EntropyPolicy(RoutingPolicy):
    """Flags a token whose next-token entropy (nats) is above the threshold."""

    name = "entropy"
    threshold_range = (0.0, 20.0)
    default_threshold = 1.0

    def score(self, features: TokenFeatures) -> float:
        return features.entropy

    def flags(self, features: TokenFeatures) -> bool:
        return features.entropy > self.threshold


class ConfidencePolicy(RoutingPolicy):
    """Flags a token whose confidence (a probability-like value) is below the threshold."""

    @abstractmethod
    def confidence(self, features: TokenFeatures) -> float:
        """Higher = the edge token is more likely right."""

    def score(self, features: TokenFeatures) -> float:
        return 1.0 - self.confidence(features)

    def flags(self, features: TokenFeatures) -> bool:
        return self.confidence(features) < self.threshold

    @classmethod
    def threshold_from_score(cls, score: float) -> float:
        return min(1.0, max(0.0, 1.0 - score))


class MaxProbPolicy(ConfidencePolicy):
    """Flags a token whose probability under the edge model is below the threshold."""

    name = "max-prob"
    default_threshold = 0.6

    def confidence(self, features: TokenFeatures) -> float:
        return features.max_prob


class MarginPolicy(ConfidencePolicy):
    """Flags a token whose top-1 minus top-2 probability is below the threshold."""

    name = "margin"
    default_threshold = 0.3

    def confidence(self, features: TokenFeatures) -> float:
        return features.margin


class RewardPolicy(ConfidencePolicy):
    """Flags a token whose learned reward (predicted agreement with the LLM) is below the threshold."""

    name = "reward"
    needs_hidden = True
    default_threshold = 0.5

    def __init__(self, threshold: float | None = None, *, seed: int = 0, reward_head=None) -> None:
        super().__init__(threshold, seed=seed)
        if reward_head is None:
            raise PolicyError("policy 'reward' needs a trained reward head (edgecloud reward train)")
        self.reward_head = reward_head

    def confidence(self, features: TokenFeatures) -> float:
        return self.reward_head.predict(features)


class SpeculativePolicy(RoutingPolicy):
    """Lossless speculative decoding: the cloud checks every token, in adaptive windows.

    The window grows by 2 when the cloud accepts all of it and shrinks by 1 otherwise
    (Hugging Face's assisted-generation heuristic).
    """

    name = "speculative"

    def __init__(self, threshold: float | None = None, *, seed: int = 0, window: int = 4,
                 adaptive: bool = True, max_window: int = 16) -> None:
        super().__init__(threshold, seed=seed)
        if window < 1:
            raise PolicyError(f"speculative window must be >= 1, got {window}")
        self.max_window = window
        self.adaptive = adaptive
        self.window_cap = max(max_window, window)

    def flags(self, features: TokenFeatures) -> bool:
        return True

    def after_verification(self, window: int, accepted: int) -> None:
        if not self.adaptive:
            return
        if accepted == window:
            self.max_window = min(self.window_cap, self.max_window + 2)
        else:
            self.max_window = max(1, self.max_window - 1)


class QueryPolicy(RoutingPolicy):
    """Request-level routing: the mean entropy of the first tokens decides edge or cloud, once."""

    name = "query"
    threshold_range = (0.0, 20.0)
    default_threshold = 0.5
    probe_tokens = 4

    def score(self, features: TokenFeatures) -> float:
        return features.entropy

    def decide(self, first: Sequence[TokenFeatures]) -> bool:
        """True: hand the whole request to the cloud."""
        return sum(f.entropy for f in first) / max(1, len(first)) > self.threshold

    def flags(self, features: TokenFeatures) -> bool:  # the router asks ``decide`` instead
        return False


POLICIES: dict[str, type[RoutingPolicy]] = {
    cls.name: cls for cls in (SlmOnly, LlmOnly, RandomPolicy, EntropyPolicy, MaxProbPolicy, MarginPolicy,
                              RewardPolicy, QueryPolicy, SpeculativePolicy)
}


def make_policy(name: str, threshold: float | None = None, *, seed: int = 0, **options) -> RoutingPolicy:
    """A fresh policy for one request; ``PolicyError`` names the known policies on a bad name."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise PolicyError(f"unknown policy {name!r}; known: {', '.join(POLICIES)}") from None
    return cls(threshold, seed=seed, **options)
