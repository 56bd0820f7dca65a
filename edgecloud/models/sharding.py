"""How a Llama-family model is cut for tensor parallelism over N devices, and each device's weights.

Any N, uneven shares: query heads and MLP columns are dealt out in proportion to each device's
weight (largest remainder; a device may get no head at all). A device computes the K/V heads its
query heads read; when a KV group's query heads land on two devices, both compute that group's
K/V projection (``replicated_kv_heads`` counts the extra), so N may exceed the KV-head count (the
Qwen2.5-Coder models have 2). Norms are replicated; embedding, final norm and LM head stay on
rank 0 (the master), which sends the layer input to the others.

Per layer, a device holds rows [a·D, b·D) of q_proj (heads [a, b)), the rows of k_proj/v_proj for
its KV heads, columns [a·D, b·D) of o_proj, rows [c, d) of gate_proj/up_proj and columns [c, d)
of down_proj; attention and MLP each end in a partial sum that one allreduce completes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from edgecloud.models.config import ModelConfig

MASTER_ONLY = ("embed_tokens.weight", "norm.weight", "lm_head.weight")


def apportion(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` items dealt in proportion to ``weights`` (largest remainder; ties to the lower rank)."""
    if not weights or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"shard weights must be non-negative with a positive sum, got {list(weights)}")
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[:total - sum(counts)]:
        counts[i] += 1
    return counts


def _ranges(counts: Sequence[int]) -> list[tuple[int, int]]:
    out, start = [], 0
    for count in counts:
        out.append((start, start + count))
        start += count
    return out


@dataclass(frozen=True)
class Shard:
    """One device's part of every layer."""

    rank: int
    heads: tuple[int, int]  # query heads [a, b)
    kv_heads: tuple[int, int]  # the KV heads those read, [ka, kb)
    mlp: tuple[int, int]  # intermediate columns [c, d)

    @property
    def num_heads(self) -> int:
        return self.heads[1] - self.heads[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv_heads[1] - self.kv_heads[0]

    def kv_of_heads(self, group_size: int) -> list[int]:
        """For each local query head, its KV head's local index."""
        return [h // group_size - self.kv_heads[0] for h in range(*self.heads)]


@dataclass(frozen=True)
class ShardPlan:
    config: ModelConfig
    weights: tuple[float, ...]
    shards: tuple[Shard, ...]

    @classmethod
    def build(cls, config: ModelConfig, ways: int, weights: Sequence[float] | None = None) -> ShardPlan:
        weights = tuple(float(w) for w in (weights or [1.0] * ways))
        if ways < 1 or len(weights) != ways:
            raise ValueError(f"{len(weights)} weights for {ways} devices")
        group = config.kv_group_size
        heads = _ranges(apportion(config.num_heads, weights))
        columns = _ranges(apportion(config.intermediate_size, weights))
        shards = []
        for rank, ((a, b), mlp) in enumerate(zip(heads, columns, strict=True)):
            kv = (a // group, -(-b // group)) if b > a else (0, 0)
            shards.append(Shard(rank, (a, b), kv, mlp))
        return cls(config, weights, tuple(shards))

    @property
    def ways(self) -> int:
        return len(self.shards)

    @property
    def replicated_kv_heads(self) -> int:
        """K/V heads computed more than once across the group (per layer): the price of splitting a group."""
        return sum(s.num_kv_heads for s in self.shards) - self.config.num_kv_heads

    def to_json(self) -> dict:
        return {"ways": self.ways, "weights": list(self.weights), "replicated_kv_heads": self.replicated_kv_heads,
                "shards": [{"rank": s.rank, "heads": list(s.heads), "kv_heads": list(s.kv_heads),
                            "mlp": list(s.mlp)} for s in self.shards]}

    def shard_state(self, state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
        """Rank ``rank``'s tensors of a full runtime state dict (names as in ``LlamaModel``), contiguous."""
        shard, d = self.shards[rank], self.config.head_dim
        (a, b), (ka, kb), (c, e) = shard.heads, shard.kv_heads, shard.mlp
        out: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            if name in MASTER_ONLY:
                if rank == 0:
                    out[name] = tensor
                continue
            suffix = name.split(".", 2)[-1]  # layers.{i}.<suffix>
            if (suffix.startswith("self_attn.") and not shard.num_heads) or (suffix.startswith("mlp.") and c == e):
                continue  # a device with no heads (or no columns) has no attention (or MLP) at all
            if suffix.startswith("self_attn.q_proj."):
                out[name] = tensor[a * d:b * d]
            elif suffix.startswith(("self_attn.k_proj.", "self_attn.v_proj.")):
                out[name] = tensor[ka * d:kb * d]
            elif suffix == "self_attn.o_proj.weight":
                out[name] = tensor[:, a * d:b * d]
            elif suffix in ("mlp.gate_proj.weight", "mlp.up_proj.weight"):
                out[name] = tensor[c:e]
            elif suffix == "mlp.down_proj.weight":
                out[name] = tensor[:, c:e]
            elif suffix.endswith("layernorm.weight"):
                out[name] = tensor
            else:
                raise ValueError(f"no sharding rule for parameter {name}")
        return {name: t.clone(memory_format=torch.contiguous_format) for name, t in out.items()}  # one copy each
