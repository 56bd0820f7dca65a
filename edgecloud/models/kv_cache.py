"""Per-session key/value cache, one growable buffer per layer.

Each layer keeps its own length so that a model cut into a head and a tail (split
computing) can keep a cache for only the layers it runs. ``crop`` rolls a session back,
which the cloud needs when it rejects draft tokens.
"""

from __future__ import annotations

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
