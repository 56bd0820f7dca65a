"""A tensor-parallel model: each device runs its shard of every layer; two allreduces per layer.

Rank 0 (the master) embeds the tokens, sends the layer input with a command to the others, runs
its own shard, and applies the final norm and LM head. Other ranks loop in ``serve_worker``.
The collective is ``edgecloud.kernels.collectives.StarAllreduce`` (or anything with the same
``allreduce``/``broadcast``); with one device there is none and this is the plain model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from edgecloud.models.config import ModelConfig
from edgecloud.models.kv_cache import KVCache
from edgecloud.models.layer_window import LayerWindow
from edgecloud.models.llama import MLP, Attention, AttentionMask, RMSNorm, RotaryEmbedding
from edgecloud.models.loader import read_safetensors_folder, runtime_state_dict
from edgecloud.models.sharding import Shard, ShardPlan

AllReduce = Callable[[torch.Tensor], torch.Tensor]
FORWARD, CROP, RESET, STOP = 1.0, 2.0, 3.0, 4.0
COMMAND = 3  # a command vector starts with (op, new tokens, past tokens); FORWARD adds the layer input


class ShardedAttention(Attention):
    """This device's query heads and the K/V heads they read. When the local heads do not cover whole
    KV groups evenly, keys and values are expanded per query head (an index_select) before attention."""

    def __init__(self, config: ModelConfig, layer_index: int, shard: Shard) -> None:
        super().__init__(config, layer_index, num_heads=shard.num_heads, num_kv_heads=shard.num_kv_heads)
        kv_of_heads = torch.tensor(shard.kv_of_heads(config.kv_group_size), device="cpu")  # never on meta
        per_kv = max(1, self.num_heads // self.num_kv_heads)
        even = self.num_heads % self.num_kv_heads == 0 and torch.equal(
            kv_of_heads, torch.arange(self.num_kv_heads, device="cpu").repeat_interleave(per_kv))
        self.register_buffer("kv_of_heads", None if even else kv_of_heads, persistent=False)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: AttentionMask) -> torch.Tensor:
        if self.kv_of_heads is None:
            return super()._attend(q, k, v, attention)
        k, v = k.index_select(1, self.kv_of_heads), v.index_select(1, self.kv_of_heads)  # (B, H_local, S, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attention.mask, is_causal=attention.is_causal)


class ShardedLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int, shard: Shard) -> None:
        super().__init__()
        self.self_attn = ShardedAttention(config, layer_index, shard) if shard.num_heads else None
        width = shard.mlp[1] - shard.mlp[0]
        self.mlp = MLP(config.hidden_size, width) if width else None
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache | None,
                attention: AttentionMask, allreduce: AllReduce) -> torch.Tensor:
        h = self.input_layernorm(x)
        part = self.self_attn(h, cos, sin, cache, attention) if self.self_attn is not None else torch.zeros_like(x)
        x = x + allreduce(part)
        h = self.post_attention_layernorm(x)
        part = self.mlp(h) if self.mlp is not None else torch.zeros_like(x)
        return x + allreduce(part)


class ShardedModel(nn.Module):
    """One device's shard of a Llama-family model (rank 0 also holds embedding, final norm, LM head)."""

    def __init__(self, plan: ShardPlan, rank: int, *, layers_on_disk: bool = False) -> None:
        super().__init__()
        config = plan.config
        self.config, self.plan, self.shard = config, plan, plan.shards[rank]
        with torch.device("meta" if layers_on_disk else "cpu"):  # meta: no memory until a window loads them
            self.layers = nn.ModuleList(ShardedLayer(config, i, self.shard) for i in range(config.num_layers))
        self.window: LayerWindow | None = None
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size) if rank == 0 else None
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps) if rank == 0 else None
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False) \
            if rank == 0 and not config.tie_word_embeddings else None

    @classmethod
    def from_state(cls, plan: ShardPlan, rank: int, state: dict[str, torch.Tensor], *,
                   dtype: torch.dtype = torch.float32) -> ShardedModel:
        """From this rank's tensors (``plan.shard_state``); every expected tensor must be there."""
        model = cls(plan, rank)
        model.load_state_dict(state, strict=True)
        return model.to(dtype).eval()

    @classmethod
    def from_file(cls, plan: ShardPlan, rank: int, path: str | Path, *, dtype: torch.dtype = torch.float32,
                  memory_window: int | None = None) -> ShardedModel:
        """This rank's shard from its own file; with ``memory_window`` only that many layers' weights are in
        RAM at a time (``LayerWindow``), the rest read from the file as the forward reaches them."""
        if memory_window is None or memory_window >= plan.config.num_layers:
            return cls.from_state(plan, rank, load_file(str(path)), dtype=dtype)
        model = cls(plan, rank, layers_on_disk=True)
        with safe_open(str(path), framework="pt") as f:
            names = [name for name in f.keys() if not name.startswith("layers.")]  # noqa: SIM118 (not a dict)
            resident = {name: f.get_tensor(name).to(dtype, copy=True) for name in names}  # aligned copies
        missing, unexpected = model.load_state_dict(resident, strict=False, assign=True)
        if unexpected or any(not name.startswith("layers.") for name in missing):
            raise ValueError(f"{path} does not hold rank {rank}'s shard ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected tensors)")
        model.to(dtype).eval()
        model.window = LayerWindow(model.layers, path, memory_window, dtype)
        return model

    @property
    def dtype(self) -> torch.dtype:
        return self.window.dtype if self.window is not None else self.layers[0].input_layernorm.weight.dtype

    def new_cache(self) -> KVCache | None:
        if not self.shard.num_kv_heads:
            return None
        return KVCache(range(self.config.num_layers), 1, self.shard.num_kv_heads, self.config.head_dim,
                       dtype=self.dtype, device=torch.device("cpu"))

    def forward_layers(self, hidden: torch.Tensor, past: int, cache: KVCache | None,
                       allreduce: AllReduce) -> torch.Tensor:
        """Every layer on hidden states (1, T, C) of tokens at positions [past, past + T)."""
        num_new = hidden.shape[1]
        self.config.check_positions(past + num_new)
        cos, sin = self.rotary(torch.arange(past, past + num_new), hidden.dtype)
        attention = AttentionMask.for_window(num_new, past, hidden.device)
        for layer in self.layers if self.window is None else self.window:
            hidden = layer(hidden, cos, sin, cache, attention, allreduce)
        return hidden

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm(hidden), weight).float()


class TensorParallelGroup:
    """The master's view of a group: one model over N devices, with one session's KV cache (batch 1).

    ``forward(ids)`` returns logits like ``LlamaModel.forward``; ``crop`` and ``reset`` keep every
    device's cache in step. ``collective`` is None for a group of one.
    """

    def __init__(self, model: ShardedModel, collective=None) -> None:
        if model.embed_tokens is None:
            raise ValueError("the master needs rank 0's shard")
        self.model, self.collective = model, collective
        self.cache = model.new_cache()
        self.length = 0  # tokens cached (on every device)
        self.broken: Exception | None = None  # set when a command failed midway: devices may disagree now

    def _allreduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.collective is None else self.collective.allreduce(tensor)

    def _command(self, op: float, num_new: int = 0, past: int = 0, hidden: torch.Tensor | None = None) -> None:
        if self.broken is not None:
            raise RuntimeError(f"this tensor-parallel group failed earlier ({self.broken}); start it again")
        if self.collective is None:
            return
        head = torch.tensor([op, float(num_new), float(past)])
        self.collective.broadcast(head if hidden is None else torch.cat([head, hidden.reshape(-1).float()]))

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, last_n: int | None = None) -> torch.Tensor:
        """Logits (1, T, V) for new tokens (1, T) after those cached (the last ``last_n`` positions only)."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise ValueError(f"a group decodes one sequence: ids of shape (1, T), got {tuple(input_ids.shape)}")
        self.model.config.check_positions(self.length + input_ids.shape[1])  # before any device hears of it
        hidden = self.model.embed_tokens(input_ids)  # (1, T, C)
        self._command(FORWARD, hidden.shape[1], self.length, hidden)
        try:
            hidden = self.model.forward_layers(hidden, self.length, self.cache, self._allreduce)
        except Exception as exc:  # a device failed midway: the caches now disagree, so the group is done
            if self.cache is not None:
                self.cache.crop(self.length)
            self.broken = exc
            raise
        self.length += input_ids.shape[1]
        return self.model.head(hidden if last_n is None else hidden[:, -last_n:])

    def crop(self, num_tokens: int) -> None:
        """Forget cached tokens after the first ``num_tokens`` (on every device)."""
        if not 0 <= num_tokens <= self.length:
            raise ValueError(f"cannot crop {self.length} cached tokens to {num_tokens}")
        self._command(CROP, 0, num_tokens)
        if self.cache is not None:
            self.cache.crop(num_tokens)
        self.length = num_tokens

    def reset(self) -> None:
        self._command(RESET)
        self.cache, self.length = self.model.new_cache(), 0

    def close(self) -> None:
        """Tell the workers to stop (their ``serve_worker`` returns)."""
        self._command(STOP)


@torch.inference_mode()
def serve_worker(model: ShardedModel, collective) -> None:
    """A worker's loop: each command from the master, until it says stop."""
    cache, length, width = model.new_cache(), 0, model.config.hidden_size
    while True:
        message = collective.broadcast(None)  # waits for the master's next command
        if message.numel() < COMMAND:
            raise ValueError(f"a command of {message.numel()} values")
        op, num_new, past = (int(v) for v in message[:COMMAND].tolist())
        if op == FORWARD:
            if past != length or message.numel() != COMMAND + num_new * width:
                raise ValueError(f"forward of {num_new} tokens after {past} (this worker holds {length}, "
                                 f"{message.numel()} values)")
            hidden = message[COMMAND:].view(1, num_new, width).to(model.dtype)
            model.forward_layers(hidden, past, cache, collective.allreduce)
            length += num_new
        elif op == CROP:
            if not 0 <= past <= length:
                raise ValueError(f"crop to {past} of {length} cached tokens")
            if cache is not None:
                cache.crop(past)
            length = past
        elif op == RESET:
            cache, length = model.new_cache(), 0
        elif op == STOP:
            return
        else:
            raise ValueError(f"unknown command {op}")


# ---- pre-split files: each device reads only its own slice ----

def write_shards(source: str | Path, out: str | Path, ways: int, weights: list[float] | None = None) -> ShardPlan:
    """Split the model folder ``source`` into ``out``: plan.json, config.json, rank-<r>.safetensors."""
    source, out = Path(source), Path(out)
    config = ModelConfig.from_hf(json.loads((source / "config.json").read_text()))
    plan = ShardPlan.build(config, ways, weights)
    state = runtime_state_dict(read_safetensors_folder(source), config)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text((source / "config.json").read_text())
    (out / "plan.json").write_text(json.dumps(plan.to_json(), indent=2))
    for rank in range(ways):
        save_file(plan.shard_state(state, rank), str(out / f"rank-{rank}.safetensors"))
    return plan


def load_shard(folder: str | Path, rank: int, *, dtype: torch.dtype = torch.float32,
               memory_window: int | None = None) -> ShardedModel:
    """Rank ``rank``'s shard from a folder written by ``write_shards`` (only its own file is read; with
    ``memory_window``, only that many layers of it at a time)."""
    folder = Path(folder)
    config = ModelConfig.from_hf(json.loads((folder / "config.json").read_text()))
    saved = json.loads((folder / "plan.json").read_text())
    plan = ShardPlan.build(config, saved["ways"], saved["weights"])
    if plan.to_json() != saved:
        raise ValueError(f"{folder / 'plan.json'} does not match this version's plan for its weights")
    if not 0 <= rank < plan.ways:
        raise ValueError(f"rank {rank} is not in a group of {plan.ways}")
    return ShardedModel.from_file(plan, rank, folder / f"rank-{rank}.safetensors", dtype=dtype,
                                  memory_window=memory_window)
