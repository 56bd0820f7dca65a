"""Write a Hugging Face Llama/Qwen2 model (config, state dict, byte-level BPE tokenizer) as a GGUF file.

The inverse of ``gguf_loader``, following llama.cpp's converter: llama.cpp tensor names, GGUF metadata
keys, and q/k rows permuted for the ``llama`` architecture. Used to export small models for llama.cpp
and to build GGUF fixtures in tests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch

from edgecloud.models.gguf_tokenizer import CONTROL, NORMAL, USER_DEFINED

_BLOCK_PARTS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_GLOBALS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face parameter name."""
    if hf_name in _GLOBALS:
        return _GLOBALS[hf_name]
    parts = hf_name.split(".")
    if len(parts) == 6 and parts[:2] == ["model", "layers"]:
        module = ".".join(parts[3:5])
        if module in _BLOCK_PARTS:
            return f"blk.{parts[2]}.{_BLOCK_PARTS[module]}.{parts[5]}"
    if len(parts) == 5 and parts[:2] == ["model", "layers"] and parts[3] in _BLOCK_PARTS:
        return f"blk.{parts[2]}.{_BLOCK_PARTS[parts[3]]}.{parts[4]}"
    raise ValueError(f"no GGUF name for parameter {hf_name!r}")


def permute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k permutation: per head, rows (2, half) → (half, 2), so rotary pairs interleave."""
    head_dim = weight.shape[0] // n_heads
    return weight.reshape(n_heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def tokenizer_metadata(folder: Path) -> dict[str, Any]:
    """tokens, token types and merges of a byte-level BPE ``tokenizer.json`` in GGUF's terms."""
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    model = data["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers can be exported, not {model.get('type')!r}")
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError("token ids are not contiguous")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": [by_id[i][0] for i in range(len(by_id))],
            "types": [by_id[i][1] for i in range(len(by_id))], "merges": merges}


def write_gguf(path: str | Path, hf_config: dict[str, Any], state_dict: dict[str, torch.Tensor],
               tokenizer_dir: str | Path | None = None, *, quant: gguf.GGMLQuantizationType | None = None,
               pre: str = "default") -> Path:
    """Write ``state_dict`` (HF names) as a GGUF; 2-D weights quantized to ``quant`` when given."""
    arch = hf_config["model_type"]
    heads, kv_heads = hf_config["num_attention_heads"], hf_config.get("num_key_value_heads") or hf_config[
        "num_attention_heads"]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(hf_config["num_hidden_layers"])
    writer.add_context_length(hf_config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf_config["hidden_size"])
    writer.add_feed_forward_length(hf_config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(float(hf_config.get("rope_theta", 10000.0)))
    writer.add_layer_norm_rms_eps(float(hf_config.get("rms_norm_eps", 1e-6)))
    if tokenizer_dir is not None:
        _add_tokenizer(writer, Path(tokenizer_dir), pre, hf_config)
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and hf_config.get("tie_word_embeddings"):
            continue
        array = tensor.detach().to(torch.float32).cpu().numpy()
        if arch == "llama" and ".q_proj." in name:
            array = permute_rows(array, heads)
        elif arch == "llama" and ".k_proj." in name:
            array = permute_rows(array, kv_heads)
        if quant is not None and array.ndim == 2:
            writer.add_tensor(gguf_tensor_name(name), gguf.quants.quantize(array, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gguf_tensor_name(name), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _add_tokenizer(writer: gguf.GGUFWriter, folder: Path, pre: str, hf_config: dict[str, Any]) -> None:
    meta = tokenizer_metadata(folder)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    ids = {t: i for i, t in enumerate(meta["tokens"])}
    for key, add in (("bos_token", writer.add_bos_token_id), ("eos_token", writer.add_eos_token_id),
                     ("pad_token", writer.add_pad_token_id)):
        text = config.get(key)
        if isinstance(text, dict):
            text = text.get("content")
        if text in ids:
            add(ids[text])
    if "bos_token" not in config and hf_config.get("bos_token_id") is not None:
        writer.add_bos_token_id(int(hf_config["bos_token_id"]))
    writer.add_add_bos_token(bool(config.get("add_bos_token", False)))
    if config.get("chat_template"):
        writer.add_chat_template(config["chat_template"])
