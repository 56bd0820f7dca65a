"""Split computing on the cloud: the tail of the served model run on hidden states from an edge head.

A tail session keeps the KV cache of the tail's layers, so prefill streams in chunks and decode
sends one position per step. The edge says how many positions it believes the session holds
(``past_tokens``): a longer cache is cropped back to it (the edge rolled back), a shorter one or a
missing session is an error that tells the edge to replay from position 0.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from edgecloud.cloud_node.session_table import (
    SessionLimits,
    SessionNotFound,
    SessionTable,
    check_session_id,
)
from edgecloud.errors import InvalidInput, LimitExceeded, PreconditionFailed
from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel
from edgecloud.split.llm import SplitTail


class TailInputError(InvalidInput):
    """Hidden states or options the tail cannot run (shape, values, layer)."""


class TailLimitError(TailInputError, LimitExceeded):
    """A request over a configured limit (positions per call or per session, answer size)."""


class TailOutOfStep(PreconditionFailed):
    """The edge and the cloud disagree on the session (positions or cut): replay from position 0."""


@dataclass
class TailSession:
    id: str
    start_layer: int
    cache: KVCache | None
    positions: int = 0  # positions run so far (what the cache holds, also with no tail layers)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class TailResult:
    logits: torch.Tensor | None  # float32 (B, T or 1, V); None when omitted
    next_tokens: list[int]  # greedy token after the last position, per batch row
    compute_s: float
    session_tokens: int  # positions the session holds afterwards (0 when stateless)


class TailStore:
    """Tail runs and tail sessions of one cloud model; forward passes share ``model_lock``."""

    def __init__(self, model: LlamaModel, limits: SessionLimits, model_lock: threading.Lock,
                 max_logits_bytes: int) -> None:
        self.model = model
        self.limits = limits
        self.model_lock = model_lock
        self.max_logits_bytes = max_logits_bytes
        self._table: SessionTable[TailSession] = SessionTable(limits)
        self.tail_calls = 0

    def run(self, start_layer: int, hidden: torch.Tensor, *, session_id: str = "", past_tokens: int = 0,
            last_only: bool = False, want_logits: bool = True, end_session: bool = False) -> TailResult:
        """Layers ``[start_layer, L)`` and the LM head on ``hidden`` (B, T, C)."""
        self._check(start_layer, hidden, want_logits, last_only)
        if not session_id:
            if past_tokens:
                raise TailInputError("past_tokens needs a session_id (a stateless call starts at position 0)")
            session = TailSession("", start_layer, None)
            return self._forward(session, hidden, last_only, want_logits)
        session = self._session(check_session_id(session_id), start_layer, past_tokens, hidden)
        with session.lock:
            if session.cache is not None:
                session.cache.crop(past_tokens)
            session.positions = past_tokens
            result = self._forward(session, hidden, last_only, want_logits)
        if end_session:
            self.close(session.id)
        else:
            self._table.enforce(keep=session.id)
        return result

    def close(self, session_id: str) -> None:
        self._table.pop(session_id)

    def status(self) -> dict[str, int]:
        return {**self._table.status(), "tail_calls": self.tail_calls}

    def _session(self, session_id: str, start_layer: int, past_tokens: int, hidden: torch.Tensor) -> TailSession:
        if hidden.shape[0] != 1:
            raise TailInputError(f"a tail session runs one sequence; got a batch of {hidden.shape[0]}")
        if past_tokens < 0:
            raise TailInputError(f"past_tokens must be >= 0, got {past_tokens}")
        if past_tokens + hidden.shape[1] > self.limits.max_tokens_per_session:
            raise TailLimitError(f"session would hold {past_tokens + hidden.shape[1]} positions; the limit is "
                                 f"{self.limits.max_tokens_per_session}")
        try:
            session = self._table.get(session_id)
        except SessionNotFound:
            if past_tokens:
                raise
            session = TailSession(session_id, start_layer, SplitTail(self.model, start_layer).new_cache())
            self._table.insert(session)
            return session
        if session.start_layer != start_layer:
            raise TailOutOfStep(f"session was opened at layer {session.start_layer}, not {start_layer}; "
                                "open a new session for a new cut")
        if past_tokens > session.positions:
            raise TailOutOfStep(f"session holds {session.positions} positions, the edge expects {past_tokens}; "
                                "replay from position 0")
        return session

    def _check(self, start_layer: int, hidden: torch.Tensor, want_logits: bool, last_only: bool) -> None:
        cfg = self.model.config
        if not 0 <= start_layer <= cfg.num_layers:
            raise TailInputError(f"start_layer {start_layer} is outside [0, {cfg.num_layers}]")
        if hidden.dim() != 3 or hidden.shape[2] != cfg.hidden_size or 0 in hidden.shape:
            raise TailInputError(f"hidden states must be (B, T, {cfg.hidden_size}) with B, T >= 1; "
                                 f"got {tuple(hidden.shape)}")
        positions = hidden.shape[0] * hidden.shape[1]
        if positions > self.limits.max_window_tokens:
            raise TailLimitError(f"{positions} positions in one call exceed the limit {self.limits.max_window_tokens}")
        if not bool(torch.isfinite(hidden).all()):
            raise TailInputError("hidden states hold non-finite values")
        rows = hidden.shape[0] * (1 if last_only else hidden.shape[1])
        if want_logits and rows * cfg.vocab_size * 4 > self.max_logits_bytes:
            raise TailLimitError(f"logits of {rows} positions × {cfg.vocab_size} would exceed the "
                                 f"{self.max_logits_bytes}-byte answer limit; ask for the last position only "
                                 "or omit the logits")

    def _forward(self, session: TailSession, hidden: torch.Tensor, last_only: bool, want_logits: bool) -> TailResult:
        started = time.perf_counter()
        end = session.positions + hidden.shape[1]
        if end > self.model.config.max_position_embeddings:
            raise TailLimitError(f"{end} positions exceed the model's context of "
                                 f"{self.model.config.max_position_embeddings}")
        with self.model_lock:
            tail = SplitTail(self.model, session.start_layer)
            logits = tail.forward(hidden, session.cache, last_n=1 if last_only else None)  # (B, T or 1, V)
            self.tail_calls += 1
        session.positions += hidden.shape[1]
        next_tokens = logits[:, -1].argmax(-1).tolist()
        return TailResult(logits if want_logits else None, next_tokens, time.perf_counter() - started,
                          session.positions if session.id else 0)
