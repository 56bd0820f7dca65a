"""Split computing on the edge: the head of a model here, its tail on a cloud node.

One request = the prompt's hidden states at the cut, streamed to the cloud in chunks, then one
position per generated token: the edge runs the head on the new token, the cloud's tail session
answers the next token (greedy). The edge keeps the hidden states it sent, so that a cloud that
lost the session (evicted, restarted) gets them again from position 0 and the request goes on.
``SplitRun`` has the router's shape (``run()``, ``accounting``, ``runs``), so the edge's stop and
text handling serve both.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from edgecloud.errors import DomainError, Unavailable
from edgecloud.models.tokenizer import Tokenizer
from edgecloud.routing.router import CLOUD, Accounting, TokenEvent
from edgecloud.split.llm import SplitHead

SPLIT_POLICY = "split"  # the request's policy name that asks for split computing


class TailGone(DomainError):
    """The cloud has no (or another) state for this tail session: send it again from position 0."""


class TailAnswerError(Unavailable):
    """The cloud's answer makes no sense (a token outside the vocabulary)."""


@dataclass(frozen=True)
class TailReply:
    next_token: int
    compute_s: float
    bytes_up: int
    bytes_down: int
    network_s: float
    session_tokens: int


class TailLink(Protocol):
    """The cloud's tail, as the split engine sees it (gRPC in the daemon)."""

    async def run(self, hidden: torch.Tensor, past_tokens: int, *, session_id: str, end: bool = False) -> TailReply:
        """Run the tail on ``hidden`` (1, T, C) at positions ``past_tokens...``; ``TailGone`` if out of step."""
        ...

    async def close(self) -> None: ...


class SplitRun:
    """One greedy generation through a split model."""

    def __init__(self, head: SplitHead, link: TailLink, prompt_ids: Sequence[int], *, max_new_tokens: int,
                 stop_ids: Sequence[int] = (), chunk_tokens: int = 128, started_s: float | None = None,
                 max_replays: int = 3) -> None:
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        self.head = head
        self.link = link
        self.prompt_ids = list(prompt_ids)
        self.max_new_tokens = max_new_tokens
        self.stop_ids = frozenset(stop_ids)
        self.chunk_tokens = chunk_tokens
        self.max_replays = max_replays
        self.session_id = uuid.uuid4().hex
        self.accounting = Accounting(prompt_tokens=len(self.prompt_ids))
        self.started_s = time.perf_counter() if started_s is None else started_s
        self.runs = True  # the stop handling may switch lookahead off; a split run has none
        self.replays = 0
        self._cache = head.new_cache()
        self._sent: list[torch.Tensor] = []  # hidden states the tail session holds, in order: (1, T, C) each
        self._positions = 0

    async def run(self) -> AsyncIterator[TokenEvent]:
        acc = self.accounting
        try:
            token = await self._prefill()
            for i in range(self.max_new_tokens):
                acc.cloud_tokens += 1
                if i == 0:
                    acc.time_to_first_token_s = time.perf_counter() - self.started_s
                yield TokenEvent(token, CLOUD, False)
                if token in self.stop_ids:
                    acc.finish_reason = "eos"
                    return
                if i + 1 == self.max_new_tokens:
                    break
                token = await self._step([token])
            acc.finish_reason = "length"
        finally:
            acc.wall_s = time.perf_counter() - self.started_s

    async def close(self) -> None:
        """End the cloud's tail session (best effort) and the link."""
        await self.link.close()

    async def _prefill(self) -> int:
        reply = None
        for start in range(0, len(self.prompt_ids), self.chunk_tokens):
            reply = await self._send(self.prompt_ids[start:start + self.chunk_tokens])
        return reply.next_token

    async def _step(self, ids: list[int]) -> int:
        return (await self._send(ids)).next_token

    def _checked(self, reply: TailReply) -> TailReply:
        vocab = self.head.model.config.vocab_size
        if not 0 <= reply.next_token < vocab:
            raise TailAnswerError(f"the cloud answered token {reply.next_token}, outside the vocabulary [0, {vocab})")
        return reply

    async def _send(self, ids: list[int]) -> TailReply:
        started = time.perf_counter()
        hidden = await asyncio.to_thread(self.head.forward, torch.tensor([ids]), self._cache)  # (1, T, C)
        self.accounting.edge_compute_s += time.perf_counter() - started
        try:
            reply = await self._call(hidden, self._positions)
        except TailGone:
            reply = await self._replay(hidden)
        self._sent.append(hidden)
        self._positions += hidden.shape[1]
        if reply.session_tokens != self._positions:
            raise TailGone(f"the cloud's tail session holds {reply.session_tokens} positions, "
                           f"the edge sent {self._positions}")
        return reply

    async def _replay(self, hidden: torch.Tensor) -> TailReply:
        """Everything sent so far and ``hidden`` again, from position 0, in chunks."""
        while True:
            self.replays += 1
            if self.replays > self.max_replays:
                raise TailGone(f"the cloud lost the tail session {self.max_replays} times; giving up")
            every = torch.cat([*self._sent, hidden], 1)  # (1, positions + T, C)
            try:
                reply = None
                for start in range(0, every.shape[1], self.chunk_tokens):
                    reply = await self._call(every[:, start:start + self.chunk_tokens], start)
                return reply
            except TailGone:
                continue

    async def _call(self, hidden: torch.Tensor, past: int) -> TailReply:
        reply = self._checked(await self.link.run(hidden, past, session_id=self.session_id))
        acc = self.accounting
        acc.cloud_round_trips += 1
        acc.bytes_up += reply.bytes_up
        acc.bytes_down += reply.bytes_down
        acc.cloud_compute_s += reply.compute_s
        acc.network_s += reply.network_s
        return reply


class SplitEngine:
    """The head of a split model with its tokenizer: serves ``policy="split"`` requests of an edge node."""

    def __init__(self, head: SplitHead, tokenizer: Tokenizer, *, codec: str, chunk_tokens: int = 128) -> None:
        self.head = head
        self.tokenizer = tokenizer
        self.codec = codec
        self.chunk_tokens = chunk_tokens

    def check(self, temperature: float, draft_window: int, target_cloud_share: float | None) -> None:
        """What a split request cannot ask for (``ValueError`` says what)."""
        if temperature != 0:
            raise ValueError("split generation is greedy: temperature must be 0")
        if draft_window or target_cloud_share is not None:
            raise ValueError("draft_window and target_cloud_share are routing options; split generation has none")

    def start(self, prompt_ids: Sequence[int], link: TailLink, *, max_new_tokens: int,
              started_s: float | None = None) -> SplitRun:
        if len(prompt_ids) + max_new_tokens > self.head.model.config.max_position_embeddings:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens + max_tokens={max_new_tokens} exceed the "
                             f"model's context of {self.head.model.config.max_position_embeddings}")
        return SplitRun(self.head, link, prompt_ids, max_new_tokens=max_new_tokens,
                        stop_ids=self.tokenizer.eos_token_ids, chunk_tokens=self.chunk_tokens, started_s=started_s)
