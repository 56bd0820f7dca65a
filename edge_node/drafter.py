"""The edge model for one request: drafts tokens with their features, rolls back on rejection."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from edgecloud.edge_node.scheduler import SlmScheduler
from edgecloud.models.generate import SamplingParams, select_token
from edgecloud.models.llama import LlamaModel
from edgecloud.routing.features import TokenFeatures, token_features


class Drafter:
    """Holds the SLM's KV cache for one request and the logits for the next position."""

    def __init__(self, model: LlamaModel, prompt_ids: list[int], *, sampling: SamplingParams = SamplingParams(),
                 with_hidden: bool = False, capacity: int = 1024, prefill: bool = True) -> None:
        if not prompt_ids:
            raise ValueError("prompt is empty")
        self.model = model
        self.sampling = sampling
        self.with_hidden = with_hidden
        self._generator = sampling.generator()
        self.cache = model.new_cache(initial_capacity=capacity)
        self.prompt_len = len(prompt_ids)
        self.compute_s = 0.0
        self._logits: torch.Tensor  # (V,) for the position after the cache's end
        self._hidden: torch.Tensor | None = None
        self._next: tuple[int, TokenFeatures]  # the draft for that position
        self._pending = list(prompt_ids)  # prompt tokens not yet in the cache
        if prefill:
            self.prefill()

    def prefill(self, max_tokens: int | None = None) -> bool:
        """Run the next ``max_tokens`` (default: all) prompt tokens not yet cached; True once all are."""
        count = len(self._pending) if max_tokens is None else max_tokens
        chunk, self._pending = self._pending[:count], self._pending[count:]
        if chunk:
            self._advance(chunk)
        return not self._pending

    @property
    def num_tokens(self) -> int:
        """Tokens in the SLM's cache (prompt + fed tokens)."""
        return self.cache.length()

    def draft(self) -> tuple[int, TokenFeatures]:
        """The SLM's choice for the next position and its features (does not advance).

        Chosen when the cache advanced (in the same worker thread, so this costs nothing): the
        router asks once per position.
        """
        return self._next

    @staticmethod
    @torch.inference_mode()
    def feed_batch(drafters: Sequence[Drafter], tokens: Sequence[int]) -> None:
        """``feed`` for several requests' drafters (same model) in one forward pass."""
        started = time.perf_counter()
        model = drafters[0].model
        hidden = model.decode_sessions(tokens, [d.cache for d in drafters])  # (B, 1, C)
        logits = model.head(hidden)[:, -1]  # (B, V)
        share = (time.perf_counter() - started) / len(drafters)
        for i, drafter in enumerate(drafters):
            drafter._set_next(logits[i], hidden[i:i + 1], share)

    def feed(self, token: int) -> None:
        """Advance the cache by one token."""
        self._advance([token])

    def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        """Forget cached tokens after ``num_tokens``, then feed ``then_feed`` (ending with the cloud's token)."""
        self.cache.crop(num_tokens)
        self._advance(then_feed)

    @torch.inference_mode()
    def _advance(self, tokens: list[int]) -> None:
        started = time.perf_counter()
        ids = torch.tensor([tokens], device=self.model.device)
        hidden = self.model.forward_layers(self.model.embed(ids), 0, self.model.config.num_layers, self.cache)
        last = hidden[:, -1:]  # (1, 1, C)
        self._set_next(self.model.head(last)[0, -1], last, time.perf_counter() - started)

    def _set_next(self, logits: torch.Tensor, last_hidden: torch.Tensor, forward_s: float) -> None:
        """Keep the logits (V,) after the cache's end and choose the draft there."""
        started = time.perf_counter()
        self._logits = logits
        self._hidden = self.model.norm(last_hidden)[0, -1].float() if self.with_hidden else None
        token = select_token(logits, self.sampling, self._generator)
        self._next = (token, token_features(logits, self.num_tokens - self.prompt_len, self._hidden))
        self.compute_s += forward_s + time.perf_counter() - started


class ThreadedDrafter:
    """A ``Drafter`` seen through the router's async interface; its forwards run on the device's
    ``SlmScheduler``, so the event loop keeps serving and requests share the SLM fairly."""

    def __init__(self, drafter: Drafter, scheduler: SlmScheduler | None = None) -> None:
        self._drafter = drafter
        self._scheduler = scheduler or SlmScheduler()

    @property
    def compute_s(self) -> float:
        return self._drafter.compute_s

    @property
    def num_tokens(self) -> int:
        return self._drafter.num_tokens

    async def prefill(self, chunk_tokens: int) -> None:
        """Cache the prompt, ``chunk_tokens`` per forward (so a long prompt does not stall others)."""
        while not await self._scheduler.run(self._drafter.prefill, chunk_tokens):
            pass

    async def draft(self) -> tuple[int, TokenFeatures]:
        return self._drafter.draft()  # chosen when the cache advanced: no compute here

    async def feed(self, token: int) -> None:
        await self._scheduler.feed(self._drafter, token)

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        await self._scheduler.run(self._drafter.rollback, num_tokens, then_feed)
