"""A bounded, expiring table of sessions that each hold a KV cache (verify and split-tail sessions).

Entries are kept in least-recently-used order under a count and a KV-memory limit and are
dropped after an idle TTL; an entry whose lock is held (a forward in flight) is never dropped.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from edgecloud.errors import AlreadyExists, InvalidInput, NotFound, clip
from edgecloud.models.kv_cache import KVCache

SESSION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


class SessionNotFound(NotFound):
    """The session id is unknown: never opened, closed, evicted or expired."""

    def __str__(self) -> str:
        return f"session {clip(self.args[0])} not found (closed, evicted or expired); reopen it and replay its tokens"


class SessionExists(AlreadyExists):
    """A client-chosen session id that is already taken."""


def check_session_id(session_id: str) -> str:
    """``session_id`` if it is 1-128 characters of [A-Za-z0-9_.:-], else ``InvalidInput``."""
    if not SESSION_ID.fullmatch(session_id):
        raise InvalidInput(f"session id {clip(session_id)} must be 1-128 characters of [A-Za-z0-9_.:-]")
    return session_id


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 64
    max_kv_bytes: int = 4 * 2**30
    max_tokens_per_session: int = 32768
    max_window_tokens: int = 4096  # tokens (or positions) in one call
    idle_ttl_s: float = 600.0  # a session unused this long is dropped


class Entry(Protocol):
    id: str
    lock: threading.Lock
    last_used: float

    @property
    def cache(self) -> KVCache | None: ...


E = TypeVar("E", bound=Entry)


class SessionTable(Generic[E]):
    """Thread-safe LRU of sessions under ``limits``; counts evictions and expirations."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._entries: OrderedDict[str, E] = OrderedDict()
        self._lock = threading.Lock()
        self.evictions = 0
        self.expirations = 0

    def check_free(self, session_id: str) -> None:
        """``SessionExists`` if ``session_id`` is taken."""
        with self._lock:
            if session_id in self._entries:
                raise SessionExists(f"session {clip(session_id)} already exists")

    def insert(self, entry: E) -> None:
        """Add ``entry`` (``SessionExists`` if its id is taken), then evict others over the limits."""
        with self._lock:
            if entry.id in self._entries:
                raise SessionExists(f"session {clip(entry.id)} already exists")
            self._entries[entry.id] = entry
            self._evict(keep=entry.id)

    def get(self, session_id: str) -> E:
        """The live entry (marked used), or ``SessionNotFound``."""
        with self._lock:
            self._expire()
            entry = self._entries.get(session_id)
            if entry is None:
                raise SessionNotFound(session_id)
            self._entries.move_to_end(session_id)
            entry.last_used = time.monotonic()
            return entry

    def pop(self, session_id: str) -> E:
        """Remove and return the entry, or ``SessionNotFound``."""
        with self._lock:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            raise SessionNotFound(session_id)
        return entry

    def enforce(self, keep: str) -> None:
        """Evict over the limits after an entry grew (never ``keep``)."""
        with self._lock:
            self._evict(keep)

    def status(self) -> dict[str, int]:
        with self._lock:
            self._expire()
            return {"sessions": len(self._entries), "kv_bytes": self._kv_bytes(),
                    "evictions": self.evictions, "expirations": self.expirations}

    def _kv_bytes(self) -> int:
        return sum(e.cache.nbytes for e in self._entries.values() if e.cache is not None)

    def _expire(self) -> None:
        """Drop entries idle for longer than the TTL (caller holds the lock)."""
        cutoff = time.monotonic() - self.limits.idle_ttl_s
        for sid in [sid for sid, e in self._entries.items() if e.last_used < cutoff and not e.lock.locked()]:
            del self._entries[sid]
            self.expirations += 1

    def _evict(self, keep: str) -> None:
        """Drop expired entries, then least-recently-used ones over the count or KV-memory limit (never
        ``keep`` or one in use). Caller holds the lock."""
        self._expire()

        def over() -> bool:
            return len(self._entries) > self.limits.max_sessions or self._kv_bytes() > self.limits.max_kv_bytes

        for sid in list(self._entries):
            if not over():
                break
            if sid != keep and not self._entries[sid].lock.locked():
                del self._entries[sid]
                self.evictions += 1
