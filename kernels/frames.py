"""The collectives' wire frames: a fixed binary header, then the raw tensor bytes (no pickle).

Header (little-endian, 36 bytes): magic ``ECC1``, kind, dtype code, codec, flags, sender rank,
world size, step id, part (ring chunk index), number of values, payload bytes. Everything read
from a peer is checked against what the receiver expects before any tensor is built.
"""

from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass

import torch

MAGIC = b"ECC1"
_HEADER = struct.Struct("<4sBBBBHHQIQI")
HEADER_BYTES = _HEADER.size

# kinds
HELLO, WELCOME, CONTRIBUTE, RESULT, ABORT, CHUNK = range(1, 7)
# codecs
RAW, Q80 = 0, 1

DTYPES = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


class FrameError(ValueError):
    """A frame that is malformed or not what the protocol expects here."""


@dataclass(frozen=True)
class Header:
    kind: int
    rank: int
    world_size: int
    step: int
    numel: int = 0
    nbytes: int = 0
    dtype: torch.dtype = torch.float32
    codec: int = RAW
    part: int = 0

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, self.kind, DTYPE_CODES[self.dtype], self.codec, 0, self.rank, self.world_size,
                            self.step, self.part, self.numel, self.nbytes)

    @classmethod
    def unpack(cls, data: bytes | memoryview) -> Header:
        if len(data) != HEADER_BYTES:
            raise FrameError(f"a header of {len(data)} bytes (expected {HEADER_BYTES})")
        magic, kind, dtype, codec, _, rank, world, step, part, numel, nbytes = _HEADER.unpack(data)
        if magic != MAGIC or not HELLO <= kind <= CHUNK or dtype not in DTYPES or codec not in (RAW, Q80):
            raise FrameError("not a collectives frame (bad magic, kind, dtype or codec)")
        return cls(kind, rank, world, step, numel, nbytes, DTYPES[dtype], codec, part)


# received frames are read-only and only read: torch's warning about that is noise here
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def payload_bytes(frame: bytes) -> int:
    """The payload size a header frame announces (0 for anything that is not a header)."""
    if len(frame) != HEADER_BYTES or frame[:4] != MAGIC:
        return 0
    return _HEADER.unpack(frame)[-1]


def tensor_view(buffer: bytes | memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor over ``buffer`` without a copy (read-only buffers included: callers only read it)."""
    if len(buffer) == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(buffer, dtype=dtype)
