"""Activations at a split cut on the wire: ``kernels/codecs.py``'s encodings as ``edgecloud.v1.Tensor``.

``activation_to_proto(t, codec)`` writes one message: ``dtype`` and ``shape`` of ``t``, the codec as
(``Codec``, ``Compression``) and ``CodecParams`` (float32 ``scale_bytes``, ``axis``, ``group_size``,
``outlier_channels``, ``hadamard_block``, ``original_dtype``, ``encoded_nbytes``), the payload bytes.
``fp32`` of a float32 tensor is a plain RAW message, readable by ``wire.tensor_from_proto`` alone.

``activation_from_proto`` goes through ``wire.tensor_from_proto`` (dtype, shape, ``raw_nbytes``
and the size limit are checked there before any decoder runs); the decoders registered here build
an ``Encoded`` and let ``codecs.decode`` check every size before it allocates, turning its
``ValueError`` into ``WireError`` (INVALID_ARGUMENT).
"""

from __future__ import annotations

import torch

from edgecloud import wire
from edgecloud.kernels import codecs
from edgecloud.v1 import tensor_pb2 as pb
from edgecloud.wire import WireError

ACTIVATION_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_CODEC_ENUM = {"raw": pb.CODEC_RAW, "fp16": pb.CODEC_FP16, "bf16": pb.CODEC_BF16,
               "int8": pb.CODEC_INT8, "int4": pb.CODEC_INT4}
_CODEC_FORMAT = {code: fmt for fmt, code in _CODEC_ENUM.items()}
_QUANTIZED = ("int8", "int4")


def activation_to_proto(t: torch.Tensor, codec: str, *, axis: int = -1) -> pb.Tensor:
    """``t`` (float32/float16/bfloat16) encoded with ``codec`` (``codecs.CODECS``) along channel ``axis``.

    ``ValueError`` for an unknown codec or a tensor the codec cannot carry (``codecs.encode``).
    """
    return encoded_to_proto(codecs.encode(t, codec, axis=axis))


def encoded_to_proto(enc: codecs.Encoded) -> pb.Tensor:
    """The message carrying ``enc``."""
    dtype = wire.dtype_to_proto(enc.dtype)
    numel = 1
    for d in enc.shape:
        numel *= d
    msg = pb.Tensor(dtype=dtype, shape=list(enc.shape), codec=_CODEC_ENUM[enc.format],
                    compression=pb.COMPRESSION_LZ4 if enc.lz4 else pb.COMPRESSION_NONE,
                    payload=enc.payload, raw_nbytes=numel * (torch.finfo(enc.dtype).bits // 8))
    if enc.format == "raw" and not enc.lz4:
        return msg  # plain RAW: no params
    params = msg.codec_params
    params.original_dtype = dtype
    params.encoded_nbytes = enc.encoded_nbytes
    if enc.format in _QUANTIZED:
        params.scale_bytes = enc.scales
        params.scale_dtype = pb.DTYPE_FLOAT32
        params.axis = enc.axis
        params.group_size = enc.group_size
        params.outlier_channels.extend(enc.outlier_channels)
        params.hadamard_block = enc.hadamard_block
    return msg


def encoded_from_proto(msg: pb.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> codecs.Encoded:
    """The ``Encoded`` a (header-checked) message describes; ``WireError`` for params no codec uses."""
    fmt = _CODEC_FORMAT.get(msg.codec)
    if fmt is None:
        raise WireError(f"codec {msg.codec} is not an activation codec")
    params = msg.codec_params
    if params.original_dtype not in (pb.DTYPE_UNSPECIFIED, msg.dtype):
        raise WireError("codec_params.original_dtype differs from the tensor dtype")
    if len(params.scales) or params.zero_points or params.zero_point_bytes:
        raise WireError("activation codecs carry float32 scale_bytes only (no repeated scales, no zero points)")
    if len(params.outlier_channels) > codecs.MAX_OUTLIERS:  # before the repeated field is copied
        raise WireError(f"{len(params.outlier_channels)} outlier channels; at most {codecs.MAX_OUTLIERS}")
    if fmt in _QUANTIZED:
        if params.scale_dtype != pb.DTYPE_FLOAT32:
            raise WireError("activation codec scales must be FLOAT32 scale_bytes")
        if not params.HasField("axis"):
            raise WireError(f"codec {fmt} needs codec_params.axis")
        axis: int | None = params.axis
    else:
        if params.scale_bytes or params.HasField("axis") or params.group_size or params.outlier_channels \
                or params.hadamard_block:
            raise WireError(f"codec {fmt} takes no scales, axis, groups, outliers or rotation")
        axis = None
    return codecs.Encoded(fmt, dtype, shape, msg.payload, params.scale_bytes, axis, params.group_size,
                          tuple(params.outlier_channels), params.hadamard_block,
                          msg.compression == pb.COMPRESSION_LZ4, params.encoded_nbytes)


def activation_from_proto(msg: pb.Tensor, *, max_bytes: int,
                          expected_shape: tuple[int | None, ...] | None = None,
                          require_finite: bool = True) -> torch.Tensor:
    """The activation in ``msg`` (any codec of ``codecs.CODECS``), checked as ``wire.tensor_from_proto`` does.

    ``max_bytes`` bounds the decoded tensor (and the decompressed payload); ``expected_shape`` fixes
    the rank and, where not None, each dimension; NaN or infinite values (after decoding: a NaN scale
    makes a quantized payload NaN) are refused unless ``require_finite`` is False. ``WireError``
    (``WireLimitError`` over the limit).
    """
    return wire.tensor_from_proto(msg, max_bytes=max_bytes, expected_shape=expected_shape,
                                  allowed_dtypes=ACTIVATION_DTYPES, require_finite=require_finite)


def _decoder(msg: pb.Tensor, dtype: torch.dtype, shape: tuple[int, ...], max_bytes: int) -> torch.Tensor:
    if dtype not in ACTIVATION_DTYPES:
        raise WireError(f"activation codecs decode to float32/float16/bfloat16, not {dtype}")
    enc = encoded_from_proto(msg, dtype, shape)
    try:
        return codecs.decode(enc, max_bytes=max_bytes)
    except ValueError as exc:
        raise WireError(f"bad {_CODEC_FORMAT[msg.codec]} activation: {exc}") from None


for _codec in _CODEC_ENUM.values():
    for _compression in (pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4):
        if (_codec, _compression) != (pb.CODEC_RAW, pb.COMPRESSION_NONE):
            wire.register_decoder(_codec, _compression, _decoder)
