"""Activation codecs for split computing: the tensor at the cut, squeezed into exact wire bytes.

The edge runs a model's head; the tensor at the cut (CNN feature maps (B, C, H, W) or LLM hidden
states (B, T, hidden), float32/float16/bfloat16) crosses the network as ``encode(x, codec)``'s
``Encoded`` (payload bytes plus a few parameters); the cloud rebuilds it with ``decode``, which
checks every size BEFORE it allocates anything and raises ``ValueError`` saying what is wrong.

Codecs (``CODECS``; ``parse_codec`` reads the grammar). ``s`` is a stored float32 scale, ``a``
the absmax it came from, ``x̂`` the decoded value; "C" is the channel axis (``axis``: the hidden
dim of (B, T, hidden), dim 1 of (B, C, H, W)):

=======================  =========================================  ==============================
codec                    payload                                    error bound per element
=======================  =========================================  ==============================
``fp32``                 identity: the tensor's own bytes (RAW)     0
``fp16`` / ``bf16``      values rounded to float16 / bfloat16       |x|·2^-11 / |x|·2^-8 (normal
                                                                    range; fp16 subnormals 2^-25);
                                                                    a finite value that overflows
                                                                    is refused
``int8-channel``         int8, one scale per channel (all other     s/2, s = a/127 over the channel
                         dims reduced)
``int8-token``           int8, one scale per position (over C)      s/2, s = a/127 over the row
``int4-g{N}``            4 bits, groups of N along C (N divides C)  s/2, s = a/7 over the group
``int8-outlier[-k{K}]``  int8-token of x with the K channels of     outlier channels: fp16 rounding;
``int4-outlier[-k{K}]``  largest absmax zeroed, then those K        others s/2 with ``a`` over the
``-g{N}``                channels' values in float16 (K=8)          other channels only
``int8-hadamard``        int8-token of x rotated along C by a       per row ‖x − x̂‖₂ ≤ ½·√(Σ s_j²)
``int4-hadamard-g{N}``   block-diagonal normalised Hadamard H_b;    over the rotated elements j of
                         decoded and rotated back (H_b⁻¹ = H_b)     each block; per element
                                                                    ≤ ½·Σ_j s_j / √b
=======================  =========================================  ==============================

To the quantized bounds add float32 arithmetic, at most ``a·2^-23``, and, for a float16 or
bfloat16 tensor, the rounding of x̂ to that dtype (|x̂|·2^-11, |x̂|·2^-8). While ``s`` is
subnormal (a < 127·2^-126 for int8) the bound is ``a``. Non-finite values cannot be quantized
(``ValueError``), except in outlier channels, which carry them in float16.

Any name plus ``+lz4`` wraps the payload in one LZ4 frame (``lz4.frame``, content size in the
header, no checksum: integrity is the transport's job).

Wire layout (little-endian, C order of the tensor): int8 values, or int4 values two per byte,
element 2i in the low nibble, stored as q + 8 (q in [-7, 7]; an odd count ends with nibble 8);
then, for outlier codecs, the outlier channels' float16 values in C order of the tensor cut to
those channels. Scales (``Encoded.scales``) are float32 in C order of (channels,) per channel, or
(pre, C/N, post) by group (pre/post: the dims before/after C). Hadamard H_b for b = 2^n is
Sylvester's, H[i, j] = (-1)^popcount(i & j) / √b, applied to each block of b consecutive channels;
b is the largest power of two dividing C (1536 = 3·512: b = 512; 896 = 7·128: b = 128), at most
``MAX_HADAMARD_BLOCK``.

Each fast path sits beside a plain reference (``encode_reference``, ``decode_reference``); the
int8/int4 bytes agree exactly; the Hadamard rotation agrees to float32 rounding.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import sys
from dataclasses import dataclass

import lz4.frame
import numpy as np
import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
FORMATS = ("raw", "fp16", "bf16", "int8", "int4")
DEFAULT_OUTLIERS = 8
MAX_OUTLIERS = 1 << 16
MAX_GROUP = 1 << 16
MAX_HADAMARD_BLOCK = 1 << 14
MAX_RANK = 16
DEFAULT_MAX_BYTES = 1 << 30
_QMAX = {"int8": 127, "int4": 7}
_SMALLEST_NORMAL = 2.0 ** -126
_LITTLE_ENDIAN = sys.byteorder == "little"

_BASE_CODECS = ("fp32", "fp16", "bf16", "int8-channel", "int8-token", "int4-g32", "int4-g64", "int4-g128",
                "int8-outlier", "int4-outlier-g128", "int8-hadamard", "int4-hadamard-g128")
CODECS: tuple[str, ...] = _BASE_CODECS + tuple(name + "+lz4" for name in _BASE_CODECS)
_GRAMMAR = "fp32|fp16|bf16|int8-channel|int8-token|int4-g{N}|int8-outlier[-k{K}]|int4-outlier[-k{K}]-g{N}|" \
           "int8-hadamard|int4-hadamard-g{N}, each optionally +lz4"
_NAME = re.compile(r"(?P<cast>fp32|fp16|bf16)"
                   r"|int8-(?:(?P<i8>channel|token|hadamard)|outlier(?:-k(?P<k8>\d{1,6}))?)"
                   r"|int4-(?:(?P<i4h>hadamard)-|outlier(?:-k(?P<k4>\d{1,6}))?-(?P<o4>))?g(?P<g>\d{1,6})")


@dataclass(frozen=True)
class CodecSpec:
    """A parsed codec name: what ``encode`` does."""

    name: str  # canonical name
    format: str  # one of FORMATS
    scope: str = ""  # int: "channel" | "token" | "group"
    group_size: int = 0  # values per scale for scope "group"
    outliers: int = 0  # channels kept aside in float16
    hadamard: bool = False
    lz4: bool = False


@dataclass(frozen=True)
class Encoded:
    """One encoded tensor: exactly the bytes and parameters that go on the wire."""

    format: str  # one of FORMATS
    dtype: torch.dtype  # of the tensor before encoding, restored by decode
    shape: tuple[int, ...]
    payload: bytes  # codec output, inside one LZ4 frame when ``lz4``
    scales: bytes = b""  # float32 little-endian
    axis: int | None = None  # channel axis (non-negative) of the int formats
    group_size: int = 0  # int: 0 = one scale per channel, N = one per N consecutive values along axis
    outlier_channels: tuple[int, ...] = ()
    hadamard_block: int = 0
    lz4: bool = False
    encoded_nbytes: int = 0  # payload size before compression

    @property
    def nbytes(self) -> int:
        """Bytes that cross the wire: payload, scales, outlier indices (4 each); protobuf framing aside."""
        return len(self.payload) + len(self.scales) + 4 * len(self.outlier_channels)


@dataclass(frozen=True)
class _Layout:
    numel: int
    pre: int
    size: int  # of the channel axis
    post: int
    nscales: int
    values_nbytes: int
    outlier_nbytes: int

    @property
    def nbytes(self) -> int:
        return self.values_nbytes + self.outlier_nbytes


# ---- names ----

def parse_codec(name: str | CodecSpec) -> CodecSpec:
    """The ``CodecSpec`` of a codec name; ``ValueError`` listing the supported names for anything else."""
    if isinstance(name, CodecSpec):
        return name
    if not isinstance(name, str) or len(name) > 64:
        raise ValueError(f"a codec name is a short string; supported: {', '.join(CODECS)}")
    base, lz4_suffix = (name[:-4], True) if name.endswith("+lz4") else (name, False)
    m = _NAME.fullmatch(base)
    if m is None:
        raise ValueError(f"unknown codec {name[:64]!r}; supported: {', '.join(CODECS)} (grammar: {_GRAMMAR})")
    suffix = "+lz4" if lz4_suffix else ""
    if m["cast"]:
        fmt = {"fp32": "raw", "fp16": "fp16", "bf16": "bf16"}[m["cast"]]
        return CodecSpec(m["cast"] + suffix, fmt, lz4=lz4_suffix)
    if m["i8"] in ("channel", "token"):
        return CodecSpec(f"int8-{m['i8']}{suffix}", "int8", m["i8"], lz4=lz4_suffix)
    if m["i8"] == "hadamard":
        return CodecSpec("int8-hadamard" + suffix, "int8", "token", hadamard=True, lz4=lz4_suffix)
    if base.startswith("int8-outlier"):
        k = _bounded(m["k8"], DEFAULT_OUTLIERS, MAX_OUTLIERS, "outlier count K", name)
        return CodecSpec(f"int8-outlier{_k(k)}{suffix}", "int8", "token", outliers=k, lz4=lz4_suffix)
    g = _bounded(m["g"], 0, MAX_GROUP, "group size N", name)
    if m["i4h"]:
        return CodecSpec(f"int4-hadamard-g{g}{suffix}", "int4", "group", g, hadamard=True, lz4=lz4_suffix)
    if m["o4"] is not None:
        k = _bounded(m["k4"], DEFAULT_OUTLIERS, MAX_OUTLIERS, "outlier count K", name)
        return CodecSpec(f"int4-outlier{_k(k)}-g{g}{suffix}", "int4", "group", g, outliers=k, lz4=lz4_suffix)
    return CodecSpec(f"int4-g{g}{suffix}", "int4", "group", g, lz4=lz4_suffix)


def _bounded(text: str | None, default: int, upper: int, what: str, name: str) -> int:
    value = default if text is None else int(text)
    if not 1 <= value <= upper:
        raise ValueError(f"codec {name!r}: {what} must be in [1, {upper}]")
    return value


def _k(k: int) -> str:
    return "" if k == DEFAULT_OUTLIERS else f"-k{k}"


# ---- encode ----

def encode(x: torch.Tensor, codec: str | CodecSpec, *, axis: int = -1) -> Encoded:
    """``x`` (float32/float16/bfloat16, any shape) encoded with ``codec``; ``axis`` is the channel axis.

    ``ValueError`` for an unknown codec, a shape the codec cannot take (group size not dividing
    the channels, a rank-0 tensor for an int codec) or values it cannot carry (see the module doc).
    """
    return _encode(x, parse_codec(codec), axis, fast=True)


def encode_reference(x: torch.Tensor, codec: str | CodecSpec, *, axis: int = -1) -> Encoded:
    """``encode`` in plain PyTorch (the reference the fast path is tested against)."""
    return _encode(x, parse_codec(codec), axis, fast=False)


def _encode(x: torch.Tensor, spec: CodecSpec, axis: int, fast: bool) -> Encoded:
    if not isinstance(x, torch.Tensor) or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"activation codecs take float32/float16/bfloat16 tensors, not {getattr(x, 'dtype', x)!r}")
    if x.dim() > MAX_RANK:
        raise ValueError(f"tensor rank {x.dim()} exceeds {MAX_RANK}")
    x = x.detach().to("cpu").contiguous()
    shape = tuple(x.shape)
    if spec.format in ("raw", "fp16", "bf16"):
        payload = _cast_payload(x, spec.format)
        return _finish(Encoded(spec.format, x.dtype, shape, payload), spec.lz4)
    if x.dim() == 0:
        raise ValueError(f"codec {spec.name} needs a tensor with a channel axis (got a 0-d scalar)")
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {x.dim()}")
    axis %= x.dim()
    size = shape[axis]
    group = {"channel": 0, "token": size}.get(spec.scope, spec.group_size)
    if group and size % group:
        raise ValueError(f"codec {spec.name}: group size {group} does not divide the {size} channels (axis {axis})")
    xf = x.float()  # (…, C, …); shares x's memory when x is float32
    block = 0
    if spec.hadamard:
        block = hadamard_block(size)
        xf = (hadamard_rotate if fast else hadamard_rotate_reference)(xf, axis, block)
    channels: tuple[int, ...] = ()
    kept = b""
    if spec.outliers:
        if spec.outliers >= size:
            raise ValueError(f"codec {spec.name}: {spec.outliers} outlier channels of only {size}")
        channels = outlier_channels(xf, axis, spec.outliers)
        index = torch.tensor(channels, dtype=torch.long)
        values = xf.index_select(axis, index)  # (…, K, …)
        kept16 = values.to(torch.float16)
        _check_cast(values, kept16, "outlier values")
        kept = _le_bytes(kept16)
        xf = xf.clone() if xf.data_ptr() == x.data_ptr() else xf
        xf.index_fill_(axis, index, 0.0)
    qmax = _QMAX[spec.format]
    if fast:  # xf may be overwritten unless it is the caller's tensor
        q, scales = quantize(xf, axis, group, qmax, overwrite=xf.data_ptr() != x.data_ptr())  # (…, C, …), (n,)
    else:
        q, scales = quantize_reference(xf, axis, group, qmax)
    if scales.numel() and not bool(torch.isfinite(scales).all()):
        raise ValueError(f"codec {spec.name} cannot quantize non-finite values (inf/nan outside outlier channels)")
    if spec.format == "int4":
        values_bytes = (pack_int4 if fast and _LITTLE_ENDIAN else pack_int4_reference)(q)
    else:
        values_bytes = q.reshape(-1)
    payload = values_bytes.numpy().tobytes() + kept
    enc = Encoded(spec.format, x.dtype, shape, payload, _le_bytes(scales), axis, group, channels, block)
    return _finish(enc, spec.lz4)


def _finish(enc: Encoded, compress: bool) -> Encoded:
    n = len(enc.payload)
    payload = lz4.frame.compress(enc.payload, store_size=True) if compress else enc.payload
    return Encoded(enc.format, enc.dtype, enc.shape, payload, enc.scales, enc.axis, enc.group_size,
                   enc.outlier_channels, enc.hadamard_block, compress, n)


def _cast_payload(x: torch.Tensor, fmt: str) -> bytes:
    if fmt == "raw":
        return _le_bytes(x)
    y = x.to(torch.float16 if fmt == "fp16" else torch.bfloat16)
    _check_cast(x, y, "values")
    return _le_bytes(y)


def _check_cast(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """ValueError if rounding ``x`` to ``y``'s (16-bit) dtype turned a finite value into ±inf."""
    if x.dtype == y.dtype or not x.numel():
        return
    exponent = 0x7C00 if y.dtype == torch.float16 else 0x7F80  # all ones: inf or nan
    if int((y.view(torch.int16) & 0x7FFF).amax()) < exponent:  # one pass over the bits (isinf is slow on halves)
        return
    if bool((y.isinf() & x.isfinite()).any()):
        raise ValueError(f"{what} overflow {str(y.dtype).removeprefix('torch.')} (|x| > {torch.finfo(y.dtype).max:g})")


def outlier_channels(xf: torch.Tensor, axis: int, k: int) -> tuple[int, ...]:
    """The ``k`` channels along ``axis`` with the largest absmax (ties: the lower index), ascending."""
    dims = tuple(d for d in range(xf.dim()) if d != axis)
    if xf.numel() == 0:
        return tuple(range(k))
    absmax = torch.maximum(xf.amax(dim=dims), xf.amin(dim=dims).neg()) if dims else xf.abs()  # (C,)
    order = torch.sort(absmax, descending=True, stable=True).indices[:k]
    return tuple(sorted(order.tolist()))


# ---- quantizers: reference and fast (same arithmetic: s = a/qmax, q = round_half_even(x / s)) ----

def _grouped_shape(shape: tuple[int, ...], axis: int, group: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The view that puts each scale's values on reduce dims, and those dims."""
    pre, size, post = math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:])
    if group == 0:
        return (pre, size, post), (0, 2)  # scales (1, C, 1)
    if post == 1:
        return (pre * (size // group), group), (1,)  # scales (rows, 1)
    return (pre, size // group, group, post), (2,)  # scales (pre, C/N, 1, post)


def _scale_count(shape: tuple[int, ...], axis: int, group: int) -> int:
    return shape[axis] if group == 0 else math.prod(shape) // group


def quantize_reference(xf: torch.Tensor, axis: int, group: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of float32 ``xf``: int8 codes (shape of xf) and float32 scales (flat)."""
    view, dims = _grouped_shape(tuple(xf.shape), axis, group)
    if xf.numel() == 0:
        return torch.zeros(xf.shape, dtype=torch.int8), torch.zeros(_scale_count(tuple(xf.shape), axis, group))
    v = xf.reshape(view)
    scale = v.abs().amax(dim=dims, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(v / safe), -qmax, qmax).to(torch.int8)
    return q.reshape(xf.shape), scale.reshape(-1)


def quantize(xf: torch.Tensor, axis: int, group: int, qmax: int, *,
             overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_reference`` in fewer passes: absmax as max(amax, −amin) (no |x| temporary), the
    division rounded in place (in ``xf`` itself when ``overwrite``: one large buffer fewer to fault
    in), no clamp while every scale is normal (|x/s| ≤ qmax·(1 + 2^-23))."""
    view, dims = _grouped_shape(tuple(xf.shape), axis, group)
    if xf.numel() == 0:
        return quantize_reference(xf, axis, group, qmax)
    v = xf.reshape(view)
    absmax = v.amax(dim=dims, keepdim=True)
    absmax = torch.maximum(absmax, v.amin(dim=dims, keepdim=True).neg_(), out=absmax)
    scale = absmax.div_(qmax)
    safe = torch.where(scale > 0, scale, 1.0)
    q = v.div_(safe) if overwrite else torch.div(v, safe)
    q.round_()
    if bool((scale < _SMALLEST_NORMAL).any()):  # subnormal scales (or zero): x/s may exceed qmax
        q.clamp_(-qmax, qmax)
    return q.to(torch.int8).reshape(xf.shape), scale.reshape(-1)


def dequantize_reference(q: torch.Tensor, scales: torch.Tensor, axis: int, group: int) -> torch.Tensor:
    """float32 values of int codes ``q`` (shape of the tensor) and their flat float32 scales."""
    shape = tuple(q.shape)
    if q.numel() == 0:
        return torch.zeros(shape)
    view, dims = _grouped_shape(shape, axis, group)
    s = scales.reshape([1 if d in dims else n for d, n in enumerate(view)])
    return (q.to(torch.float32).reshape(view) * s).reshape(shape)


def dequantize(q: torch.Tensor, scales: torch.Tensor, axis: int, group: int, offset: int = 0) -> torch.Tensor:
    """``dequantize_reference`` in one float32 buffer scaled in place (``q`` itself when it is float32:
    the caller's codes are consumed); ``offset`` is subtracted first (unpacked int4 nibbles are q + 8)."""
    shape = tuple(q.shape)
    if q.numel() == 0:
        return torch.zeros(shape)
    view, dims = _grouped_shape(shape, axis, group)
    s = scales.reshape([1 if d in dims else n for d, n in enumerate(view)])
    out = q.to(torch.float32)
    if offset:
        out.sub_(offset)
    out.view(view).mul_(s)
    return out


def pack_int4_reference(q: torch.Tensor) -> torch.Tensor:
    """int4 codes (int8 in [-7, 7], any shape) as bytes (uint8, ceil(n/2)): q + 8, element 2i low nibble."""
    u = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if u.numel() % 2:
        u = torch.cat([u, torch.full((1,), 8, dtype=torch.uint8)])
    return u[0::2] | (u[1::2] << 4)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``pack_int4_reference`` in 16-bit words (little-endian hosts): w = lo | hi << 8, byte = w | w >> 4."""
    flat = q.reshape(-1)
    if flat.numel() % 2:
        flat = torch.cat([flat, torch.zeros(1, dtype=torch.int8)])
    words = (flat + 8).view(torch.int16)  # (n/2,) lo | hi << 8, both in [1, 15]
    packed = torch.bitwise_right_shift(words, 4)
    packed.bitwise_or_(words)
    return packed.to(torch.uint8)  # the low byte: lo | hi << 4


def unpack_int4_reference(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """int4 codes (int8 in [-8, 7], (numel,)) from ``pack_int4`` bytes."""
    pairs = torch.stack([packed & 0x0F, packed >> 4], dim=1).reshape(-1)[:numel]  # (numel,)
    return (pairs.to(torch.int16) - 8).to(torch.int8)


def unpack_int4_offset(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The nibbles of ``packed`` (its bytes as uint8, or already widened to int16) as uint8 q + 8, (numel,):
    w = b << 4 | b masked with 0x0F0F is lo | hi << 8, read back as bytes (little-endian hosts)."""
    b = packed.to(torch.int16)
    words = torch.bitwise_left_shift(b, 4)
    words.bitwise_or_(b).bitwise_and_(0x0F0F)  # (n,) lo | hi << 8
    return words.view(torch.uint8)[:numel]


# ---- Hadamard rotation ----

def hadamard_block(size: int) -> int:
    """The block of the rotation along a channel axis of ``size``: its largest power-of-two divisor, capped."""
    block = min(size & -size, MAX_HADAMARD_BLOCK) if size > 0 else 0
    if block < 2:
        raise ValueError(f"a Hadamard rotation needs an even channel count (got {size})")
    return block


@functools.lru_cache(maxsize=32)
def hadamard_matrix(n: int) -> torch.Tensor:
    """Normalised Sylvester Hadamard matrix (n, n), n a power of two: (-1)^popcount(i & j) / √n. Shared: do not modify."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size must be a power of two (got {n})")
    i = torch.arange(n)
    bits = i[:, None] & i[None, :]  # (n, n)
    parity = torch.zeros(n, n, dtype=torch.int64)
    for shift in range(n.bit_length()):
        parity ^= (bits >> shift) & 1
    return ((1 - 2 * parity).double() / math.sqrt(n)).float()


def hadamard_rotate_reference(xf: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """``xf`` (float32) rotated by the block-diagonal H_block along ``axis``: a dense matmul per block."""
    moved = xf.movedim(axis, -1)
    y = moved.reshape(-1, block) @ hadamard_matrix(block)  # (rows·C/b, b)
    return y.reshape(moved.shape).movedim(-1, axis).contiguous()


def hadamard_rotate(xf: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """``hadamard_rotate_reference`` through H_b = H_b1 ⊗ H_b2 (b1·b2 = b, b1 ≈ b2 ≈ √b): two small matmuls,
    (b1 + b2) instead of b multiply-adds per value. Its own inverse."""
    moved = xf.movedim(axis, -1)
    n = block.bit_length() - 1
    b2 = 1 << (n // 2)
    b1 = block // b2
    y = moved.reshape(-1, b1, b2)  # (rows·C/b, b1, b2): channel i = i1·b2 + i2
    if b2 > 1:
        y = torch.matmul(y, hadamard_matrix(b2))
    if b1 > 1:
        y = torch.matmul(hadamard_matrix(b1), y)
    return y.reshape(moved.shape).movedim(-1, axis).contiguous()


# ---- decode ----

def decode(enc: Encoded, *, max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """The tensor (original dtype and shape) of ``enc``; every size is checked first (``check_encoded``)."""
    return _decode(enc, max_bytes, fast=True)


def decode_reference(enc: Encoded, *, max_bytes: int = DEFAULT_MAX_BYTES) -> torch.Tensor:
    """``decode`` in plain PyTorch."""
    return _decode(enc, max_bytes, fast=False)


def check_encoded(enc: Encoded, max_bytes: int) -> _Layout:
    """The payload layout ``enc`` must have; ``ValueError`` naming the first inconsistency. Allocates nothing."""
    if enc.format not in FORMATS:
        raise ValueError(f"unknown codec format {str(enc.format)[:32]!r}; known: {', '.join(FORMATS)}")
    if enc.dtype not in FLOAT_DTYPES:
        raise ValueError(f"activation codecs decode to float32/float16/bfloat16, not {enc.dtype}")
    shape = enc.shape
    if len(shape) > MAX_RANK:
        raise ValueError(f"tensor rank {len(shape)} exceeds {MAX_RANK}")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise ValueError(f"tensor shape {shape} has a negative or non-integer dimension")
    numel = math.prod(shape)
    itemsize = torch.finfo(enc.dtype).bits // 8
    if numel * itemsize > max_bytes:
        raise ValueError(f"{enc.dtype} × shape {shape} is {numel * itemsize} bytes; the limit is {max_bytes}")
    if enc.format in ("raw", "fp16", "bf16"):
        if enc.scales or enc.axis is not None or enc.group_size or enc.outlier_channels or enc.hadamard_block:
            raise ValueError(f"codec {enc.format} takes no scales, axis, groups, outliers or rotation")
        width = itemsize if enc.format == "raw" else 2
        layout = _Layout(numel, 1, numel, 1, 0, numel * width, 0)
    else:
        layout = _check_int(enc, shape, numel)
    if layout.nbytes > max_bytes:
        raise ValueError(f"codec payload of {layout.nbytes} bytes exceeds the limit {max_bytes}")
    if enc.encoded_nbytes != layout.nbytes:
        raise ValueError(f"encoded_nbytes is {enc.encoded_nbytes} but {enc.format} of {enc.dtype} × {shape} "
                         f"takes {layout.nbytes}")
    if not enc.lz4 and len(enc.payload) != layout.nbytes:
        raise ValueError(f"payload is {len(enc.payload)} bytes; {enc.format} of shape {shape} takes {layout.nbytes}")
    if enc.lz4 and len(enc.payload) > _lz4_bound(layout.nbytes):
        raise ValueError(f"lz4 payload of {len(enc.payload)} bytes is larger than any frame of {layout.nbytes} bytes")
    return layout


def _check_int(enc: Encoded, shape: tuple[int, ...], numel: int) -> _Layout:
    if not shape:
        raise ValueError(f"codec {enc.format} needs a tensor with a channel axis (got a 0-d scalar)")
    axis = enc.axis
    if not isinstance(axis, int) or not 0 <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {len(shape)}")
    size = shape[axis]
    group = enc.group_size
    if not isinstance(group, int) or group < 0 or (group and size % group):
        raise ValueError(f"group size {group} does not divide the {size} channels along axis {axis}")
    nscales = _scale_count(shape, axis, group)
    if len(enc.scales) != 4 * nscales:
        raise ValueError(f"{len(enc.scales)} bytes of scales; {enc.format} groups of {group or 'channel'} along "
                         f"axis {axis} of shape {shape} need {nscales} float32 scales ({4 * nscales} bytes)")
    k = len(enc.outlier_channels)
    if k:
        if k >= size:
            raise ValueError(f"{k} outlier channels of only {size}")
        chans = enc.outlier_channels
        if any(not isinstance(c, int) for c in chans) or chans[0] < 0 or chans[-1] >= size \
                or any(a >= b for a, b in itertools.pairwise(chans)):
            raise ValueError(f"outlier channels must be ascending, distinct and in [0, {size})")
    block = enc.hadamard_block
    if block:
        if k:
            raise ValueError("a codec does not both rotate and keep outlier channels")
        if not isinstance(block, int) or block < 2 or block & (block - 1) or block > MAX_HADAMARD_BLOCK \
                or size % block:
            raise ValueError(f"Hadamard block {block} is not a power of two in [2, {MAX_HADAMARD_BLOCK}] "
                             f"dividing the {size} channels")
    values = numel if enc.format == "int8" else (numel + 1) // 2
    rows = numel // size if size else 0
    return _Layout(numel, math.prod(shape[:axis]), size, math.prod(shape[axis + 1:]), nscales, values, 2 * rows * k)


_LZ4_MAX_RATIO = 256  # LZ4 spends at least one byte per 255 bytes of a match


def _lz4_bound(n: int) -> int:
    """Largest LZ4 frame of ``n`` bytes we accept: incompressible blocks plus headers, generously."""
    return n + n // 64 + 1024


def _lz4_decompress(frame: bytes, size: int) -> bytes:
    """The ``size`` bytes in one LZ4 frame; never produces more (``max_length``)."""
    try:
        info = lz4.frame.get_frame_info(frame)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"payload is not an lz4 frame ({exc})") from None
    claimed = info.get("content_size") or 0
    if claimed and claimed != size:
        raise ValueError(f"lz4 frame claims {claimed} bytes; the codec payload is {size}")
    if size > _LZ4_MAX_RATIO * len(frame) + 4096:  # before the output buffer (size + 1 bytes) exists
        raise ValueError(f"an lz4 frame of {len(frame)} bytes cannot hold the {size} bytes of the codec payload")
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        data = decompressor.decompress(frame, max_length=size + 1)  # one more shows a frame that holds more
    except RuntimeError as exc:
        raise ValueError(f"bad lz4 frame ({exc})") from None
    if len(data) > size:
        raise ValueError(f"lz4 frame holds more than the {size} bytes of the codec payload")
    if len(data) < size or not decompressor.eof:
        raise ValueError(f"lz4 frame is truncated or holds fewer than the {size} bytes of the codec payload")
    if decompressor.unused_data:
        raise ValueError("bytes after the end of the lz4 frame")
    return data


def _decode(enc: Encoded, max_bytes: int, fast: bool) -> torch.Tensor:
    layout = check_encoded(enc, max_bytes)
    data = _lz4_decompress(enc.payload, layout.nbytes) if enc.lz4 else enc.payload
    shape = enc.shape
    if enc.format in ("raw", "fp16", "bf16"):
        carried = {"raw": enc.dtype, "fp16": torch.float16, "bf16": torch.bfloat16}[enc.format]
        return _read(data, carried, layout.numel, enc.dtype).reshape(shape)
    axis, group = enc.axis, enc.group_size
    scales = _read(enc.scales, torch.float32, layout.nscales)
    if scales.numel() and not bool((torch.isfinite(scales) & (scales >= 0)).all()):
        raise ValueError("scales must be finite and non-negative")
    raw = memoryview(data)[:layout.values_nbytes]
    if enc.format == "int8" and fast:
        codes = _read(raw, torch.int8, layout.numel, torch.float32).reshape(shape)  # scaled in place
        out = dequantize(codes, scales, axis, group)
    elif enc.format == "int8":
        out = dequantize_reference(_read(raw, torch.int8, layout.numel).reshape(shape), scales, axis, group)
    elif fast and _LITTLE_ENDIAN:
        words = _read(raw, torch.uint8, layout.values_nbytes, torch.int16)
        u = unpack_int4_offset(words, layout.numel)
        out = dequantize(u.reshape(shape), scales, axis, group, offset=8)
    else:
        q = unpack_int4_reference(_read(raw, torch.uint8, layout.values_nbytes), layout.numel)
        out = dequantize_reference(q.reshape(shape), scales, axis, group)
    if enc.outlier_channels:
        kept_shape = (*shape[:axis], len(enc.outlier_channels), *shape[axis + 1:])
        kept = _read(memoryview(data)[layout.values_nbytes:], torch.float16, layout.outlier_nbytes // 2, torch.float32)
        index = torch.tensor(enc.outlier_channels, dtype=torch.long)
        out.index_copy_(axis, index, kept.reshape(kept_shape))
    if enc.hadamard_block:
        out = (hadamard_rotate if fast else hadamard_rotate_reference)(out, axis, enc.hadamard_block)
    return out.to(enc.dtype)


# ---- bytes ----

_CARRIER = {torch.float32: np.dtype("<i4"), torch.float16: np.dtype("<i2"), torch.bfloat16: np.dtype("<i2"),
            torch.int16: np.dtype("<i2"),
            torch.int8: np.dtype("i1"), torch.uint8: np.dtype("u1")}
_CARRIER_TORCH = {4: torch.int32, 2: torch.int16, 1: torch.uint8}
_NO_VIEW = (torch.int8, torch.uint8, torch.int16)


def _le_bytes(t: torch.Tensor) -> bytes:
    """Little-endian C-order bytes of ``t``."""
    t = t.contiguous()
    carrier = _CARRIER[t.dtype]
    bits = t.numpy() if t.dtype in _NO_VIEW else t.view(_CARRIER_TORCH[carrier.itemsize]).numpy()
    return bits.astype(carrier, copy=False).tobytes()


def _read(buffer: bytes | memoryview, dtype: torch.dtype, count: int, as_dtype: torch.dtype | None = None) -> torch.Tensor:
    """(count,) values of ``dtype`` from little-endian ``buffer`` in a fresh tensor, as ``as_dtype`` if given.

    The bytes are read by numpy into memory of our own (torch would wrap the read-only buffer, and
    warn); int8 → float32 and uint8 → int16 are converted in that same pass.
    """
    target = as_dtype or dtype
    if count == 0:
        return torch.empty(0, dtype=target)
    if (dtype, target) in _NUMPY_CONVERSIONS:
        return torch.from_numpy(np.frombuffer(buffer, dtype=_CARRIER[dtype], count=count)
                                .astype(_NUMPY_CONVERSIONS[dtype, target]))
    carrier = _CARRIER[dtype]
    bits = np.frombuffer(buffer, dtype=carrier, count=count).astype(carrier.newbyteorder("="))  # a copy
    values = torch.from_numpy(bits).view(dtype)
    return values if target == dtype else values.to(target)


_NUMPY_CONVERSIONS = {(torch.int8, torch.float32): np.float32, (torch.uint8, torch.int16): np.int16}
