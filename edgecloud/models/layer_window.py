"""Sliding-window weight memory (TPI-LLM's): only a window of layers in RAM, the next ones read from
disk in a background thread while the current ones compute.

The layers are built on the meta device (no memory). Going through them in order, layer i's
weights are read (by the time it is needed, usually already) while layers before it compute;
after it has run they are dropped, and the read of the layer ``size`` places ahead begins — round
the end to the first layers of the next forward. At most ``size`` layers' weights are held at once
(the one computing included), so peak memory is bounded by the window, not the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn


class LayerWindow:
    def __init__(self, layers: nn.ModuleList, path: str | Path, size: int, dtype: torch.dtype) -> None:
        if size < 1:
            raise ValueError(f"a memory window holds at least one layer, not {size}")
        self.layers, self.path, self.size, self.dtype = layers, str(path), min(size, len(layers)), dtype
        with safe_open(self.path, framework="pt") as f:
            keys = list(f.keys())
        self._names = [[k for k in keys if k.startswith(f"layers.{i}.")] for i in range(len(layers))]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="layer-window")
        self._pending: dict[int, Future] = {}

    def _read(self, index: int) -> dict[str, torch.Tensor]:
        prefix = f"layers.{index}."
        with safe_open(self.path, framework="pt") as f:  # opened per read: no mapping outlives it
            # copied into torch's own (aligned) memory: the same kernels, so the same bits, as a loaded model
            return {name[len(prefix):]: f.get_tensor(name).to(self.dtype, copy=True) for name in self._names[index]}

    def _prefetch(self, index: int) -> None:
        if index not in self._pending:
            self._pending[index] = self._pool.submit(self._read, index)

    def __iter__(self) -> Iterator[nn.Module]:
        """Each layer in order with its weights loaded; they are dropped once the caller moves on."""
        count = len(self.layers)
        for stale in [i for i in self._pending if i >= self.size]:  # an aborted forward's reads: not needed yet
            self._pending.pop(stale).cancel()
        for i in range(count):
            for ahead in range(self.size):
                self._prefetch((i + ahead) % count)
            state = self._pending.pop(i).result()
            layer = self.layers[i]
            layer.load_state_dict(state, assign=True)
            shapes = {name: torch.empty_like(t, device="meta") for name, t in state.items()}
            del state
            try:
                yield layer
            finally:
                layer.load_state_dict(shapes, assign=True)  # back to meta: the weights are freed

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
