"""Tensor wire format: exact round trips, and every malformed message rejected with a clear WireError."""

from __future__ import annotations

import pytest
import torch

from edgecloud import wire
from edgecloud.v1 import tensor_pb2 as pb
from edgecloud.wire import WireError, tensor_from_proto, tensor_to_proto

ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
              torch.int32, torch.int64, torch.bool]
MB = 2**20


def _sample(dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype is torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g).to(dtype)
        if t.numel() >= 3:  # special values survive too
            t.view(-1)[:3] = torch.tensor([float("inf"), float("-inf"), -0.0]).to(dtype)
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=torch.int64).to(dtype)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        carrier = {2: torch.int16, 4: torch.int32}[a.element_size()]
        return torch.equal(a.contiguous().view(carrier), b.contiguous().view(carrier))
    return torch.equal(a, b)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (5,), (2, 3, 4)], ids=str)
def test_round_trip_exact(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    t = _sample(dtype, shape)
    msg = tensor_to_proto(t)
    assert msg.codec == pb.CODEC_RAW and msg.raw_nbytes == t.numel() * t.element_size()
    back = tensor_from_proto(pb.Tensor.FromString(msg.SerializeToString()), max_bytes=MB)
    assert _same(back, t)


def test_bfloat16_keeps_its_bits_and_nan() -> None:
    t = torch.tensor([1.0, float("nan"), 3.140625, -2.5e-8], dtype=torch.bfloat16)
    msg = tensor_to_proto(t)
    assert msg.payload == t.view(torch.int16).numpy().astype("<i2").tobytes()
    assert _same(tensor_from_proto(msg, max_bytes=MB), t)


def test_little_endian_layout() -> None:
    msg = tensor_to_proto(torch.tensor([1, 256], dtype=torch.int32))
    assert msg.payload == b"\x01\x00\x00\x00\x00\x01\x00\x00"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool], ids=str)
def test_non_contiguous_input(dtype: torch.dtype) -> None:
    base = _sample(dtype, (4, 6))
    for view in (base.t(), base[:, ::2], base[::2, 1:], base.unsqueeze(0).transpose(0, 2)):
        assert not view.is_contiguous()
        assert _same(tensor_from_proto(tensor_to_proto(view), max_bytes=MB), view.contiguous())


def test_decoded_tensor_owns_its_memory() -> None:
    msg = tensor_to_proto(torch.arange(6, dtype=torch.float32))
    out = tensor_from_proto(msg, max_bytes=MB)
    out += 1  # writable, and independent of the message
    assert tensor_from_proto(msg, max_bytes=MB).tolist() == [0, 1, 2, 3, 4, 5]


def test_requires_grad_input() -> None:
    t = torch.ones(3, requires_grad=True)
    assert _same(tensor_from_proto(tensor_to_proto(t), max_bytes=MB), torch.ones(3))


def test_unsupported_send_dtype() -> None:
    with pytest.raises(WireError, match="cannot be sent"):
        tensor_to_proto(torch.zeros(2, dtype=torch.float64))


def _msg(**fields) -> pb.Tensor:
    msg = tensor_to_proto(torch.zeros(2, 2))
    for name, value in fields.items():
        if name == "shape":
            del msg.shape[:]
            msg.shape.extend(value)
        else:
            setattr(msg, name, value)
    return msg


@pytest.mark.parametrize(("msg", "kwargs", "message"), [
    (_msg(payload=b"\x00" * 12, raw_nbytes=16), {},
     r"tensor payload is 12 bytes but dtype float32 × shape \(2, 2\) needs 16"),
    (_msg(payload=b"\x00" * 20, raw_nbytes=16), {}, "payload is 20 bytes"),
    (_msg(dtype=pb.DTYPE_UNSPECIFIED), {}, "unknown tensor dtype DTYPE_UNSPECIFIED"),
    (_msg(dtype=99), {}, "unknown tensor dtype 99"),
    (_msg(shape=[2, -2]), {}, "negative dimension"),
    (_msg(shape=[1] * 17), {}, "rank 17 exceeds the limit 16"),
    (_msg(raw_nbytes=0), {}, r"raw_nbytes is 0 but dtype float32 × shape \(2, 2\) needs 16"),
    (_msg(), {"max_bytes": 8}, "is 16 bytes; the limit is 8"),
    (_msg(shape=[2**40, 2**40], raw_nbytes=0), {}, "the limit is"),
    (_msg(), {"expected_shape": (2, 2, 1)}, r"rank 2 \(shape \(2, 2\)\); expected rank 3 \(2, 2, 1\)"),
    (_msg(), {"expected_shape": (None, 3)}, r"has 2 in dim 1; expected \(\*, 3\)"),
    (_msg(), {"allowed_dtypes": {torch.bfloat16, torch.float16}},
     r"dtype float32 is not accepted here \(allowed: bfloat16, float16\)"),
    (_msg(codec=pb.CODEC_FP8), {}, "codec FP8 not supported by this build"),
    (_msg(compression=2), {}, r"codec RAW\+2 not supported by this build"),
    (_msg(codec=42), {}, "codec 42 not supported"),
], ids=lambda v: "" if not isinstance(v, str) else v[:30])
def test_validation_errors(msg: pb.Tensor, kwargs: dict, message: str) -> None:
    kwargs = {"max_bytes": MB, **kwargs}
    with pytest.raises(WireError, match=message):
        tensor_from_proto(msg, **kwargs)


def test_expected_shape_and_dtype_accept() -> None:
    t = torch.zeros(3, 5, dtype=torch.bfloat16)
    out = tensor_from_proto(tensor_to_proto(t), max_bytes=MB, expected_shape=(None, 5),
                            allowed_dtypes={torch.bfloat16})
    assert out.shape == (3, 5)


def test_bool_payload_must_be_zero_or_one() -> None:
    msg = tensor_to_proto(torch.tensor([True, False]))
    msg.payload = b"\x01\x07"
    with pytest.raises(WireError, match="other than 0 and 1"):
        tensor_from_proto(msg, max_bytes=MB)


def test_wire_error_is_a_value_error() -> None:
    assert issubclass(WireError, ValueError)


def test_codec_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    """A registered decoder is used for its (codec, compression) after the header checks."""
    monkeypatch.setattr(wire, "_DECODERS", {})

    def decode(msg: pb.Tensor, dtype: torch.dtype, shape: tuple[int, ...], max_bytes: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(msg.payload), dtype=torch.int8).to(dtype)  # flat: the caller checks the shape

    wire.register_decoder(pb.CODEC_INT8, pb.COMPRESSION_NONE, decode)
    msg = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[2], codec=pb.CODEC_INT8, payload=b"\x01\xff", raw_nbytes=8)
    assert tensor_from_proto(msg, max_bytes=MB).tolist() == [1.0, -1.0]
    msg.shape[:] = [3]
    msg.raw_nbytes = 12
    with pytest.raises(WireError, match=r"produced torch.float32 \(2,\), expected float32 \(3,\)"):
        tensor_from_proto(msg, max_bytes=MB)
    with pytest.raises(ValueError, match="built in"):
        wire.register_decoder(pb.CODEC_RAW, pb.COMPRESSION_NONE, decode)


def test_token_ids() -> None:
    assert wire.token_ids([0, 5, 9], max_len=3, vocab_size=10) == [0, 5, 9]
    with pytest.raises(WireError, match=r"draft: ids \[10, -1\] are outside \[0, 10\)"):
        wire.token_ids([1, 10, -1], max_len=8, vocab_size=10, what="draft")
    with pytest.raises(WireError, match="4 ids exceed the limit 3"):
        wire.token_ids([1, 2, 3, 4], max_len=3)


def test_dtype_helpers() -> None:
    for dtype in ALL_DTYPES:
        assert wire.dtype_from_proto(wire.dtype_to_proto(dtype)) is dtype
    with pytest.raises(WireError, match="unknown tensor dtype"):
        wire.dtype_from_proto(0)
