"""The Llama family (Llama, Qwen2, SmolLM) in plain PyTorch.

Parameter names mirror Hugging Face's (without the ``model.`` prefix) so checkpoints load
directly. Three entry points serve the three ways edgecloud runs a model:

- ``forward(ids, cache)``: logits for every position of a window of new tokens, using and
  extending a per-session KV cache (decoding, and the cloud's batched verification);
- ``embed`` / ``forward_layers(h, a, b)`` / ``head``: a layer range ``[a, b)`` on hidden
  states (split computing cuts the model between layers);
- attention heads and MLP columns live in plain ``nn.Linear`` rows/columns, so a shard is
  a slice of them (tensor parallelism).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgecloud.models.config import ModelConfig
from edgecloud.models.kv_cache import ArenaCache, KVArena, KVCache


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like the reference implementation."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE) with a configurable base ``rope_theta``."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for ``positions`` (T,) -> each (T, D)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]  # (T, D/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, D)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) by the angles in cos/sin (T, D)."""
    return (x * cos) + (_rotate_half(x) * sin)


def causal_window_mask(num_new: int, num_total: int, device: torch.device) -> torch.Tensor:
    """Boolean mask (T, S) letting new token i see the cached tokens and new tokens up to i."""
    past = num_total - num_new
    query_pos = torch.arange(past, num_total, device=device)[:, None]  # (T, 1)
    key_pos = torch.arange(num_total, device=device)[None, :]  # (1, S)
    return key_pos <= query_pos  # (T, S)


@dataclass(frozen=True)
class AttentionMask:
    """How a window of new tokens attends, decided once per forward (not per layer).

    One new token sees everything (no mask); a window with nothing cached is plain causal (the
    fused kernel, no T×T tensor); only a window after cached tokens needs an explicit (T, S) mask.
    """

    mask: torch.Tensor | None = None
    is_causal: bool = False

    @classmethod
    def for_window(cls, num_new: int, past: int, device: torch.device) -> AttentionMask:
        if num_new == 1:
            return cls()
        if past == 0:
            return cls(is_causal=True)
        return cls(mask=causal_window_mask(num_new, past + num_new, device))


@dataclass(frozen=True)
class SessionCaches:
    """The caches of B independent sessions decoded together, one new token each (row i = session i).

    When they all live in one ``KVArena`` (``slots``, ``positions`` and ``mask`` set), each layer
    writes and attends for all rows with one op each, the mask (B, 1, 1, S) hiding the part of
    the longest session's length that a shorter one does not have; otherwise row by row.
    """

    caches: tuple[KVCache, ...]
    arena: KVArena | None = None
    slots: torch.Tensor | None = None  # (B,) the caches' rows in the arena
    positions: torch.Tensor | None = None  # (B,) where each row's new token goes
    mask: torch.Tensor | None = None  # (B, 1, 1, S)

    @classmethod
    def of(cls, caches: Sequence[KVCache], positions: torch.Tensor) -> SessionCaches:
        arenas = {c.arena for c in caches if isinstance(c, ArenaCache)}
        if len(arenas) != 1 or not all(isinstance(c, ArenaCache) for c in caches):
            return cls(tuple(caches))
        slots = torch.tensor([c.slot for c in caches], device=positions.device)
        mask = torch.arange(int(positions.max()) + 1, device=positions.device)[None, :] <= positions[:, None]
        return cls(tuple(caches), arenas.pop(), slots, positions, mask[:, None, None, :])

    def attend_inputs(self, layer: int, k: torch.Tensor, v: torch.Tensor
                      ) -> list[tuple[torch.Tensor, torch.Tensor, AttentionMask]]:
        """Store each row's new key/value (B, KV, 1, D); what to attend over: one padded batch in an
        arena, else one (keys, values) per row."""
        if self.arena is not None:
            keys, values = self.arena.write(layer, self.slots, self.positions, k[:, :, 0], v[:, :, 0])
            return [(keys, values, AttentionMask(mask=self.mask))]
        return [(*c.append(layer, k[i:i + 1], v[i:i + 1]), AttentionMask()) for i, c in enumerate(self.caches)]

    def finish(self) -> None:
        """After the last layer: the arena's caches count their new token (written by ``attend_inputs``)."""
        if self.arena is not None:
            for cache in self.caches:
                cache.advance()


@dataclass(frozen=True)
class PrefillBatch:
    """B sessions' first prompt chunks, right-padded to one length T, run together: each layer
    writes every row's T keys/values at the start of its arena slot (rows count only their own
    tokens, so the padding's entries are never read and are overwritten later) and attends
    causally, so a row's real tokens never see its padding."""

    caches: tuple[ArenaCache, ...]
    arena: KVArena
    slots: torch.Tensor  # (B,)
    lengths: tuple[int, ...]  # each row's real tokens

    def attend_inputs(self, layer: int, k: torch.Tensor, v: torch.Tensor
                      ) -> list[tuple[torch.Tensor, torch.Tensor, AttentionMask]]:
        self.arena.write_block(layer, self.slots, k, v)
        return [(k, v, AttentionMask(is_causal=True))]

    def finish(self) -> None:
        for cache, length in zip(self.caches, self.lengths, strict=True):
            cache.advance(length)


BatchedCaches = SessionCaches | PrefillBatch


class Attention(nn.Module):
    """Multi-head attention with grouped key/value heads (GQA) and optional q/k/v bias."""

    def __init__(self, config: ModelConfig, layer_index: int,
                 num_heads: int | None = None, num_kv_heads: int | None = None) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = num_heads or config.num_heads
        self.num_kv_heads = num_kv_heads or config.num_kv_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        d = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * d, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * d, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * d, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | BatchedCaches | None, attention: AttentionMask) -> torch.Tensor:
        bsz, seq, _ = x.shape  # (B, T, C)
        q = self.q_proj(x).view(bsz, seq, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, D)
        v = self.v_proj(x).view(bsz, seq, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if isinstance(cache, SessionCaches | PrefillBatch):  # B sessions: one padded batch, or row by row
            inputs = cache.attend_inputs(self.layer_index, k, v)
            queries = [q] if len(inputs) == 1 else q.split(1)
            ys = [self._attend(qi, ki, vi, mask) for qi, (ki, vi, mask) in zip(queries, inputs, strict=True)]
            y = ys[0] if len(ys) == 1 else torch.cat(ys)
        else:
            if cache is not None:
                k, v = cache.append(self.layer_index, k, v)  # (B, KV, S, D)
            y = self._attend(q, k, v, attention)
        return self.o_proj(y.transpose(1, 2).reshape(bsz, seq, self.num_heads * self.head_dim))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attention: AttentionMask) -> torch.Tensor:
        return F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attention.mask,
            is_causal=attention.is_causal,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )  # (B, H, T, D)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: attention then MLP, each with a residual."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_index)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | BatchedCaches | None, attention: AttentionMask) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, attention)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """A decoder-only Llama-family language model."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_tokens.weight.device

    def new_cache(self, batch_size: int = 1, layers: range | None = None,
                  initial_capacity: int = 256) -> KVCache:
        """An empty KV cache for ``layers`` (default: all of them)."""
        cfg = self.config
        return KVCache(
            range(cfg.num_layers) if layers is None else layers,
            batch_size, cfg.num_kv_heads, cfg.head_dim,
            dtype=self.dtype, device=self.device, initial_capacity=initial_capacity,
        )

    def new_arena(self, max_tokens: int = 2048, slots: int = 4) -> KVArena:
        """Shared buffers for the caches of many single-sequence sessions (``KVArena``)."""
        cfg = self.config
        return KVArena(range(cfg.num_layers), cfg.num_kv_heads, cfg.head_dim, dtype=self.dtype, device=self.device,
                       max_tokens=max_tokens, slots=slots)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) -> hidden states (B, T, C)."""
        return self.embed_tokens(input_ids)

    def forward_layers(self, hidden: torch.Tensor, start: int, end: int,
                       cache: KVCache | None = None) -> torch.Tensor:
        """Run layers ``[start, end)`` on hidden states (B, T, C), extending ``cache`` if given.

        The new tokens' positions follow the tokens already cached for layer ``start``.
        """
        if not 0 <= start <= end <= self.config.num_layers:
            raise ValueError(f"layer range [{start}, {end}) is outside [0, {self.config.num_layers})")
        past = cache.length(start) if cache is not None and start < end else 0
        num_new = hidden.shape[1]
        self.config.check_positions(past + num_new)
        positions = torch.arange(past, past + num_new, device=hidden.device)
        cos, sin = self.rotary(positions, hidden.dtype)
        attention = AttentionMask.for_window(num_new, past, hidden.device)
        for layer in self.layers[start:end]:
            hidden = layer(hidden, cos, sin, cache, attention)
        return hidden

    def decode_sessions(self, tokens: Sequence[int], caches: Sequence[KVCache]) -> torch.Tensor:
        """One new token for each of B sessions with caches of any lengths, in one forward.

        The weight matmuls run once for the batch; attention too when the caches share a
        ``KVArena`` (else per session on its own cache).
        Returns the last layer's hidden states (B, 1, C); each cache grows by one token.
        """
        if len(tokens) != len(caches) or not tokens:
            raise ValueError(f"{len(tokens)} tokens for {len(caches)} caches")
        past = torch.tensor([c.length() for c in caches], device=self.device)  # (B,)
        self.config.check_positions(int(past.max()) + 1)
        hidden = self.embed(torch.tensor([[t] for t in tokens], device=self.device))  # (B, 1, C)
        cos, sin = self.rotary(past, hidden.dtype)  # (B, D) each
        cos, sin = cos[:, None, None, :], sin[:, None, None, :]  # (B, 1, 1, D): per-row positions
        batch = SessionCaches.of(caches, past)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, batch, AttentionMask())
        batch.finish()
        return hidden

    def prefill_sessions(self, prompts: Sequence[Sequence[int]], caches: Sequence[ArenaCache]) -> torch.Tensor:
        """The first prompt chunk of each of B sessions (empty caches in one arena) in one forward.

        Returns each row's hidden state at its last real token (B, 1, C); cache i then holds
        ``len(prompts[i])`` tokens.
        """
        if len(prompts) != len(caches) or not prompts or not all(prompts):
            raise ValueError(f"{len(prompts)} prompts (none may be empty) for {len(caches)} caches")
        arenas = {c.arena for c in caches}
        if len(arenas) != 1 or any(c.length() for c in caches):
            raise ValueError("prefill_sessions needs empty caches of one arena")
        lengths = tuple(len(p) for p in prompts)
        width = max(lengths)
        self.config.check_positions(width)
        ids = torch.tensor([list(p) + [0] * (width - len(p)) for p in prompts], device=self.device)  # (B, T)
        slots = torch.tensor([c.slot for c in caches], device=self.device)
        batch = PrefillBatch(tuple(caches), arenas.pop(), slots, lengths)
        hidden = self.embed(ids)
        cos, sin = self.rotary(torch.arange(width, device=self.device), hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, cos, sin, batch, AttentionMask(is_causal=True))
        batch.finish()
        last = torch.tensor(lengths, device=self.device) - 1
        return hidden[torch.arange(len(prompts), device=self.device), last][:, None]  # (B, 1, C)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head: hidden (B, T, C) -> float32 logits (B, T, V)."""
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(self.norm(hidden), weight).float()

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                last_n: int | None = None) -> torch.Tensor:
        """Logits (B, T, V) for a window of new tokens (B, T) after those in ``cache``.

        ``last_n`` keeps only the last n positions' logits (prefill needs just one).
        """
        hidden = self.forward_layers(self.embed(input_ids), 0, self.config.num_layers, cache)
        return self.head(hidden if last_n is None else hidden[:, -last_n:])
