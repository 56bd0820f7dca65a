"""Activation codecs (kernels/codecs.py) and their wire glue (edgecloud/activations.py).

Round trips within each codec's documented bound on hidden states with a few huge channels (as in
Qwen's), the fast paths against the plain references byte for byte, known bytes for the layouts,
and every malformed message rejected with WireError before anything of its claimed size exists.
"""

from __future__ import annotations

import math
import struct

import lz4.frame
import pytest
import torch

from edgecloud import activations, wire
from edgecloud.activations import activation_from_proto, activation_to_proto
from edgecloud.kernels import codecs
from edgecloud.kernels.codecs import CODECS, decode, decode_reference, encode, encode_reference, parse_codec
from edgecloud.v1 import tensor_pb2 as pb
from edgecloud.wire import WireError, WireLimitError

MB = 2**20
HIDDEN = (2, 16, 256)  # (B, T, hidden)
HUGE = (5, 77, 200)  # the massive channels of `hidden_states`
INT_CODECS = [n for n in CODECS if n.startswith("int")]
PLAIN_INT = [n for n in INT_CODECS if "hadamard" not in n]  # fast == reference byte for byte
FLOATS = [torch.float32, torch.bfloat16, torch.float16]


def hidden_states(shape: tuple[int, ...] = HIDDEN, dtype: torch.dtype = torch.float32, seed: int = 0,
                  huge: tuple[int, ...] = HUGE, axis: int = -1) -> torch.Tensor:
    """Most |x| < 1, a few channels of magnitude 100–1000 at every position (Qwen-like massive activations)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 0.3
    x = x.movedim(axis, -1)  # (…, C)
    for c in huge:
        magnitude = 100 + 900 * torch.rand(x.shape[:-1], generator=g)
        sign = torch.where(torch.rand(x.shape[:-1], generator=g) < 0.5, -1.0, 1.0)
        x[..., c] = magnitude * sign
    return x.movedim(-1, axis).contiguous().to(dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.int8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN and -0.0 included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _element_scales(enc: codecs.Encoded) -> torch.Tensor:
    """Each element's scale, written out independently of the codec's own view logic."""
    s = torch.frombuffer(bytearray(enc.scales), dtype=torch.float32)
    shape, axis, group = enc.shape, enc.axis, enc.group_size
    size = shape[axis]
    if group == 0:
        return s.view([size if d == axis else 1 for d in range(len(shape))]).expand(shape)
    pre, post = math.prod(shape[:axis]), math.prod(shape[axis + 1:])
    return s.view(pre, size // group, post).repeat_interleave(group, dim=1).reshape(shape)


def _output_rounding(dtype: torch.dtype) -> float:
    return {torch.float32: 0.0, torch.float16: 2.0**-11, torch.bfloat16: 2.0**-8}[dtype]


def _check_bound(x: torch.Tensor, codec: str, axis: int = -1) -> codecs.Encoded:
    """Encode and decode ``x``, asserting the docstring's bound of ``codec``; returns the encoding."""
    enc = encode(x, codec, axis=axis)
    y = decode(enc)
    assert y.dtype == x.dtype and y.shape == x.shape
    xf, yf = x.float(), y.float()
    err = (xf - yf).abs()
    out_round = _output_rounding(x.dtype) * yf.abs()
    spec = parse_codec(codec)
    if spec.format == "raw":
        assert _same(y, x)
        return enc
    if spec.format in ("fp16", "bf16"):
        rel = 2.0**-11 if spec.format == "fp16" else 2.0**-8
        assert bool((err <= xf.abs() * rel + 2.0**-25 + out_round).all()), codec
        return enc
    qmax = 127 if spec.format == "int8" else 7
    s = _element_scales(enc)
    if spec.hadamard:  # per block of b rotated channels: ‖e_B‖₂ ≤ ½ √(Σ s_j²)
        b = enc.hadamard_block
        e_blocks = (xf - yf).movedim(axis, -1).reshape(-1, b)
        s_blocks = s.movedim(axis, -1).reshape(-1, b)
        x_blocks = xf.movedim(axis, -1).reshape(-1, b)
        bound = 0.5 * s_blocks.pow(2).sum(1).sqrt() + 1e-5 * x_blocks.norm(dim=1) \
            + _output_rounding(x.dtype) * yf.movedim(axis, -1).reshape(-1, b).norm(dim=1)
        assert bool((e_blocks.norm(dim=1) <= bound).all()), codec
        return enc
    bound = s / 2 + s * qmax * 2.0**-22 + out_round
    if enc.outlier_channels:
        index = torch.tensor(enc.outlier_channels)
        kept = xf.index_select(axis, index)
        bound = bound.clone()
        bound.index_copy_(axis, index, kept.abs() * 2.0**-11 + 2.0**-25 + out_round.index_select(axis, index))
    bad = err > bound
    assert not bool(bad.any()), f"{codec}: {int(bad.sum())} values over the bound, worst {float((err - bound).max())}"
    return enc


# ---- names ----

def test_every_listed_codec_parses_to_itself() -> None:
    assert len(set(CODECS)) == len(CODECS) == 24
    for name in CODECS:
        spec = parse_codec(name)
        assert spec.name == name and spec.lz4 == name.endswith("+lz4")
    assert parse_codec("int8-outlier-k8").name == "int8-outlier"
    assert parse_codec("int8-outlier-k3").outliers == 3
    assert parse_codec("int4-outlier-k16-g64") == codecs.CodecSpec("int4-outlier-k16-g64", "int4", "group", 64, 16)
    assert parse_codec("int4-g48").group_size == 48


@pytest.mark.parametrize("name", ["int8", "int4-g0", "int4-g", "INT8-token", "int8-token+lz4+lz4", "fp8",
                                  "int4-hadamard", "int8-outlier-k0", "int4-g70000", "", "x" * 500])
def test_unknown_codec_names_are_rejected_with_the_list(name: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_codec(name)
    text = str(info.value)
    assert "int8-token" in text or "must be in" in text
    assert len(text) < 1000  # the name is not echoed at length


# ---- round trips within the bound ----

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_within_bound_llm(codec: str, dtype: torch.dtype) -> None:
    _check_bound(hidden_states(dtype=dtype), codec)


@pytest.mark.parametrize("codec", ["fp16", "bf16", "int8-channel", "int8-token", "int4-g4", "int4-g8",
                                   "int8-outlier-k2", "int4-outlier-k2-g8", "int8-hadamard", "int4-hadamard-g4",
                                   "int8-channel+lz4"])
def test_round_trip_within_bound_cnn(codec: str) -> None:
    x = hidden_states((2, 8, 6, 5), huge=(3,), axis=1)  # (B, C, H, W), channel 3 huge
    enc = _check_bound(x, codec, axis=1)
    if codec.startswith("int"):
        assert enc.axis == 1
    if "outlier" in codec:
        assert 3 in enc.outlier_channels


def test_int8_channel_scales_run_along_the_channel_axis() -> None:
    x = hidden_states((2, 8, 6, 5), huge=(3,), axis=1)
    enc = encode(x, "int8-channel", axis=1)
    scales = torch.frombuffer(bytearray(enc.scales), dtype=torch.float32)
    assert scales.shape == (8,)
    assert torch.equal(scales, x.abs().amax(dim=(0, 2, 3)) / 127)
    token = encode(x, "int8-token", axis=1)
    assert len(token.scales) == 4 * 2 * 6 * 5  # one per pixel


def test_fp16_and_bf16_of_their_own_dtype_are_bit_exact() -> None:
    specials = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 6.0e-8, 65504.0])
    for codec, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                         ("fp32", torch.bfloat16)):
        x = hidden_states(dtype=dtype)
        x.view(-1)[:6] = specials.to(dtype)
        for name in (codec, codec + "+lz4"):
            assert _same(decode(encode(x, name)), x), name


def test_fp16_of_fp32_is_the_fp16_rounding() -> None:
    x = hidden_states()
    enc = encode(x, "fp16")
    assert enc.payload == x.half().view(torch.int16).numpy().astype("<i2").tobytes()
    assert _same(decode(enc), x.half().float())
    assert _same(decode(encode(x, "bf16")), x.bfloat16().float())


def test_int8_known_bytes_and_round_half_to_even() -> None:
    x = torch.tensor([[254.0, -127.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0]])  # s = 2: q = 127, -63.5, .5, 1.5
    enc = encode(x, "int8-token")
    assert enc.payload == bytes([127, 256 - 64, 0, 2, 0, 0, 0, 0])
    assert enc.scales == struct.pack("<2f", 2.0, 0.0)
    assert decode(enc).tolist() == [[254.0, -128.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]]


def test_int4_known_bytes_low_nibble_first() -> None:
    x = torch.tensor([[7.0, -7.0, 1.0, 0.0], [0.5, 3.5, -2.5, 1.5]])  # row 0: s = 1; row 1: s = 0.5
    enc = encode(x, "int4-g4")
    # row 0: q = 7, -7, 1, 0 -> +8: 15, 1, 9, 8; row 1: q = 1, 7, -5, 3 -> 9, 15, 3, 11
    assert enc.payload == bytes([0x1F, 0x89, 0xF9, 0xB3])
    assert enc.scales == struct.pack("<2f", 1.0, 0.5)
    assert decode(enc).tolist() == x.tolist()
    odd = encode(torch.tensor([7.0, -7.0, 7.0]), "int4-g3")  # an odd count ends with nibble 8
    assert odd.payload == bytes([0x1F, 0x8F])


def test_zeros_empty_and_non_contiguous() -> None:
    for codec in INT_CODECS:
        z = torch.zeros(1, 4, 256)
        assert torch.equal(decode(encode(z, codec)), z), codec
        e = torch.zeros(0, 256)
        assert decode(encode(e, codec)).shape == (0, 256), codec
    x = hidden_states((16, 2, 256)).transpose(0, 1)  # (2, 16, 256), not contiguous
    assert not x.is_contiguous()
    for codec in ("int8-token", "int4-g128", "int8-outlier", "fp16"):
        assert encode(x, codec) == encode(x.contiguous(), codec)


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
def test_encode_leaves_its_input_alone(dtype: torch.dtype) -> None:
    x = hidden_states(dtype=dtype)
    before = x.clone()
    for codec in CODECS:
        encode(x, codec)
        assert _same(x, before), codec


def test_subnormal_scales_stay_in_range() -> None:
    x = torch.tensor([[1.4 * 127 * 2.0**-149, 0.0, -1e-44, 3e-45]] * 3)  # absmax/127 is subnormal
    for codec in ("int8-token", "int4-g4", "int8-channel"):
        enc = encode(x, codec)
        assert enc == encode_reference(x, codec)
        assert (decode(enc) - x).abs().max() <= x.abs().max()


@pytest.mark.parametrize("codec", ["int8-token", "int8-channel", "int4-g32", "int8-hadamard"])
def test_non_finite_values_cannot_be_quantized(codec: str) -> None:
    x = hidden_states()
    x[0, 3, 10] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        encode(x, codec)
    x[0, 3, 10] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        encode(x, codec)


def test_outlier_channels_carry_non_finite_values() -> None:
    x = hidden_states()
    x[:, :, 77] = float("inf")
    y = decode(encode(x, "int8-outlier"))
    assert bool(torch.isinf(y[:, :, 77]).all())


def test_values_a_codec_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="overflow"):
        encode(torch.tensor([1.0, 7e4]), "fp16")
    with pytest.raises(ValueError, match="overflow"):
        encode(hidden_states() * 100, "int8-outlier")  # outliers of ~1e5 do not fit float16
    with pytest.raises(ValueError, match="does not divide"):
        encode(torch.zeros(1, 4, 96), "int4-g64")
    with pytest.raises(ValueError, match="channel axis"):
        encode(torch.tensor(1.0), "int8-token")
    with pytest.raises(ValueError, match="float32/float16/bfloat16"):
        encode(torch.zeros(4, dtype=torch.int64), "fp32")
    with pytest.raises(ValueError, match="even channel count"):
        encode(torch.zeros(2, 7), "int8-hadamard")
    with pytest.raises(ValueError, match="outlier channels of only"):
        encode(torch.zeros(2, 8), "int8-outlier")
    with pytest.raises(ValueError, match="axis"):
        encode(torch.zeros(2, 8), "int8-token", axis=2)


# ---- outliers and rotation help where they should ----

def _rms(x: torch.Tensor, codec: str) -> float:
    return float((decode(encode(x, codec)).float() - x.float()).pow(2).mean().sqrt())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_outlier_codecs_beat_plain_ones_on_massive_channels(dtype: torch.dtype) -> None:
    x = hidden_states((1, 64, 512), dtype=dtype)
    assert _rms(x, "int8-outlier") < 0.1 * _rms(x, "int8-token")
    assert _rms(x, "int4-outlier-g128") < 0.2 * _rms(x, "int4-g128")
    assert _rms(x, "int8-hadamard") < 0.6 * _rms(x, "int8-token")  # measured 0.54


def test_outlier_selection_finds_exactly_the_massive_channels() -> None:
    x = hidden_states()
    enc = encode(x, "int8-outlier-k3")
    assert enc.outlier_channels == HUGE
    _check_bound(x, "int8-outlier-k3")
    _check_bound(x, "int4-outlier-k3-g128")
    # with the massive channels kept aside, the rest is quantized with the scale of the small values
    assert float(torch.frombuffer(bytearray(enc.scales), dtype=torch.float32).max()) < 2.0 / 127


# ---- Hadamard ----

@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512])
def test_hadamard_matrix_is_orthonormal_and_symmetric(n: int) -> None:
    h = codecs.hadamard_matrix(n)
    assert torch.allclose(h @ h, torch.eye(n), atol=1e-6)
    assert torch.equal(h, h.T)
    assert torch.allclose(h.abs(), torch.full((n, n), 1 / math.sqrt(n)))


def test_hadamard_block_choice() -> None:
    assert codecs.hadamard_block(1536) == 512  # 3 · 512
    assert codecs.hadamard_block(896) == 128  # 7 · 128
    assert codecs.hadamard_block(4096) == 4096
    assert codecs.hadamard_block(2**20) == codecs.MAX_HADAMARD_BLOCK
    with pytest.raises(ValueError):
        codecs.hadamard_block(1535)


@pytest.mark.parametrize(("shape", "axis"), [((3, 1536), -1), ((2, 4, 896), 2), ((2, 2048), 1),
                                              ((2, 8, 3, 3), 1), ((5, 6), 1)])
def test_hadamard_rotation_inverts_exactly(shape: tuple[int, ...], axis: int) -> None:
    x = hidden_states(shape, huge=(), axis=axis) * 10
    axis %= x.dim()
    block = codecs.hadamard_block(shape[axis])
    rotated = codecs.hadamard_rotate(x, axis, block)
    assert torch.allclose(rotated, codecs.hadamard_rotate_reference(x, axis, block), atol=1e-5, rtol=1e-5)
    assert torch.allclose(codecs.hadamard_rotate(rotated, axis, block), x, atol=1e-5, rtol=0)
    assert torch.allclose(rotated.norm(), x.norm(), rtol=1e-5)  # orthonormal
    assert not torch.allclose(rotated, x)


def test_hadamard_fast_and_reference_agree_but_for_rounding_ties() -> None:
    x = hidden_states((1, 32, 1536), huge=(5, 700))
    for codec in ("int8-hadamard", "int4-hadamard-g128"):
        fast, ref = encode(x, codec), encode_reference(x, codec)
        a = torch.frombuffer(bytearray(fast.payload), dtype=torch.uint8)
        b = torch.frombuffer(bytearray(ref.payload), dtype=torch.uint8)
        assert int((a != b).sum()) <= a.numel() // 1000, codec
        assert torch.allclose(torch.frombuffer(bytearray(fast.scales), dtype=torch.float32),
                              torch.frombuffer(bytearray(ref.scales), dtype=torch.float32), rtol=1e-5)
        assert torch.allclose(decode(fast), decode_reference(fast), atol=1e-5 * float(x.abs().max()))


# ---- fast paths against the references ----

@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("codec", PLAIN_INT)
def test_fast_equals_reference_bytes(codec: str, dtype: torch.dtype) -> None:
    x = hidden_states(dtype=dtype)
    enc = encode(x, codec)
    assert enc == encode_reference(x, codec)
    assert _same(decode(enc), decode_reference(enc))


@pytest.mark.parametrize(("shape", "axis", "codec"), [
    ((3, 5, 7), -1, "int4-g7"),  # an odd count of int4 values
    ((3, 5, 7), 1, "int4-g5"),
    ((2, 8, 6, 5), 1, "int4-g2"),
    ((2, 8, 6, 5), 1, "int8-channel"),
    ((2, 8, 6, 5), 1, "int8-outlier-k2"),
    ((2, 8, 6, 5), 0, "int8-token"),
    ((7,), 0, "int4-g7"),
])
def test_fast_equals_reference_bytes_other_layouts(shape: tuple[int, ...], axis: int, codec: str) -> None:
    x = hidden_states(shape, huge=(1,), axis=axis)
    enc = encode(x, codec, axis=axis)
    assert enc == encode_reference(x, codec, axis=axis)
    assert _same(decode(enc), decode_reference(enc))


def test_int4_pack_fast_equals_reference() -> None:
    g = torch.Generator().manual_seed(1)
    for n in (0, 1, 2, 7, 1000, 1001):
        q = torch.randint(-7, 8, (n,), generator=g, dtype=torch.int8)
        packed = codecs.pack_int4(q)
        assert torch.equal(packed, codecs.pack_int4_reference(q))
        assert torch.equal(codecs.unpack_int4_reference(packed, n), q)
        assert torch.equal(codecs.unpack_int4_offset(packed, n).to(torch.int16) - 8, q.to(torch.int16))


# ---- lz4 ----

@pytest.mark.parametrize("codec", [n for n in CODECS if not n.endswith("+lz4")])
def test_lz4_wraps_the_inner_codec_exactly(codec: str) -> None:
    x = hidden_states(dtype=torch.bfloat16)
    inner, outer = encode(x, codec), encode(x, codec + "+lz4")
    assert lz4.frame.decompress(outer.payload) == inner.payload
    assert outer.encoded_nbytes == len(inner.payload) and outer.scales == inner.scales
    assert _same(decode(outer), decode(inner))


# ---- bytes per element ----

def test_bytes_per_element() -> None:
    x = hidden_states()  # (2, 16, 256)
    n, rows, c = x.numel(), 32, 256
    assert encode(x, "fp32").nbytes == 4 * n
    assert encode(x, "fp16").nbytes == encode(x, "bf16").nbytes == 2 * n
    assert encode(x.bfloat16(), "fp32").nbytes == 2 * n  # identity
    assert encode(x, "int8-token").nbytes == n + 4 * rows
    assert encode(x, "int8-channel").nbytes == n + 4 * c
    assert encode(x, "int4-g128").nbytes == n // 2 + 4 * n // 128
    assert encode(x, "int4-g32").nbytes == n // 2 + 4 * n // 32
    assert encode(x, "int8-outlier").nbytes == n + 4 * rows + 2 * rows * 8 + 4 * 8
    assert encode(x, "int4-hadamard-g128").nbytes == n // 2 + 4 * n // 128
    big = hidden_states((1, 512, 1536))
    assert encode(big, "int8-token").nbytes / big.numel() == pytest.approx(1 + 4 / 1536)
    assert encode(big, "int4-g128").nbytes / big.numel() == pytest.approx(0.5 + 4 / 128)


# ---- the wire ----

def _wire(msg: pb.Tensor) -> pb.Tensor:
    return pb.Tensor.FromString(msg.SerializeToString())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("codec", CODECS)
def test_proto_round_trip(codec: str, dtype: torch.dtype) -> None:
    x = hidden_states((1, 16, 256), dtype=dtype)
    msg = _wire(activation_to_proto(x, codec))
    assert msg.dtype == wire.dtype_to_proto(dtype) and list(msg.shape) == [1, 16, 256]
    assert msg.raw_nbytes == x.numel() * x.element_size()
    y = activation_from_proto(msg, max_bytes=MB, expected_shape=(1, None, 256))
    assert _same(y, decode(encode(x, codec)))
    assert len(msg.payload) + len(msg.codec_params.scale_bytes) <= encode(x, codec).nbytes


def test_fp32_is_plain_raw_and_cnn_axis_travels() -> None:
    x = hidden_states()
    msg = activation_to_proto(x, "fp32")
    assert msg.codec == pb.CODEC_RAW and not msg.HasField("codec_params")
    assert _same(wire.tensor_from_proto(msg, max_bytes=MB), x)
    cnn = hidden_states((2, 8, 6, 5), huge=(3,), axis=1)
    msg = _wire(activation_to_proto(cnn, "int4-outlier-k2-g8+lz4", axis=1))
    assert msg.codec_params.axis == 1 and list(msg.codec_params.outlier_channels)[:1] == [3]
    assert _same(activation_from_proto(msg, max_bytes=MB), decode(encode(cnn, "int4-outlier-k2-g8+lz4", axis=1)))


def _message(codec: str = "int8-token", shape: tuple[int, ...] = (1, 16, 256), **kwargs) -> pb.Tensor:
    return _wire(activation_to_proto(hidden_states(shape, **kwargs), codec))


def _rejects(msg: pb.Tensor, match: str, *, max_bytes: int = MB, error: type[Exception] = WireError) -> None:
    with pytest.raises(error, match=match):
        activation_from_proto(msg, max_bytes=max_bytes)


def _claim_shape(msg: pb.Tensor, shape: tuple[int, ...]) -> pb.Tensor:
    """``msg`` relabelled as a tensor of ``shape`` (header and sizes consistent, payload not)."""
    numel = math.prod(shape)
    del msg.shape[:]
    msg.shape.extend(shape)
    msg.raw_nbytes = numel * 4
    msg.codec_params.encoded_nbytes = numel
    return msg


def test_truncated_payload_is_rejected() -> None:
    msg = _message()
    msg.payload = msg.payload[:-1]
    _rejects(msg, "payload is 4095 bytes")


def test_oversized_shape_is_rejected_by_the_limit() -> None:
    _rejects(_message(), "limit", max_bytes=16 * 256 * 4 - 1, error=WireLimitError)
    _rejects(_claim_shape(_message(), (2**20, 2**20)), "limit", error=WireLimitError)  # 4 TiB claimed


def test_huge_claims_fail_before_allocation() -> None:
    # Sizes are within a (huge) limit, so only the codec's own checks stand between the claim and a
    # 4 TiB allocation: any attempt would fail with RuntimeError/MemoryError, not WireError.
    huge = (1, 2**20, 2**20)
    limit = 2**60
    _rejects(_claim_shape(_message(), huge), "scales", max_bytes=limit)
    msg = _claim_shape(_message("int8-channel"), huge)
    msg.codec_params.scale_bytes = bytes(4 * 2**20)  # the right count for the claim
    _rejects(msg, "payload is 4096 bytes", max_bytes=limit)
    msg = _claim_shape(_message("int8-channel+lz4"), huge)
    msg.codec_params.scale_bytes = bytes(4 * 2**20)  # the right count for the claim
    _rejects(msg, "lz4 frame claims", max_bytes=limit)  # its header holds the true size
    msg.payload = lz4.frame.compress(bytes(1000), store_size=False)
    _rejects(msg, "cannot hold", max_bytes=limit)  # no size in the header: too short to hold the claim


def test_wrong_scale_count_is_rejected() -> None:
    for codec in ("int8-token", "int4-g128", "int8-channel", "int8-outlier+lz4"):
        msg = _message(codec)
        msg.codec_params.scale_bytes = msg.codec_params.scale_bytes[:-4]
        _rejects(msg, "float32 scales")
        msg.codec_params.scale_bytes += b"\0" * 8
        _rejects(msg, "float32 scales")


@pytest.mark.parametrize("garbage", [b"", b"not an lz4 frame at all", b"\x04\x22\x4d\x18garbagegarbage"])
def test_bad_lz4_frame_is_rejected(garbage: bytes) -> None:
    msg = _message("int8-token+lz4")
    msg.payload = garbage
    _rejects(msg, "lz4")


def test_truncated_or_padded_lz4_frame_is_rejected() -> None:
    msg = _message("int4-g128+lz4")
    good = msg.payload
    msg.payload = good[:-5]
    _rejects(msg, "lz4 frame")
    msg.payload = good + lz4.frame.compress(b"more")
    _rejects(msg, "after the end")


def _xxh32(data: bytes, seed: int = 0) -> int:
    """xxHash32 (the LZ4 frame header checksum), for inputs under 16 bytes."""
    p1, p3, p4, p5, p2, mask = 2654435761, 3266489917, 668265263, 374761393, 2246822519, 0xFFFFFFFF

    def rotl(v: int, r: int) -> int:
        return ((v << r) | (v >> (32 - r))) & mask

    assert len(data) < 16
    h = (seed + p5 + len(data)) & mask
    i = 0
    while i + 4 <= len(data):
        h = rotl((h + int.from_bytes(data[i:i + 4], "little") * p3) & mask, 17) * p4 & mask
        i += 4
    for byte in data[i:]:
        h = rotl((h + byte * p5) & mask, 11) * p1 & mask
    h ^= h >> 15
    h = h * p2 & mask
    h ^= h >> 13
    h = h * p3 & mask
    return h ^ (h >> 16)


def test_lz4_frame_claiming_a_huge_size_is_rejected() -> None:
    msg = _message("int8-token+lz4")
    frame = msg.payload
    assert frame[4] & 0x08  # content size stored: magic, FLG, BD, 8 bytes of size, header checksum
    assert frame[14] == (_xxh32(frame[4:14]) >> 8) & 0xFF  # the checksum as LZ4 computes it
    descriptor = frame[4:6] + struct.pack("<Q", 2**40)
    forged = frame[:4] + descriptor + bytes([(_xxh32(descriptor) >> 8) & 0xFF]) + frame[15:]
    assert lz4.frame.get_frame_info(forged)["content_size"] == 2**40
    msg.payload = forged
    _rejects(msg, "claims 1099511627776 bytes")


def test_lz4_bomb_is_cut_at_the_codec_size() -> None:
    msg = _message("int8-token+lz4")
    msg.payload = lz4.frame.compress(bytes(200_000), store_size=False)  # far more than 4096 + 64
    assert len(msg.payload) < 4096
    _rejects(msg, "more than")
    msg.payload = lz4.frame.compress(bytes(100), store_size=False)
    _rejects(msg, "fewer")


def test_inconsistent_params_are_rejected() -> None:
    cases = {
        "encoded_nbytes": lambda m: setattr(m.codec_params, "encoded_nbytes", m.codec_params.encoded_nbytes + 1),
        "does not divide": lambda m: setattr(m.codec_params, "group_size", 96),
        "out of range": lambda m: setattr(m.codec_params, "axis", 3),
        "needs codec_params.axis": lambda m: m.codec_params.ClearField("axis"),
        "FLOAT32": lambda m: setattr(m.codec_params, "scale_dtype", pb.DTYPE_FLOAT16),
        "original_dtype": lambda m: setattr(m.codec_params, "original_dtype", pb.DTYPE_FLOAT16),
        "zero points": lambda m: m.codec_params.zero_points.append(1),
        "power of two": lambda m: setattr(m.codec_params, "hadamard_block", 3),
        "not supported": lambda m: setattr(m, "codec", pb.CODEC_FP8),
    }
    for match, corrupt in cases.items():
        msg = _message("int4-g128")
        corrupt(msg)
        _rejects(msg, match)
    for chans, match in (([5, 5], "ascending"), ([300], r"in \[0, 256\)"), ([-1], "ascending"),
                         (list(range(256)), "outlier channels of only")):
        msg = _message("int8-outlier")
        del msg.codec_params.outlier_channels[:]
        msg.codec_params.outlier_channels.extend(chans)
        _rejects(msg, match)
    msg = _message("int8-token")
    scales = bytearray(msg.codec_params.scale_bytes)
    scales[:4] = struct.pack("<f", float("nan"))
    msg.codec_params.scale_bytes = bytes(scales)
    _rejects(msg, "finite")
    msg = _message("fp16")
    msg.codec_params.group_size = 4
    _rejects(msg, "takes no")
    msg = _message("int8-hadamard")
    msg.codec_params.outlier_channels.append(1)
    _rejects(msg, "both rotate")


def test_only_float_activations_are_accepted() -> None:
    msg = wire.tensor_to_proto(torch.arange(6))
    _rejects(msg, "not accepted")
    with pytest.raises(WireError, match="expected"):
        activation_from_proto(_message(), max_bytes=MB, expected_shape=(1, None, 512))


def test_decoders_are_registered_for_every_codec() -> None:
    for fmt, code in activations._CODEC_ENUM.items():
        for compression in (pb.COMPRESSION_NONE, pb.COMPRESSION_LZ4):
            if (fmt, compression) != ("raw", pb.COMPRESSION_NONE):
                assert (code, compression) in wire._DECODERS
