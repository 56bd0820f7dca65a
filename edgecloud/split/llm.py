"""An LLM cut at a layer: the head (embedding and layers ``[0, cut)``) runs on the edge, the tail
(layers ``[cut, L)``, final norm and LM head) in the cloud, each side with the KV cache of its
own layers. ``tail(head(ids))`` equals the whole model's logits: both halves run the same layer
code on the same positions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel
from edgecloud.split.planner import CutProfile

SPLIT_POLICY = "split"  # a generation request's policy name that asks for split computing


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


@dataclass(frozen=True)
class LayerTimes:
    """Seconds of one decode step (one token, a short cache) per decoder layer and for the LM head."""

    layer_s: float
    head_s: float


@torch.inference_mode()
def time_decode_step(model: LlamaModel, *, context: int = 32, repeats: int = 5) -> LayerTimes:
    """Measure a one-token step after ``context`` cached tokens, median of ``repeats``."""
    cfg = model.config
    ids = torch.arange(context + repeats + 1)[None] % cfg.vocab_size  # (1, context + repeats + 1)
    cache = model.new_cache()
    model.forward_layers(model.embed(ids[:, :context]), 0, cfg.num_layers, cache)
    layers, heads = [], []
    for i in range(repeats):
        hidden = model.embed(ids[:, context + i:context + i + 1])
        started = time.perf_counter()
        hidden = model.forward_layers(hidden, 0, cfg.num_layers, cache)
        middle = time.perf_counter()
        model.head(hidden)
        layers.append((middle - started) / cfg.num_layers)
        heads.append(time.perf_counter() - middle)
    return LayerTimes(sorted(layers)[repeats // 2], sorted(heads)[repeats // 2])


def decode_profiles(num_layers: int, cuts: Iterable[int], edge: LayerTimes, cloud: LayerTimes,
                    bytes_per_step: Mapping[str, int], bytes_down: int = 16) -> list[CutProfile]:
    """Per-token profiles of decode through each cut: the edge runs ``cut`` layers, the cloud the rest and
    the LM head; at ``num_layers`` everything runs on the edge and nothing crosses."""
    profiles = []
    for cut in sorted(set(cuts)):
        if not 0 <= cut <= num_layers:
            raise ValueError(f"cut {cut} is outside [0, {num_layers}]")
        if cut == num_layers:
            profiles.append(CutProfile(cut, f"{cut} (all on edge)", num_layers * edge.layer_s + edge.head_s, 0.0))
        else:
            label = f"{cut} (all in cloud)" if cut == 0 else str(cut)
            profiles.append(CutProfile(cut, label, cut * edge.layer_s,
                                       (num_layers - cut) * cloud.layer_s + cloud.head_s,
                                       dict(bytes_per_step), bytes_down))
    return profiles


def step_bytes(model: LlamaModel, codecs: Iterable[str], size_of: Callable[[torch.Tensor, str], int]) -> dict[str, int]:
    """Bytes one decode step sends up under each codec (``size_of(hidden (1, 1, C), codec)``)."""
    sample = torch.randn(1, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    return {codec: size_of(sample.to(model.dtype), codec) for codec in codecs}
