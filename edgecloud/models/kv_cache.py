"""Per-session key/value cache, one growable buffer per layer.

Each layer keeps its own length so that a model cut into a head and a tail (split
computing) can keep a cache for only the layers it runs. ``crop`` rolls a session back,
which the cloud needs when it rejects draft tokens.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

import torch


class KVCache:
    """Keys and values for a batch of sequences over a set of layers."""

    def __init__(
        self,
        layers: Iterable[int],
        batch_size: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        initial_capacity: int = 256,
    ) -> None:
        self.layers = tuple(layers)
        self.batch_size = batch_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self._initial_capacity = max(1, initial_capacity)
        self._keys: dict[int, torch.Tensor] = {}  # layer -> (B, KV, capacity, D)
        self._values: dict[int, torch.Tensor] = {}
        self._lengths: dict[int, int] = dict.fromkeys(self.layers, 0)

    def length(self, layer: int | None = None) -> int:
        """Tokens cached for ``layer`` (default: the first layer this cache holds)."""
        return self._lengths[self.layers[0] if layer is None else layer]

    @property
    def nbytes(self) -> int:
        """Bytes held by the buffers (capacity, not just the used part)."""
        return sum(t.numel() * t.element_size() for t in (*self._keys.values(), *self._values.values()))

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``keys``/``values`` (B, KV, T, D) after the cached ones; return all of them (B, KV, S, D)."""
        start = self._lengths[layer]
        end = start + keys.shape[2]
        self._reserve(layer, end)
        self._keys[layer][:, :, start:end] = keys
        self._values[layer][:, :, start:end] = values
        self._lengths[layer] = end
        return self._keys[layer][:, :, :end], self._values[layer][:, :, :end]

    def crop(self, num_tokens: int) -> None:
        """Forget everything after the first ``num_tokens`` tokens, in every layer."""
        if num_tokens < 0:
            raise ValueError(f"cannot crop a KV cache to {num_tokens} tokens")
        for layer, length in self._lengths.items():
            self._lengths[layer] = min(length, num_tokens)

    def _reserve(self, layer: int, needed: int) -> None:
        current = self._keys.get(layer)
        capacity = 0 if current is None else current.shape[2]
        if needed <= capacity:
            return
        new_capacity = max(needed, 2 * capacity, self._initial_capacity)
        shape = (self.batch_size, self.num_kv_heads, new_capacity, self.head_dim)
        for store in (self._keys, self._values):
            grown = torch.empty(shape, dtype=self.dtype, device=self.device)
            if current is not None:
                used = self._lengths[layer]
                grown[:, :, :used] = store[layer][:, :, :used]
            store[layer] = grown


class KVArena:
    """The caches of many sessions of one model in shared buffers, one row (slot) per session.

    A decode step of B sessions then appends and attends with one tensor op per layer instead
    of B (``LlamaModel.decode_sessions``). Every slot has the capacity of the longest session,
    so the arena takes sessions up to ``max_tokens`` only (the rest keep a ``KVCache`` of their
    own). Growing the arena and writing into it take ``lock``, so a cache may be opened on any
    thread while another runs a forward.
    """

    def __init__(self, layers: Iterable[int], num_kv_heads: int, head_dim: int, *, dtype: torch.dtype,
                 device: torch.device | str = "cpu", max_tokens: int = 2048, slots: int = 4,
                 initial_capacity: int = 256) -> None:
        self.layers = tuple(layers)
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        self.keys: dict[int, torch.Tensor] = {}  # layer -> (slots, KV, capacity, D)
        self.values: dict[int, torch.Tensor] = {}
        self.lock = threading.RLock()
        self._free: list[int] = []
        self._allocate(slots, min(max_tokens, max(1, initial_capacity)))

    @property
    def slots(self) -> int:
        return self.keys[self.layers[0]].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[self.layers[0]].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys.values(), *self.values.values()))

    def new_cache(self) -> ArenaCache:
        """A cache for one session in a free slot (the slot is freed when the cache is collected)."""
        with self.lock:
            if not self._free:
                self._allocate(2 * self.slots, self.capacity)
            return ArenaCache(self, self._free.pop())

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def reserve(self, tokens: int) -> None:
        """Room for ``tokens`` tokens in every slot."""
        if tokens > self.max_tokens:
            raise ValueError(f"{tokens} tokens exceed the arena's {self.max_tokens}")
        if tokens > self.capacity:
            with self.lock:
                if tokens > self.capacity:  # another thread may have grown it meanwhile
                    self._allocate(self.slots, min(self.max_tokens, max(tokens, 2 * self.capacity)))

    def write(self, layer: int, slots: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor,
              values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one new key/value per session (``keys``/``values`` (B, KV, D) at ``positions`` (B,) of
        ``slots`` (B,)); then all of those sessions' keys and values up to the longest, (B, KV, S, D)."""
        width = int(positions.max()) + 1
        self.reserve(width)
        with self.lock:
            self.keys[layer][slots, :, positions] = keys
            self.values[layer][slots, :, positions] = values
            return (self.keys[layer][:, :, :width].index_select(0, slots),
                    self.values[layer][:, :, :width].index_select(0, slots))

    def write_block(self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store ``keys``/``values`` (B, KV, T, D) at positions [0, T) of ``slots`` (B,)."""
        self.reserve(keys.shape[2])
        with self.lock:
            self.keys[layer][slots, :, :keys.shape[2]] = keys
            self.values[layer][slots, :, :keys.shape[2]] = values

    def _allocate(self, slots: int, capacity: int) -> None:
        old = self.slots if self.keys else 0
        shape = (slots, self.num_kv_heads, capacity, self.head_dim)
        for store in (self.keys, self.values):
            for layer in self.layers:
                grown = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if layer in store:
                    previous = store[layer]
                    grown[:previous.shape[0], :, :previous.shape[2]] = previous
                store[layer] = grown
        self._free.extend(range(slots - 1, old - 1, -1))


class ArenaCache(KVCache):
    """A ``KVCache`` of one session (batch 1) kept in one slot of a ``KVArena``."""

    def __init__(self, arena: KVArena, slot: int) -> None:
        super().__init__(arena.layers, 1, arena.num_kv_heads, arena.head_dim, dtype=arena.dtype, device=arena.device)
        self.arena = arena
        self.slot = slot
        weakref.finalize(self, arena.release, slot)

    @property
    def nbytes(self) -> int:
        """Bytes of the slot's share of the arena (its capacity, not just the used part)."""
        return self.arena.nbytes // self.arena.slots

    def append(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if keys.shape[0] != 1:
            raise ValueError(f"an arena cache holds one sequence, got a batch of {keys.shape[0]}")
        start = self._lengths[layer]
        end = start + keys.shape[2]
        self.arena.reserve(end)
        row = slice(self.slot, self.slot + 1)
        with self.arena.lock:
            self.arena.keys[layer][row, :, start:end] = keys
            self.arena.values[layer][row, :, start:end] = values
            self._lengths[layer] = end
            return self.arena.keys[layer][row, :, :end], self.arena.values[layer][row, :, :end]

    def advance(self, num_tokens: int = 1) -> None:
        """Count ``num_tokens`` more tokens in every layer (written into the arena by a batched step)."""
        for layer in self.layers:
            self._lengths[layer] += num_tokens
