"""Write a ``.safetensors`` file one tensor at a time (peak memory: one tensor, not the whole model)."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
               torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


@dataclass(frozen=True)
class TensorLayout:
    """Name, dtype and shape of one tensor to be written."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class StreamingSafetensorsWriter:
    """Writes the header for a known layout, then each tensor's bytes in layout order.

    >>> with StreamingSafetensorsWriter(path, layout) as writer:
    ...     for spec in layout:
    ...         writer.write(spec.name, make(spec))
    """

    def __init__(self, path: str | Path, layout: Sequence[TensorLayout], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.layout = list(layout)
        self.metadata = {"format": "pt", **(metadata or {})}
        self._next = 0
        self._file: BinaryIO | None = None

    def _header(self) -> bytes:
        header: dict[str, object] = {"__metadata__": self.metadata}
        offset = 0
        for spec in self.layout:
            if spec.dtype not in DTYPE_NAMES:
                raise TypeError(f"{spec.name}: dtype {spec.dtype} cannot be stored in safetensors here")
            header[spec.name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                                 "data_offsets": [offset, offset + spec.nbytes]}
            offset += spec.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        return struct.pack("<Q", len(raw)) + raw

    def __enter__(self) -> StreamingSafetensorsWriter:
        self._file = self.path.open("wb")
        self._file.write(self._header())
        return self

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write the next tensor of the layout; its name, dtype and shape must match."""
        if self._file is None:
            raise RuntimeError("writer is not open")
        if self._next >= len(self.layout):
            raise ValueError(f"{name}: all {len(self.layout)} tensors are already written")
        spec = self.layout[self._next]
        if (name, tensor.dtype, tuple(tensor.shape)) != (spec.name, spec.dtype, spec.shape):
            raise ValueError(f"expected {spec.name} {spec.dtype} {spec.shape}, "
                             f"got {name} {tensor.dtype} {tuple(tensor.shape)}")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(data))
        self._next += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if exc_type is None and self._next != len(self.layout):
            missing = [spec.name for spec in self.layout[self._next:]]
            raise ValueError(f"{self.path}: {len(missing)} tensors never written, e.g. {missing[:3]}")
