"""Tensor ⇄ protobuf conversion: the only place tensors are put on or taken off the wire.

``tensor_to_proto`` writes the RAW codec: C-contiguous little-endian bytes (bfloat16 as its
2-byte bit pattern, bool as one 0/1 byte). ``tensor_from_proto`` checks the header (dtype,
rank, each dimension, the size limit, expected shape and dtype) BEFORE it reads the payload
and raises ``WireError`` saying what was wrong. The size limit counts a zero-length dimension
as 1, so that an empty tensor cannot carry absurd other dimensions (an empty (0, 2**40, C)
batch would still make the consumer build 2**40-position masks); ``require_finite`` rejects
NaN and infinities after decoding. Nothing is ever unpickled: payloads are plain bytes read
with ``numpy.frombuffer`` into a private copy.

Codecs other than RAW (int8/int4/fp8, lz4) plug in through ``register_decoder``; the codec
implementations live in ``edgecloud.kernels``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from edgecloud.errors import InvalidInput, LimitExceeded
from edgecloud.v1 import tensor_pb2 as pb

MAX_RANK = 16
MAX_DIM = 2**31 - 1  # any one dimension (torch indexes with int64, but no tensor here comes near)


class WireError(InvalidInput):
    """A message from the network that does not describe a valid, acceptable tensor or token list."""


class WireLimitError(WireError, LimitExceeded):
    """A message over a size limit (answered RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class _DTypeInfo:
    name: str
    torch_dtype: torch.dtype
    carrier: np.dtype  # little-endian numpy dtype holding the same bits
    carrier_torch: torch.dtype  # torch dtype of the carrier (same item size)


_DTYPES: dict[int, _DTypeInfo] = {
    pb.DTYPE_FLOAT32: _DTypeInfo("float32", torch.float32, np.dtype("<i4"), torch.int32),
    pb.DTYPE_FLOAT16: _DTypeInfo("float16", torch.float16, np.dtype("<i2"), torch.int16),
    pb.DTYPE_BFLOAT16: _DTypeInfo("bfloat16", torch.bfloat16, np.dtype("<i2"), torch.int16),
    pb.DTYPE_INT8: _DTypeInfo("int8", torch.int8, np.dtype("i1"), torch.int8),
    pb.DTYPE_UINT8: _DTypeInfo("uint8", torch.uint8, np.dtype("u1"), torch.uint8),
    pb.DTYPE_INT32: _DTypeInfo("int32", torch.int32, np.dtype("<i4"), torch.int32),
    pb.DTYPE_INT64: _DTypeInfo("int64", torch.int64, np.dtype("<i8"), torch.int64),
    pb.DTYPE_BOOL: _DTypeInfo("bool", torch.bool, np.dtype("u1"), torch.uint8),
}
_FROM_TORCH: dict[torch.dtype, int] = {info.torch_dtype: code for code, info in _DTYPES.items()}

# A decoder turns a validated message into a tensor of ``dtype`` and ``shape``. It must check
# the payload it reads (lengths, codec params) and raise WireError, and keep any output
# within ``max_bytes``.
Decoder = Callable[[pb.Tensor, torch.dtype, tuple[int, ...], int], torch.Tensor]
_DECODERS: dict[tuple[int, int], Decoder] = {}


def register_decoder(codec: int, compression: int, decoder: Decoder) -> None:
    """Make ``tensor_from_proto`` accept (codec, compression) payloads, decoded by ``decoder``."""
    if codec == pb.CODEC_RAW and compression == pb.COMPRESSION_NONE:
        raise ValueError("RAW without compression is built in")
    _DECODERS[(codec, compression)] = decoder


def dtype_to_proto(dtype: torch.dtype) -> int:
    """The wire enum value of a torch dtype; ``WireError`` if it has none."""
    try:
        return _FROM_TORCH[dtype]
    except KeyError:
        raise WireError(f"dtype {dtype} cannot be sent; supported: {_supported_names()}") from None


def dtype_from_proto(code: int) -> torch.dtype:
    """The torch dtype of a wire enum value; ``WireError`` if unknown."""
    return _dtype_info(code).torch_dtype


def tensor_to_proto(t: torch.Tensor) -> pb.Tensor:
    """Encode ``t`` (any device, layout or strides) as a RAW little-endian tensor message."""
    code = dtype_to_proto(t.dtype)
    info = _DTYPES[code]
    t = t.detach().to("cpu").contiguous()
    bits = t.view(info.carrier_torch).numpy()  # same bits, a dtype numpy knows
    payload = bits.astype(info.carrier, copy=False).tobytes()  # no-op cast on little-endian hosts
    return pb.Tensor(dtype=code, shape=list(t.shape), codec=pb.CODEC_RAW,
                     compression=pb.COMPRESSION_NONE, payload=payload, raw_nbytes=len(payload))


def tensor_from_proto(msg: pb.Tensor, *, max_bytes: int,
                      expected_shape: tuple[int | None, ...] | None = None,
                      allowed_dtypes: Iterable[torch.dtype] | None = None,
                      require_finite: bool = False) -> torch.Tensor:
    """Decode a tensor message after validating it; ``WireError`` says what is wrong.

    ``max_bytes`` bounds the decoded size (a zero-length dimension counted as 1);
    ``expected_shape`` fixes the rank and, where not None, the size of each dimension;
    ``allowed_dtypes`` restricts the element type; ``require_finite`` rejects a floating-point
    tensor holding NaN or an infinity.
    """
    info = _dtype_info(msg.dtype)
    shape = _check_shape(msg.shape, expected_shape)
    if allowed_dtypes is not None:
        allowed = set(allowed_dtypes)
        if info.torch_dtype not in allowed:
            names = ", ".join(sorted(str(d).removeprefix("torch.") for d in allowed))
            raise WireError(f"tensor dtype {info.name} is not accepted here (allowed: {names})")
    itemsize = info.carrier.itemsize
    need = math.prod(shape) * itemsize
    span = math.prod(max(d, 1) for d in shape) * itemsize  # = need unless a dimension is 0
    if span > max_bytes:
        what = f"is {need} bytes" if need == span else f"is empty but spans {span} bytes"
        raise WireLimitError(f"tensor of dtype {info.name} × shape {shape} {what}; the limit is {max_bytes}")
    if msg.raw_nbytes != need:
        raise WireError(f"tensor raw_nbytes is {msg.raw_nbytes} but dtype {info.name} × shape {shape} "
                        f"needs {need}")
    out = _decode(msg, info, shape, need, max_bytes)
    if require_finite and out.is_floating_point() and out.numel() and not bool(torch.isfinite(out).all()):
        raise WireError(f"tensor of dtype {info.name} × shape {shape} holds NaN or infinite values")
    return out


def _decode(msg: pb.Tensor, info: _DTypeInfo, shape: tuple[int, ...], need: int, max_bytes: int) -> torch.Tensor:
    if msg.codec == pb.CODEC_RAW and msg.compression == pb.COMPRESSION_NONE:
        return _decode_raw(msg.payload, info, shape, need)
    if len(msg.payload) > max_bytes:
        raise WireLimitError(f"tensor payload is {len(msg.payload)} bytes; the limit is {max_bytes}")
    decoder = _DECODERS.get((msg.codec, msg.compression))
    if decoder is None:
        raise WireError(f"codec {_codec_name(msg.codec, msg.compression)} not supported by this build")
    out = decoder(msg, info.torch_dtype, shape, max_bytes)
    if out.dtype != info.torch_dtype or tuple(out.shape) != shape:
        raise WireError(f"codec {_codec_name(msg.codec, msg.compression)} produced {out.dtype} "
                        f"{tuple(out.shape)}, expected {info.name} {shape}")
    return out


def token_ids(ids: Sequence[int], *, max_len: int, vocab_size: int | None = None,
              what: str = "token ids") -> list[int]:
    """Check a repeated token-id field: length ≤ ``max_len`` and each id in [0, vocab_size)."""
    if len(ids) > max_len:
        raise WireLimitError(f"{what}: {len(ids)} ids exceed the limit {max_len}")
    out = list(ids)
    upper = vocab_size if vocab_size is not None else 2**31
    bad = [t for t in out if not 0 <= t < upper]
    if bad:
        raise WireError(f"{what}: ids {bad[:5]} are outside [0, {upper})")
    return out


def _decode_raw(payload: bytes, info: _DTypeInfo, shape: tuple[int, ...], need: int) -> torch.Tensor:
    if len(payload) != need:
        raise WireError(f"tensor payload is {len(payload)} bytes but dtype {info.name} × shape {shape} "
                        f"needs {need}")
    bits = np.frombuffer(payload, dtype=info.carrier).astype(info.carrier.newbyteorder("="))  # a copy
    if info.torch_dtype is torch.bool and bits.size and bits.max() > 1:
        raise WireError("bool tensor payload holds bytes other than 0 and 1")
    return torch.from_numpy(bits).view(info.torch_dtype).reshape(shape)


def _dtype_info(code: int) -> _DTypeInfo:
    info = _DTYPES.get(code)
    if info is None:
        raise WireError(f"unknown tensor dtype {_enum_name(pb.DType, code)}; supported: {_supported_names()}")
    return info


def _check_shape(dims: Sequence[int], expected: tuple[int | None, ...] | None) -> tuple[int, ...]:
    if len(dims) > MAX_RANK:  # before copying: a repeated field may hold millions of entries
        raise WireLimitError(f"tensor rank {len(dims)} exceeds the limit {MAX_RANK}")
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise WireError(f"tensor shape {shape} has a negative dimension")
    if any(d > MAX_DIM for d in shape):
        raise WireLimitError(f"tensor shape {shape} has a dimension over {MAX_DIM}; the limit is {MAX_DIM} per dimension")
    if expected is not None:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + (",)" if len(expected) == 1 else ")")
        if len(shape) != len(expected):
            raise WireError(f"tensor has rank {len(shape)} (shape {shape}); expected rank {len(expected)} {want}")
        for axis, (got, exp) in enumerate(zip(shape, expected, strict=True)):
            if exp is not None and got != exp:
                raise WireError(f"tensor shape {shape} has {got} in dim {axis}; expected {want}")
    return shape


def _supported_names() -> str:
    return ", ".join(info.name for info in _DTYPES.values())


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def _codec_name(codec: int, compression: int) -> str:
    name = _enum_name(pb.Codec, codec).removeprefix("CODEC_")
    if compression != pb.COMPRESSION_NONE:
        name += "+" + _enum_name(pb.Compression, compression).removeprefix("COMPRESSION_")
    return name
