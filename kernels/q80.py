"""Q80: int8 blocks of 32 values with one fp16 scale each (distributed-llama's partial-sum format).

34 bytes per 32 values instead of 128 (fp32): 3.76x fewer. Error bound, per value and per
compression (``error_bound``): max(scale / 2, absmax - 127 * scale) + absmax * 2**-22, with the
block's stored fp16 scale ~ absmax / 127. That is at most absmax * ((1 + 2**-11) / 254 + 2**-22)
while the scale is an fp16 normal number (absmax >= 127 * 2**-14 ~ 0.0078); smaller blocks add
fp16's subnormal rounding, at most 127 * 2**-25 ~ 3.8e-6 absolute.
"""

from __future__ import annotations

import torch

from edgecloud.kernels.frames import tensor_view

BLOCK = 32
FP16_MAX = 65504.0


def nblocks(numel: int) -> int:
    return -(-numel // BLOCK)


def nbytes(numel: int) -> int:
    """Bytes of ``numel`` values in Q80: an fp16 scale and 32 int8 values per block (the last padded)."""
    return nblocks(numel) * (2 + BLOCK)


def encode(x: torch.Tensor) -> bytes:
    """``x`` (any float dtype, any shape) as Q80 bytes: the blocks' fp16 scales, then their int8 values."""
    blocks, _, scales = _blocks(x)
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(blocks / safe[:, None]).clamp_(-127, 127).to(torch.int8)  # (nblocks, 32)
    return scales.half().numpy().tobytes() + q.numpy().tobytes()


def _blocks(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` as float32 blocks (nblocks, 32), zero-padded; each block's absmax and fp16-rounded scale."""
    flat = x.detach().reshape(-1).float()
    pad = nblocks(flat.numel()) * BLOCK - flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, pad)).view(-1, BLOCK)
    absmax = blocks.abs().amax(dim=1)
    if absmax.numel() and not bool(torch.isfinite(absmax).all() and absmax.max() / 127 <= FP16_MAX):
        raise ValueError("values are not finite or too large for Q80's fp16 scales")
    return blocks, absmax, (absmax / 127).half().float()


def decode(data: bytes | memoryview, numel: int) -> torch.Tensor:
    """float32 values (numel,) from Q80 bytes; ValueError unless ``data`` is exactly ``nbytes(numel)``."""
    if len(data) != nbytes(numel):
        raise ValueError(f"Q80 data of {len(data)} bytes for {numel} values (expected {nbytes(numel)})")
    count = nblocks(numel)
    buffer = memoryview(data)
    scales = tensor_view(buffer[:2 * count], torch.float16).float()  # (nblocks,)
    q = tensor_view(buffer[2 * count:], torch.int8).view(count, BLOCK)  # (nblocks, 32)
    return (q.float() * scales[:, None]).reshape(-1)[:numel]


def error_bound(x: torch.Tensor) -> torch.Tensor:
    """The bound on each value's error after one encode/decode of ``x``: (numel,) float32."""
    _, absmax, scales = _blocks(x)
    bound = torch.maximum(scales / 2, absmax - 127 * scales) + absmax * 2 ** -22  # (nblocks,)
    return bound.repeat_interleave(BLOCK)[:x.numel()]
