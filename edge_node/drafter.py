"""The edge model for one request: drafts tokens with their features, rolls back on rejection."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from edgecloud.edge_node.scheduler import SlmScheduler
from edgecloud.models.generate import SamplingParams, select_token
from edgecloud.models.kv_cache import ArenaCache, KVArena
from edgecloud.models.llama import LlamaModel
from edgecloud.routing.features import TokenFeatures, uncertainty

if TYPE_CHECKING:
    from edgecloud.routing.router import KeepDraft


class Drafter:
    """Holds the SLM's KV cache for one request and the logits for the next position."""

    def __init__(self, model: LlamaModel, prompt_ids: list[int], *, sampling: SamplingParams = SamplingParams(),
                 with_hidden: bool = False, capacity: int = 1024, prefill: bool = True,
                 arena: KVArena | None = None) -> None:
        """``capacity``: tokens the request may reach; ``arena``: shared cache buffers of the device's
        requests (batched steps attend in one op per layer), used when ``capacity`` fits it."""
        if not prompt_ids:
            raise ValueError("prompt is empty")
        self.model = model
        self.sampling = sampling
        self.with_hidden = with_hidden
        self._generator = sampling.generator()
        self.cache = arena.new_cache() if arena is not None and capacity <= arena.max_tokens \
            else model.new_cache(initial_capacity=capacity)
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
    def prefilled(self) -> bool:
        """Whether the whole prompt is cached."""
        return not self._pending

    @staticmethod
    @torch.inference_mode()
    def prefill_batch(drafters: Sequence[Drafter], chunk_tokens: Sequence[int]) -> None:
        """``prefill`` for several requests' drafters: the first chunks of those whose caches are empty
        and share an arena in one padded forward, the others one by one."""
        jobs = list(zip(drafters, chunk_tokens, strict=True))
        first = [(d, n) for d, n in jobs if isinstance(d.cache, ArenaCache) and not d.cache.length() and d._pending]
        if len({d.cache.arena for d, _ in first}) != 1 or len(first) < 2:
            first = []
        for drafter, count in jobs:
            if (drafter, count) not in first:
                drafter.prefill(count)
        if first:
            started = time.perf_counter()
            chunks = []
            for drafter, count in first:
                chunks.append(drafter._pending[:count])
                drafter._pending = drafter._pending[count:]
            batch = [d for d, _ in first]
            hidden = drafters[0].model.prefill_sessions(chunks, [d.cache for d in batch])  # (B, 1, C)
            Drafter._choose(batch, hidden, started)

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
        hidden = drafters[0].model.decode_sessions(tokens, [d.cache for d in drafters])  # (B, 1, C)
        Drafter._choose(drafters, hidden, started)

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
        Drafter._choose([self], hidden[:, -1:], started)

    @staticmethod
    def _choose(drafters: Sequence[Drafter], last_hidden: torch.Tensor, started: float) -> None:
        """Each drafter's logits, features and draft for the position after its cache's end, from its
        row of the last hidden states (B, 1, C); the forward's time since ``started`` shared out."""
        model = drafters[0].model
        logits = model.head(last_hidden)[:, -1]  # (B, V)
        entropy, max_prob, margin = (t.tolist() for t in uncertainty(logits))  # every row at once
        greedy = logits.argmax(-1).tolist()
        normed = model.norm(last_hidden)[:, -1].float() if any(d.with_hidden for d in drafters) else None  # (B, C)
        for i, drafter in enumerate(drafters):
            drafter._logits = logits[i]
            drafter._hidden = normed[i] if drafter.with_hidden else None
            token = greedy[i] if drafter.sampling.temperature == 0 else \
                select_token(logits[i], drafter.sampling, drafter._generator)
            drafter._next = (token, TokenFeatures(entropy[i], max_prob[i], margin[i],
                                                  drafter.num_tokens - drafter.prompt_len, drafter._hidden))
        share = (time.perf_counter() - started) / len(drafters)
        for drafter in drafters:
            drafter.compute_s += share


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
        while not await self._scheduler.prefill(self._drafter, chunk_tokens):
            pass

    async def draft(self) -> tuple[int, TokenFeatures]:
        return self._drafter.draft()  # chosen when the cache advanced: no compute here

    async def feed(self, token: int) -> None:
        await self._scheduler.feed(self._drafter, token)

    async def feed_run(self, token: int, keep: KeepDraft, max_tokens: int) -> list[int]:
        return await self._scheduler.feed_run(self._drafter, token, keep, max_tokens)

    async def rollback(self, num_tokens: int, then_feed: list[int]) -> None:
        await self._scheduler.run(self._drafter.rollback, num_tokens, then_feed)
