"""Cloud-side LLM sessions: a KV cache per session and batched verification of draft windows.

One ``verify`` call takes the tokens the cloud has not seen yet (context) and a window of
draft tokens, runs ONE forward pass over both, and returns per draft position the LLM's own
token, how many draft tokens it accepts (the leading run that equals its own tokens), and
its next token after the last accepted one. The cache is then cropped to what was accepted.

Sessions live in an LRU under a count and a KV-memory limit; a session that is gone raises
``SessionNotFound`` and the edge rebuilds it by replaying its tokens.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from edgecloud.models.generate import SamplingParams, select_token
from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel


class SessionNotFound(KeyError):
    """The session id is unknown: never opened, closed, or evicted."""

    def __str__(self) -> str:
        return f"session {self.args[0]!r} not found (closed or evicted); reopen it and replay its tokens"


class SessionInputError(ValueError):
    """A request that cannot be run (empty window, token ids out of range, too long)."""


class SessionExists(SessionInputError):
    """A client-chosen session id that is already taken."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 64
    max_kv_bytes: int = 4 * 2**30
    max_tokens_per_session: int = 32768
    max_window_tokens: int = 4096  # context + draft in one call


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one draft window."""

    llm_tokens: list[int]  # the LLM's token at each draft position and the one after: len(draft) + 1
    accepted: int  # leading draft tokens equal to the LLM's
    next_token: int  # the LLM's token after the accepted ones (== llm_tokens[accepted])
    top_logprobs: list[list[tuple[int, float]]]  # per position, when asked
    compute_s: float
    session_tokens: int  # tokens in the session's cache afterwards


@dataclass
class CloudSession:
    id: str
    cache: KVCache
    sampling: SamplingParams
    generator: torch.Generator | None
    last_logits: torch.Tensor | None = None  # predicts the token after the cache's end (V,)
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def num_tokens(self) -> int:
        return self.cache.length()


class SessionStore:
    """All sessions of one cloud model. Thread-safe; forward passes run one at a time."""

    def __init__(self, model: LlamaModel, limits: SessionLimits = SessionLimits()) -> None:
        self.model = model
        self.limits = limits
        self._sessions: OrderedDict[str, CloudSession] = OrderedDict()
        self._lock = threading.Lock()  # guards the session table
        self._model_lock = threading.Lock()  # one forward pass at a time
        self.evictions = 0
        self.verify_calls = 0

    def open(self, *, temperature: float = 0.0, seed: int | None = None, session_id: str | None = None) -> str:
        """Create an empty session (tokens arrive with the first ``verify``); returns its id."""
        sampling = SamplingParams(temperature=temperature, seed=seed)
        sid = session_id or uuid.uuid4().hex
        session = CloudSession(sid, self.model.new_cache(), sampling, sampling.generator())
        with self._lock:
            if sid in self._sessions:
                raise SessionExists(f"session {sid!r} already exists")
            self._sessions[sid] = session
            self._evict(keep=sid)
        return sid

    def close(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(session_id)

    def _get(self, session_id: str) -> CloudSession:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFound(session_id)
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session

    def verify(self, session_id: str, context: list[int], draft: list[int], *, top_k: int = 0) -> Verdict:
        """Append ``context``, check ``draft`` in one forward pass, keep the accepted part."""
        session = self._get(session_id)
        self._check_tokens(session, context, draft)
        with session.lock:
            started = time.perf_counter()
            base = session.num_tokens
            window = context + draft
            with self._model_lock, torch.inference_mode():
                logits = self.model(torch.tensor([window], device=self.model.device), session.cache)[0]  # (T, V)
            # Row i predicts the token after window[i]; draft[j] is predicted by row len(context)-1+j.
            rows = logits[len(context) - 1:] if context else torch.cat([session.last_logits[None], logits])
            llm_tokens = [select_token(row, session.sampling, session.generator) for row in rows]
            accepted = 0
            while accepted < len(draft) and draft[accepted] == llm_tokens[accepted]:
                accepted += 1
            session.cache.crop(base + len(context) + accepted)
            session.last_logits = rows[accepted].clone()
            top = _top_logprobs(rows, top_k) if top_k else []
            compute_s = time.perf_counter() - started
        with self._lock:
            self.verify_calls += 1
            self._evict(keep=session_id)
        return Verdict(llm_tokens, accepted, llm_tokens[accepted], top, compute_s, session.num_tokens)

    def _check_tokens(self, session: CloudSession, context: list[int], draft: list[int]) -> None:
        if not context and not draft:
            raise SessionInputError("nothing to verify: context and draft are both empty")
        if not context and session.last_logits is None:
            raise SessionInputError("the first call of a session needs context tokens (the prompt)")
        window = len(context) + len(draft)
        if window > self.limits.max_window_tokens:
            raise SessionInputError(f"{window} tokens in one call exceed the limit {self.limits.max_window_tokens}")
        if session.num_tokens + window > self.limits.max_tokens_per_session:
            raise SessionInputError(
                f"session would hold {session.num_tokens + window} tokens; the limit is "
                f"{self.limits.max_tokens_per_session}")
        vocab = self.model.config.vocab_size
        bad = [t for t in (*context, *draft) if not 0 <= t < vocab]
        if bad:
            raise SessionInputError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")

    def _evict(self, keep: str) -> None:
        """Drop least-recently-used sessions over the count or KV-memory limit (never ``keep``)."""
        def over() -> bool:
            kv = sum(s.cache.nbytes for s in self._sessions.values())
            return len(self._sessions) > self.limits.max_sessions or kv > self.limits.max_kv_bytes

        for sid in list(self._sessions):
            if not over():
                break
            if sid != keep and not self._sessions[sid].lock.locked():
                del self._sessions[sid]
                self.evictions += 1

    def status(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": len(self._sessions),
                    "kv_bytes": sum(s.cache.nbytes for s in self._sessions.values()),
                    "max_sessions": self.limits.max_sessions, "max_kv_bytes": self.limits.max_kv_bytes,
                    "evictions": self.evictions, "verify_calls": self.verify_calls}


def _top_logprobs(rows: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = torch.log_softmax(rows.float(), -1).topk(k, dim=-1)
    return [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(ids, values, strict=True)]
