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
from dataclasses import dataclass, field

import torch

from edgecloud.cloud_node.session_table import (
    SessionExists,
    SessionLimits,
    SessionNotFound,
    SessionTable,
    check_session_id,
)
from edgecloud.errors import InvalidInput, LimitExceeded
from edgecloud.models.generate import SamplingParams, select_token
from edgecloud.models.kv_cache import KVCache
from edgecloud.models.llama import LlamaModel

__all__ = ["CloudSession", "SessionExists", "SessionInputError", "SessionLimitError", "SessionLimits",
           "SessionNotFound", "SessionStore", "Verdict"]


class SessionInputError(InvalidInput):
    """A request that cannot be run (empty window, token ids out of range, bad sampling options)."""


class SessionLimitError(SessionInputError, LimitExceeded):
    """A request over a configured limit (window, session length)."""


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

    def __init__(self, model: LlamaModel, limits: SessionLimits = SessionLimits(),
                 model_lock: threading.Lock | None = None) -> None:
        self.model = model
        self.limits = limits
        self._table: SessionTable[CloudSession] = SessionTable(limits)
        self._lock = threading.Lock()  # guards the counters
        self.model_lock = model_lock or threading.Lock()  # one forward pass at a time (shared with tails)
        self.verify_calls = 0

    @property
    def evictions(self) -> int:
        return self._table.evictions

    @property
    def expirations(self) -> int:
        return self._table.expirations

    def open(self, *, temperature: float = 0.0, seed: int | None = None, session_id: str | None = None) -> str:
        """Create an empty session (tokens arrive with the first ``verify``); returns its id."""
        session = self._new_session(temperature, seed, session_id)
        self._table.insert(session)
        return session.id

    def start(self, context: list[int], draft: list[int] = (), *, temperature: float = 0.0,
              seed: int | None = None, session_id: str | None = None, top_k: int = 0) -> Verdict:
        """Open a session and verify its first window in one step (the session id is in the verdict)."""
        session = self._new_session(temperature, seed, session_id)
        draft = list(draft)
        self._check_tokens(session, context, draft)
        with session.lock:
            verdict = self._run(session, context, draft, top_k)
            self._table.insert(session)
        return verdict

    def verify(self, session_id: str, context: list[int], draft: list[int], *, top_k: int = 0) -> Verdict:
        """Append ``context``, check ``draft`` in one forward pass, keep the accepted part."""
        session = self._table.get(session_id)
        self._check_tokens(session, context, draft)
        with session.lock:
            verdict = self._run(session, context, draft, top_k)
        self._table.enforce(keep=session_id)
        return verdict

    def close(self, session_id: str) -> None:
        self._table.pop(session_id)

    def _new_session(self, temperature: float, seed: int | None, session_id: str | None) -> CloudSession:
        sid = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        sampling = sampling_params(temperature, seed)
        self._table.check_free(sid)
        return CloudSession(sid, self.model.new_cache(), sampling, sampling.generator())

    def _run(self, session: CloudSession, context: list[int], draft: list[int], top_k: int) -> Verdict:
        """One forward over context + draft; the caller holds ``session.lock``."""
        started = time.perf_counter()
        base = session.num_tokens
        window = context + draft
        # Row i of the window's logits predicts the token after window[i]. draft[j] is predicted by
        # row len(context)-1+j, so only the last len(draft)+1 rows are needed (len(draft) without context,
        # where the session's saved logits predict draft[0]).
        needed = len(draft) + 1 if context else len(draft)
        with self.model_lock, torch.inference_mode():
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

    def status(self) -> dict[str, int]:
        with self._lock:
            calls = self.verify_calls
        return {**self._table.status(), "max_sessions": self.limits.max_sessions,
                "max_kv_bytes": self.limits.max_kv_bytes, "verify_calls": calls}

def _top_logprobs(rows: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    values, ids = torch.log_softmax(rows.float(), -1).topk(k, dim=-1)
    return [list(zip(i.tolist(), v.tolist(), strict=True)) for i, v in zip(ids, values, strict=True)]
