"""Token-by-token generation with a KV cache: greedy or temperature / top-k / top-p sampling."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from edgecloud.models.llama import LlamaModel

MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflows float32: ask for 0 (greedy)
MAX_TEMPERATURE = 100.0


@dataclass(frozen=True)
class SamplingParams:
    """How the next token is chosen; temperature 0 means greedy (argmax)."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        t = self.temperature
        if not math.isfinite(t) or not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {t!r}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def generator(self) -> torch.Generator | None:
        return None if self.seed is None else torch.Generator().manual_seed(self.seed)


def select_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> int:
    """Pick the next token from float logits (V,)."""
    if params.temperature == 0:
        return int(logits.argmax())
    scores = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(scores, min(params.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_scores.softmax(-1) >= params.top_p  # keep the first token always
        scores = scores.scatter(0, order[drop], float("-inf"))
    return int(torch.multinomial(scores.softmax(-1), 1, generator=generator))


@torch.inference_mode()
def generate_ids(model: LlamaModel, prompt_ids: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams = SamplingParams(),
                 stop_ids: Iterable[int] = ()) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids; stops before yielding a stop token."""
    if not prompt_ids:
        raise ValueError("prompt is empty")
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    stops = frozenset(stop_ids)
    generator = sampling.generator()
    cache = model.new_cache(initial_capacity=len(prompt_ids) + max_new_tokens)
    ids = torch.tensor([prompt_ids], device=model.device)
    logits = model(ids, cache, last_n=1)[0, -1]
    for step in range(max_new_tokens):
        token = select_token(logits, sampling, generator)
        if token in stops:
            return
        yield token
        if step + 1 < max_new_tokens:
            logits = model(torch.tensor([[token]], device=model.device), cache)[0, -1]
