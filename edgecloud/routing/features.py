"""Per-token uncertainty features of the edge model's next-token distribution."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenFeatures:
    """What a router policy may look at for one drafted token.

    ``hidden`` is the SLM's last hidden state at the drafting position (C,), used by the
    learned reward head; the rest are read off the softmax of the SLM's logits.
    """

    entropy: float  # nats
    max_prob: float
    margin: float  # top-1 minus top-2 probability
    position: int  # index of the token among the generated ones
    hidden: torch.Tensor | None = None


def uncertainty(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Entropy, max-prob and top-2 margin of float logits (..., V), each (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    entropy = -(probs * logp).sum(-1)
    top2 = probs.topk(2, dim=-1).values
    return entropy, top2[..., 0], top2[..., 0] - top2[..., 1]


def token_features(logits: torch.Tensor, position: int, hidden: torch.Tensor | None = None) -> TokenFeatures:
    """Features of one next-token distribution, logits (V,)."""
    entropy, max_prob, margin = uncertainty(logits)
    return TokenFeatures(float(entropy), float(max_prob), float(margin), position, hidden)
