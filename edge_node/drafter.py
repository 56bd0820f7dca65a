"""The edge model for one request: drafts tokens with their features, rolls back on rejection."""

from __future__ import annotations

import asyncio
import time

import torch

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
        """The SLM's choice for the next position and its features (does not advance)."""
        started = time.perf_counter()
        token = select_token(self._logits, self.sampling, self._generator)
        features = token_features(self._logits, self.num_tokens - self.prompt_len, self._hidden)
        self.compute_s += time.perf_counter() - started
        return token, features

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
        last = hidden[:, -1:]
        self._logits = self.model.head(last)[0, -1]
        self._hidden = self.model.norm(last)[0, -1].float() if self.with_hidden else None
        self.compute_s += time.perf_counter() - started


class ThreadedDrafter:
    """A ``Drafter`` seen through the router's async interface.

    Compute runs in a worker thread, so the node's event loop keeps serving other calls, and each
    forward takes the device's ``gate`` on its own: requests interleave forward by forward (the
    lock is FIFO), never held across a cloud round trip.
    """

    def __init__(self, drafter: Drafter, gate: asyncio.Lock | None = None) -> None:
        self._drafter = drafter
        self._gate = gate or asyncio.Lock()

    @property
    def compute_s(self) -> float:
        return self._drafter.compute_s

    @property
    def num_tokens(self) -> int:
        return self._drafter.num_tokens

    async def _run(self, fn, *args):
        async with self._gate:
            return await asyncio.to_thread(fn, *args)

    async def prefill(self, chunk_tokens: int) -> None:
        """Cache the prompt, ``chunk_tokens`` per forward (so a long prompt does not stall others)."""
        while not await self._run(self._drafter.prefill, chunk_tokens):
            pass

    async def draft(self) -> tuple[int, TokenFeatures]:
        return await self._run(self._drafter.draft)

    async def feed(self, token: int) -> None:
        await self._run(self._drafter.feed, token)

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        await self._run(self._drafter.rollback, num_tokens, then_feed)
