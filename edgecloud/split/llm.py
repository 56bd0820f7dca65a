"""An LLM cut at a layer: the head (embedding and layers ``[0, cut)``) runs on the edge, the tail
(layers ``[cut, L)``, final norm and LM head) in the cloud, each side with the KV cache of its
own layers. ``tail(head(ids))`` equals the whole model's logits: both halves run the same layer
code on the same positions.
"""

from __future__ import annotations

import torch

from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel


def check_cut(model: LlamaModel, cut: int) -> int:
    """``cut`` if it lies in ``[0, num_layers]``, else ``ValueError``."""
    layers = model.config.num_layers
    if not 0 <= cut <= layers:
        raise ValueError(f"cut {cut} is outside [0, {layers}] for a model of {layers} layers")
    return cut


class SplitHead:
    """Embedding and layers ``[0, cut)``: token ids -> hidden states at the cut."""

    def __init__(self, model: LlamaModel, cut: int) -> None:
        self.model = model
        self.cut = check_cut(model, cut)

    def new_cache(self) -> KVCache | None:
        """A cache for the head's layers (None when the head has none: cut 0)."""
        return self.model.new_cache(layers=range(self.cut)) if self.cut else None

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Token ids (B, T) after those in ``cache`` -> hidden states (B, T, C) at the cut."""
        hidden = self.model.embed(input_ids.to(self.model.device))  # (B, T, C)
        return self.model.forward_layers(hidden, 0, self.cut, cache) if self.cut else hidden


class SplitTail:
    """Layers ``[cut, L)``, final norm and LM head: hidden states at the cut -> logits."""

    def __init__(self, model: LlamaModel, cut: int) -> None:
        self.model = model
        self.cut = check_cut(model, cut)

    def new_cache(self) -> KVCache | None:
        """A cache for the tail's layers (None when the tail has none: cut L)."""
        layers = self.model.config.num_layers
        return self.model.new_cache(layers=range(self.cut, layers)) if self.cut < layers else None

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, cache: KVCache | None, last_n: int | None = None) -> torch.Tensor:
        """Hidden states (B, T, C) after the positions in ``cache`` -> float32 logits (B, T or last_n, V)."""
        hidden = hidden.to(device=self.model.device, dtype=self.model.dtype)
        layers = self.model.config.num_layers
        if self.cut < layers:
            hidden = self.model.forward_layers(hidden, self.cut, layers, cache)
        return self.model.head(hidden if last_n is None else hidden[:, -last_n:])
