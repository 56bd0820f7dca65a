"""Learned reward head: predicts from the edge model's features whether the cloud model agrees.

Saved as safetensors (kilobytes) with metadata naming the SLM, the LLM and the features, so a
head trained for one pair is never silently used with another.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from edgecloud.routing.features import TokenFeatures

SCALAR_FEATURES = ("entropy", "max_prob", "margin", "log_position")
KNOWN_FEATURES = ("hidden", *SCALAR_FEATURES)


class RewardHeadError(ValueError):
    """A reward-head file that is missing, malformed, or made for other models."""


class RewardHead(nn.Module):
    """Linear (``hidden_units=0``) or 2-layer MLP over the chosen features -> agreement logit."""

    def __init__(self, hidden_size: int, *, features: Sequence[str] = KNOWN_FEATURES, hidden_units: int = 0,
                 slm: str = "", llm: str = "") -> None:
        super().__init__()
        unknown = set(features) - set(KNOWN_FEATURES)
        if unknown:
            raise RewardHeadError(f"unknown reward features {sorted(unknown)}; known: {', '.join(KNOWN_FEATURES)}")
        self.features = tuple(features)
        self.hidden_size = hidden_size
        self.hidden_units = hidden_units
        self.slm, self.llm = slm, llm
        width = (hidden_size if "hidden" in self.features else 0) + sum(f in self.features for f in SCALAR_FEATURES)
        self.net = nn.Linear(width, 1) if hidden_units == 0 else nn.Sequential(
            nn.Linear(width, hidden_units), nn.GELU(), nn.Linear(hidden_units, 1))
        # Standardisation of the input, fitted with the head and saved with it.
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("std", torch.ones(width))

    def featurize(self, features: TokenFeatures) -> torch.Tensor:
        """One token's features as the head's input vector (F,)."""
        scalars = {"entropy": features.entropy, "max_prob": features.max_prob, "margin": features.margin,
                   "log_position": float(torch.log1p(torch.tensor(float(features.position))))}
        parts = []
        if "hidden" in self.features:
            if features.hidden is None:
                raise RewardHeadError("this reward head needs the edge model's hidden state")
            parts.append(features.hidden.float().reshape(-1))
        parts.append(torch.tensor([scalars[f] for f in SCALAR_FEATURES if f in self.features]))
        return torch.cat(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs (N, F) -> agreement logits (N,)."""
        return self.net((x - self.mean) / self.std).squeeze(-1)

    @torch.inference_mode()
    def predict(self, features: TokenFeatures) -> float:
        """Probability that the cloud model's greedy token equals the edge model's."""
        return float(torch.sigmoid(self(self.featurize(features)[None]))[0])

    def save(self, path: str | Path) -> None:
        meta = {"features": json.dumps(self.features), "hidden_size": str(self.hidden_size),
                "hidden_units": str(self.hidden_units), "slm": self.slm, "llm": self.llm}
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path, *, slm: str | None = None, llm: str | None = None) -> RewardHead:
        """Load a saved head; if ``slm``/``llm`` are given they must match what it was trained for."""
        path = Path(path)
        if not path.is_file():
            raise RewardHeadError(f"reward head {path} not found")
        from safetensors import safe_open

        with safe_open(str(path), "pt") as handle:
            meta = handle.metadata() or {}
        try:
            head = cls(int(meta["hidden_size"]), features=json.loads(meta["features"]),
                       hidden_units=int(meta["hidden_units"]), slm=meta.get("slm", ""), llm=meta.get("llm", ""))
            head.load_state_dict(load_file(str(path)))
        except (KeyError, ValueError, RuntimeError) as exc:
            raise RewardHeadError(f"{path} is not a valid reward head: {exc}") from exc
        for role, wanted, have in (("SLM", slm, head.slm), ("LLM", llm, head.llm)):
            if wanted and have and wanted != have:
                raise RewardHeadError(f"{path} was trained for {role} {have!r}, not {wanted!r}")
        return head.eval()
