"""Cloud-side LLM sessions: a KV cache per session and batched verification of draft windows.

One ``verify`` call takes the tokens the cloud has not seen yet (context) and a window of
draft tokens, runs ONE forward pass over both, and returns per draft position the LLM's own
token, how many draft tokens it accepts (the leading run that equals its own tokens), and
its next token after the last accepted one. The cache is then cropped to what was accepted.

Sessions live in an LRU under a count and a KV-memory limit; a session that is gone raises
``SessionNotFound`` and the edge rebuilds it by replaying its tokens.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from edgecloud.errors import AlreadyExists, InvalidInput, LimitExceeded, NotFound, clip
from edgecloud.models.generate import SamplingParams, select_token
from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel

SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class SessionNotFound(NotFound):
    """The session id is unknown: never opened, closed, evicted or expired."""

    def __str__(self) -> str:
        return f"session {clip(self.args[0])} not found (closed, evicted or expired); reopen it and replay its tokens"


class SessionInputError(InvalidInput):
    """A request that cannot be run (empty window, token ids out of range, bad sampling options)."""


class SessionLimitError(SessionInputError, LimitExceeded):
    """A request over a configured limit (window, session length)."""


class SessionExists(AlreadyExists):
    """A client-chosen session id that is already taken."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 64
    max_kv_bytes: int = 4 * 2**30
    max_tokens_per_session: int = 32768
    max_window_tokens: int = 4096  # context + draft in one call
    idle_ttl_s: float = 600.0  # a session unused this long is dropped


def sampling_params(temperature: float, seed: int | None) -> SamplingParams:
    """Validated sampling options of a new session (``SessionInputError`` says what is wrong)."""
    try:
        return SamplingParams(temperature=temperature, seed=seed)
    except ValueError as exc:
        raise SessionInputError(str(exc)) from None


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one draft window."""

    llm_tokens: list[int]  # the LLM's token at each draft position and the one after: len(draft) + 1
    accepted: int  # leading draft tokens equal to the LLM's
    next_token: int  # the LLM's token after the accepted ones (== llm_tokens[accepted])
    top_logprobs: list[list[tuple[int, float]]]  # per position, when asked
    compute_s: float
    session_tokens: int  # tokens in the session's cache afterwards
    session_id: str = ""


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
    """All sessions of one cloud model. Thread-safe; forward passes run one at a time.

    A session enters the table only once its first forward has run (``start``), so a call that
    fails validation leaves nothing behind and a new session cannot be evicted before its
    creator sees it.
    """

    def __init__(self, model: LlamaModel, limits: SessionLimits = SessionLimits()) -> None:
        self.model = model
        self.limits = limits
        self._sessions: OrderedDict[str, CloudSession] = OrderedDict()
        self._lock = threading.Lock()  # guards the session table
        self._model_lock = threading.Lock()  # one forward pass at a time
        self.evictions = 0
        self.expirations = 0
        self.verify_calls = 0

    def open(self, *, temperature: float = 0.0, seed: int | None = None, session_id: str | None = None) -> str:
        """Create an empty session (tokens arrive with the first ``verify``); returns its id."""
        session = self._new_session(temperature, seed, session_id)
        self._insert(session)
        return session.id

    def start(self, context: list[int], draft: list[int] = (), *, temperature: float = 0.0,
              seed: int | None = None, session_id: str | None = None, top_k: int = 0) -> Verdict:
        """Open a session and verify its first window in one step (the session id is in the verdict)."""
        session = self._new_session(temperature, seed, session_id)
        draft = list(draft)
        self._check_tokens(session, context, draft)
        with session.lock:
            verdict = self._run(session, context, draft, top_k)
            self._insert(session)
        return verdict

    def verify(self, session_id: str, context: list[int], draft: list[int], *, top_k: int = 0) -> Verdict:
        """Append ``context``, check ``draft`` in one forward pass, keep the accepted part."""
        session = self._get(session_id)
        self._check_tokens(session, context, draft)
        with session.lock:
            verdict = self._run(session, context, draft, top_k)
        with self._lock:
            self._evict(keep=session_id)
        return verdict

    def close(self, session_id: str) -> None:
        with self._lock:
            if self._sessions.pop(session_id, None) is None:
                raise SessionNotFound(session_id)

    def _new_session(self, temperature: float, seed: int | None, session_id: str | None) -> CloudSession:
        if session_id is not None and not SESSION_ID.fullmatch(session_id):
            raise SessionInputError(f"session id {clip(session_id)} must be 1-128 characters of [A-Za-z0-9_.:-]")
        sampling = sampling_params(temperature, seed)
        sid = session_id or uuid.uuid4().hex
        with self._lock:
            if sid in self._sessions:
                raise SessionExists(f"session {clip(sid)} already exists")
        return CloudSession(sid, self.model.new_cache(), sampling, sampling.generator())

    def _insert(self, session: CloudSession) -> None:
        with self._lock:
            if session.id in self._sessions:
                raise SessionExists(f"session {clip(session.id)} already exists")
            self._sessions[session.id] = session
            self._evict(keep=session.id)

    def _get(self, session_id: str) -> CloudSession:
        with self._lock:
            self._expire()
            session = self._sessions.get(session_id)
            if session is None:
                raise SessionNotFound(session_id)
            self._sessions.move_to_end(session_id)
            session.last_used = time.monotonic()
            return session

    def _run(self, session: CloudSession, context: list[int], draft: list[int], top_k: int) -> Verdict:
        """One forward over context + draft; the caller holds ``session.lock``."""
        started = time.perf_counter()
        base = session.num_tokens
        window = context + draft
        # Row i of the window's logits predicts the token after window[i]. draft[j] is predicted by
        # row len(context)-1+j, so only the last len(draft)+1 rows are needed (len(draft) without context,
        # where the session's saved logits predict draft[0]).
        needed = len(draft) + 1 if context else len(draft)
        with self._model_lock, torch.inference_mode():
            ids = torch.tensor([window], device=self.model.device)
            logits = self.model(ids, session.cache, last_n=needed)[0] if needed else None  # (needed, V)
        rows = logits if context else torch.cat([session.last_logits[None], *([logits] if needed else [])])
        if session.sampling.temperature == 0:
            llm = rows.argmax(-1)  # (len(draft) + 1,)
            matches = llm[:len(draft)] == torch.tensor(draft, dtype=llm.dtype, device=llm.device)
            accepted = int(matches.int().cumprod(0).sum()) if draft else 0
            llm_tokens = llm.tolist()
        else:  # seeded sampling consumes the generator row by row
            llm_tokens = [select_token(row, session.sampling, session.generator) for row in rows]
            accepted = 0
            while accepted < len(draft) and draft[accepted] == llm_tokens[accepted]:
                accepted += 1
        session.cache.crop(base + len(context) + accepted)
        session.last_logits = rows[accepted].clone()
        session.last_used = time.monotonic()
        top = _top_logprobs(rows, top_k) if top_k else []
        with self._lock:
            self.verify_calls += 1
        return Verdict(llm_tokens, accepted, llm_tokens[accepted], top, time.perf_counter() - started,
                       session.num_tokens, session.id)

    def _check_tokens(self, session: CloudSession, context: list[int], draft: list[int]) -> None:
        if not context and not draft:
            raise SessionInputError("nothing to verify: context and draft are both empty")
        if not context and session.last_logits is None:
            raise SessionInputError("the first call of a session needs context tokens (the prompt)")
        window = len(context) + len(draft)
        if window > self.limits.max_window_tokens:
            raise SessionLimitError(f"{window} tokens in one call exceed the limit {self.limits.max_window_tokens}")
        if session.num_tokens + window > self.limits.max_tokens_per_session:
            raise SessionLimitError(
                f"session would hold {session.num_tokens + window} tokens; the limit is "
                f"{self.limits.max_tokens_per_session}")
        vocab = self.model.config.vocab_size
        bad = [t for t in (*context, *draft) if not 0 <= t < vocab]
        if bad:
            raise SessionInputError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")

    def _expire(self) -> None:
        """Drop sessions idle for longer than the TTL (caller holds the table lock)."""
        cutoff = time.monotonic() - self.limits.idle_ttl_s
        for sid in [sid for sid, s in self._sessions.items() if s.last_used < cutoff and not s.lock.locked()]:
            del self._sessions[sid]
            self.expirations += 1

    def _evict(self, keep: str) -> None:
        """Drop expired sessions, then least-recently-used ones over the count or KV-memory limit (never
        ``keep`` or one in use)."""
        self._expire()

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
            self._expire()
            return {"sessions": len(self._sessions),
                    "kv_bytes": sum(s.cache.nbytes for s in self._sessions.values()),
                    "max_sessions": self.limits.max_sessions, "max_kv_bytes": self.limits.max_kv_bytes,
                    "evictions": self.evictions, "expirations": self.expirations,
                    "verify_calls": self.verify_calls}


def _top_logprobs(rows: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = torch.log_softmax(rows.float(), -1).topk(k, dim=-1)
    return [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(ids, values, strict=True)]
