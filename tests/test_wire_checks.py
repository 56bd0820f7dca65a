"""Every received tensor is checked before use: dims, empty tensors with absurd dims, products
of dims, finite values, codec params; and hypothesis-driven messages only ever give a checked
tensor or a ``WireError``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud import activations, wire
from edgecloud.activations import activation_from_proto, activation_to_proto
from edgecloud.v1 import tensor_pb2 as pb
from edgecloud.wire import MAX_DIM, WireError, WireLimitError, tensor_from_proto, tensor_to_proto

MB = 2**20


def _with_shape(msg: pb.Tensor, shape: list[int], raw_nbytes: int | None = None) -> pb.Tensor:
    del msg.shape[:]
    msg.shape.extend(shape)
    if raw_nbytes is not None:
        msg.raw_nbytes = raw_nbytes
    return msg


@pytest.mark.parametrize("shape", [[0, 2**40, 32], [2**40, 0], [0] * 3 + [2**20] * 3, [0, MAX_DIM, MAX_DIM]])
def test_empty_tensor_cannot_carry_absurd_dims(shape: list[int]) -> None:
    msg = _with_shape(pb.Tensor(dtype=pb.DTYPE_FLOAT32, codec=pb.CODEC_RAW), shape, raw_nbytes=0)
    with pytest.raises(WireLimitError, match=r"is empty but spans|per dimension"):
        tensor_from_proto(msg, max_bytes=MB)


def test_empty_tensor_with_sane_dims_decodes() -> None:
    out = tensor_from_proto(tensor_to_proto(torch.zeros(0, 4, 8)), max_bytes=MB)
    assert out.shape == (0, 4, 8)


@pytest.mark.parametrize("dim", [MAX_DIM + 1, 2**62, 2**63 - 1])
def test_each_dimension_is_bounded(dim: int) -> None:
    msg = _with_shape(tensor_to_proto(torch.zeros(1)), [dim])
    with pytest.raises(WireLimitError, match="per dimension"):
        tensor_from_proto(msg, max_bytes=2**70)  # a limit that would not catch it


def test_product_of_dims_that_overflows_int64_is_refused() -> None:
    shape = [2**31 - 1] * 16  # product ~ 2**496: never computed in int64
    msg = _with_shape(tensor_to_proto(torch.zeros(1)), shape, raw_nbytes=0)
    with pytest.raises(WireLimitError, match="the limit is"):
        tensor_from_proto(msg, max_bytes=2**63 - 1)


def test_rank_is_checked_before_the_shape_is_copied() -> None:
    msg = _with_shape(tensor_to_proto(torch.zeros(1)), [1] * 1_000_000)
    with pytest.raises(WireLimitError, match="rank 1000000 exceeds"):
        tensor_from_proto(msg, max_bytes=MB)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_require_finite(value: float, dtype: torch.dtype) -> None:
    t = torch.ones(2, 3, dtype=dtype)
    t[1, 2] = value
    msg = tensor_to_proto(t)
    assert torch.equal(tensor_from_proto(msg, max_bytes=MB).isnan(), t.isnan())  # off by default
    with pytest.raises(WireError, match="NaN or infinite"):
        tensor_from_proto(msg, max_bytes=MB, require_finite=True)
    with pytest.raises(WireError, match="NaN or infinite"):
        activation_from_proto(msg, max_bytes=MB)  # on by default for activations
    tensor_from_proto(tensor_to_proto(torch.arange(6)), max_bytes=MB, require_finite=True)  # ints: no check


def test_quantized_activation_with_a_nan_scale_is_refused() -> None:
    msg = activation_to_proto(torch.randn(1, 4, 32), "int8-token")
    scales = bytearray(msg.codec_params.scale_bytes)
    scales[0:4] = b"\x00\x00\xc0\x7f"  # float32 NaN
    msg.codec_params.scale_bytes = bytes(scales)
    with pytest.raises(WireError, match="finite"):  # the codec checks its scales
        activation_from_proto(msg, max_bytes=MB)


def test_outlier_list_is_bounded_before_it_is_copied() -> None:
    msg = activation_to_proto(torch.randn(1, 4, 32), "int8-outlier-k2")
    msg.codec_params.outlier_channels.extend(range(3, 3 + 2**17))
    with pytest.raises(WireError, match="outlier channels; at most"):
        activation_from_proto(msg, max_bytes=MB)


# hypothesis: any message ----------------------------------------------------------------------------------

DTYPES = [*pb.DType.values(), 99, -1]
dims = st.one_of(st.integers(0, 8), st.sampled_from([2**31 - 1, 2**31, 2**40, 2**63 - 1]), st.integers(-3, -1))
messages = st.builds(
    lambda dtype, shape, codec, compression, payload, raw_nbytes, fix_nbytes: pb.Tensor(
        dtype=dtype, shape=shape, codec=codec, compression=compression, payload=payload,
        raw_nbytes=raw_nbytes if not fix_nbytes else -1),
    st.sampled_from(DTYPES), st.lists(dims, max_size=18), st.sampled_from([*pb.Codec.values(), 77]),
    st.sampled_from(list(pb.Compression.values())), st.binary(max_size=96), st.integers(0, 2**20),
    st.booleans())


def _consistent(msg: pb.Tensor) -> pb.Tensor:
    """Half the cases: raw_nbytes agrees with the header, so that the checks behind it run too."""
    if msg.raw_nbytes == -1 or msg.raw_nbytes > 2**62:
        info = wire._DTYPES.get(msg.dtype)
        size = info.carrier.itemsize if info else 1
        n = math.prod(msg.shape) * size if all(0 <= d < 2**32 for d in msg.shape) else 0
        msg.raw_nbytes = n if n < 2**63 else 0
    return msg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages, st.sampled_from([None, (None, None, 8), (2, None)]), st.booleans())
def test_any_message_gives_a_checked_tensor_or_a_wire_error(msg: pb.Tensor, expected, activation: bool) -> None:
    msg = _consistent(msg)
    try:
        if activation:
            out = activation_from_proto(msg, max_bytes=4096, expected_shape=expected)
        else:
            out = tensor_from_proto(msg, max_bytes=4096, expected_shape=expected)
    except WireError as exc:
        assert str(exc) and len(str(exc)) < 600
        return
    assert out.numel() * out.element_size() <= 4096
    assert math.prod(max(d, 1) for d in out.shape) * out.element_size() <= 4096
    assert list(out.shape) == list(msg.shape)
    assert wire.dtype_to_proto(out.dtype) == msg.dtype
    if expected is not None:
        assert len(out.shape) == len(expected)
        assert all(e is None or e == d for e, d in zip(expected, out.shape, strict=True))
    if activation:
        assert out.dtype in activations.ACTIVATION_DTYPES and bool(torch.isfinite(out).all())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["fp16", "bf16", "int8-token", "int8-channel", "int4-g8", "int8-outlier-k2", "int8-token+lz4", "int8-hadamard"]),
       st.integers(1, 3), st.integers(1, 5), st.data())
def test_mutated_activation_messages_never_escape_the_checks(codec: str, batch: int, positions: int, data) -> None:
    msg = activation_to_proto(torch.randn(batch, positions, 16), codec)
    field = data.draw(st.sampled_from(["payload", "scale_bytes", "axis", "group_size", "encoded_nbytes", "outliers"]))
    if field == "payload":
        msg.payload = data.draw(st.binary(max_size=2 * len(msg.payload) + 8))
    elif field == "scale_bytes":
        msg.codec_params.scale_bytes = data.draw(st.binary(max_size=64))
    elif field == "outliers":
        del msg.codec_params.outlier_channels[:]
        msg.codec_params.outlier_channels.extend(data.draw(st.lists(st.integers(-2, 40), max_size=6)))
    else:
        setattr(msg.codec_params, field, data.draw(st.integers(-3, 2**31 - 1)))
    try:
        out = activation_from_proto(msg, max_bytes=MB, expected_shape=(None, None, 16))
    except WireError:
        return
    assert out.shape == (batch, positions, 16) and bool(torch.isfinite(out).all())
