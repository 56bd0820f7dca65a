"""Read llama.cpp GGUF files of Llama-family models (``llama``, ``qwen2``) as Hugging Face config + weights.

Tensors are dequantized one at a time (``gguf.quants.dequantize``), renamed from llama.cpp's names to
Hugging Face's, and, for the ``llama`` architecture, un-permuted: llama.cpp's converter reorders the rows
of q/k projections so that rotary pairs are interleaved; Hugging Face keeps them in two halves.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType
from gguf.gguf_reader import ReaderField, ReaderTensor
from gguf.quants import dequantize

from edgecloud.models import gguf_tokenizer
from edgecloud.models.safetensors_writer import StreamingSafetensorsWriter, TensorLayout

SUPPORTED_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_IGNORED = {"rope_freqs.weight"}  # precomputed rope factors; the runtime computes its own
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class GGUFError(ValueError):
    """A GGUF file this loader cannot read as a Llama-family model."""


@dataclass
class GGUFContents:
    """A GGUF model as the files of a Hugging Face folder (config dicts, HF-named tensors, tokenizer)."""

    hf_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: str
    tokenizer_config: dict[str, Any]
    generation_config: dict[str, Any]


def field_value(field: ReaderField) -> Any:
    """A metadata field as a Python value (str, int, float, bool, or a list of those)."""
    kind = field.types[0] if field.types else None
    element = field.types[-1] if field.types else None

    def one(index: int, value_type: GGUFValueType | None) -> Any:
        part = field.parts[index]
        if value_type == GGUFValueType.STRING:
            return bytes(part).decode("utf-8", errors="replace")
        value = part.tolist()[0] if len(part) == 1 else part.tolist()
        return bool(value) if value_type == GGUFValueType.BOOL else value

    if kind == GGUFValueType.ARRAY:
        return [one(i, element) for i in field.data]
    return one(field.data[0], kind)


def read_metadata(reader: GGUFReader) -> dict[str, Any]:
    """All key/value metadata of an open GGUF file as Python values (``GGUF.*`` header fields left out)."""
    return {name: field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}


def hf_tensor_name(gguf_name: str) -> str | None:
    """The Hugging Face parameter name of a llama.cpp tensor name; None for tensors to skip."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    if gguf_name in _IGNORED:
        return None
    match = _BLOCK_RE.match(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        layer, part, kind = match.groups()
        return f"model.layers.{layer}.{_BLOCK_NAMES[part]}.{kind}"
    raise GGUFError(f"unexpected tensor {gguf_name!r} for a Llama-family model")


def _architecture(meta: dict[str, Any]) -> str:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"GGUF architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
    return str(arch)


def _round(value: float) -> float:
    """GGUF stores floats as float32: 9.99999997e-07 back to 1e-06."""
    return float(f"{float(value):.7g}")


def torch_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """A GGUF tensor's shape in PyTorch order (GGUF lists dimensions fastest-first)."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def hf_config_from_metadata(meta: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                            dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    """config.json for the model the GGUF holds; ``shapes`` maps GGUF tensor names to torch shapes."""
    arch = _architecture(meta)

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"{arch}.{key}", default)
        if value is None:
            raise GGUFError(f"GGUF metadata lacks {arch}.{key}")
        return value

    hidden = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(meta.get(f"{arch}.attention.key_length") or hidden // heads)
    if "token_embd.weight" in shapes:
        vocab = shapes["token_embd.weight"][0]
    elif "tokenizer.ggml.tokens" in meta:
        vocab = len(meta["tokenizer.ggml.tokens"])
    else:
        vocab = int(get("vocab_size"))
    eos_ids = gguf_tokenizer.end_of_generation_ids(meta) if "tokenizer.ggml.tokens" in meta else []
    config: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[arch]],
        "model_type": arch,
        "vocab_size": int(vocab),
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get(f"{arch}.attention.head_count_kv") or heads),
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _round(get("attention.layer_norm_rms_epsilon", 1e-6)),
        "rope_theta": _round(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in shapes,
        "initializer_range": 0.02,
        "use_cache": True,
        "torch_dtype": _DTYPE_NAMES.get(dtype, "bfloat16"),
    }
    if (bos := meta.get("tokenizer.ggml.bos_token_id")) is not None:
        config["bos_token_id"] = int(bos)
    if eos_ids:
        config["eos_token_id"] = eos_ids[0]
    scaling = meta.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(meta.get(f"{arch}.rope.scaling.factor", 1.0))}
    if arch == "llama":
        config.update(attention_bias="blk.0.attn_q.bias" in shapes, mlp_bias=False, pretraining_tp=1)
    else:
        config.update(use_sliding_window=False, max_window_layers=config["num_hidden_layers"],
                      attention_dropout=0.0)
    return config


def _unpermute_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, (half, 2) interleaved rows back to (2, half)."""
    rows = weight.shape[0]
    head_dim = rows // n_heads
    return (weight.reshape(n_heads, head_dim // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def dequantize_tensor(tensor: ReaderTensor, meta: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
    """One GGUF tensor as a torch tensor in Hugging Face layout and ``dtype``."""
    array = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)
    array = array.reshape(torch_shape(tensor))
    if meta.get("general.architecture") == "llama":
        heads = int(meta["llama.attention.head_count"])
        if ".attn_q." in tensor.name:
            array = _unpermute_rows(array, heads)
        elif ".attn_k." in tensor.name:
            array = _unpermute_rows(array, int(meta.get("llama.attention.head_count_kv") or heads))
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")  # memory-mapped or permuted: own the data
    return torch.from_numpy(array).to(dtype)


def _plan(reader: GGUFReader) -> list[tuple[ReaderTensor, str]]:
    """(GGUF tensor, HF name) for every tensor the model needs, in file order."""
    plan = []
    for tensor in reader.tensors:
        name = hf_tensor_name(tensor.name)
        if name is not None:
            plan.append((tensor, name))
    if not any(name == "model.embed_tokens.weight" for _, name in plan):
        raise GGUFError("GGUF has no token_embd.weight")
    return plan


def iter_hf_tensors(reader: GGUFReader, meta: dict[str, Any],
                    dtype: torch.dtype = torch.bfloat16) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, tensor) pairs, dequantized one at a time."""
    for tensor, name in _plan(reader):
        yield name, dequantize_tensor(tensor, meta, dtype)


def _open(path: str | Path) -> tuple[GGUFReader, dict[str, Any], dict[str, Any]]:
    """Reader, metadata and config.json dict of a GGUF file."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path} not found")
    try:
        reader = GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise GGUFError(f"{path} is not a readable GGUF file: {exc}") from exc
    meta = read_metadata(reader)
    _architecture(meta)
    shapes = {t.name: torch_shape(t) for t in reader.tensors}
    return reader, meta, shapes


def _tokenizer_files(meta: dict[str, Any], config: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if "tokenizer.ggml.tokens" not in meta:
        raise GGUFError("GGUF has no tokenizer metadata (tokenizer.ggml.tokens)")
    return (gguf_tokenizer.tokenizer_json(meta),
            gguf_tokenizer.tokenizer_config(meta, model_max_length=config["max_position_embeddings"]),
            gguf_tokenizer.generation_config(meta))


def read_gguf(path: str | Path, dtype: torch.dtype = torch.bfloat16) -> GGUFContents:
    """Everything a Hugging Face folder would hold, read from one GGUF file (weights in ``dtype``)."""
    reader, meta, shapes = _open(path)
    config = hf_config_from_metadata(meta, shapes, dtype)
    state = dict(iter_hf_tensors(reader, meta, dtype))
    tok_json, tok_config, gen_config = _tokenizer_files(meta, config)
    return GGUFContents(config, state, tok_json, tok_config, gen_config)


def convert_gguf_to_hf_folder(gguf_path: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.bfloat16,
                              progress: bool = True) -> Path:
    """Write a Hugging Face folder (config, single ``model.safetensors``, tokenizer files) from a GGUF file.

    Tensors are dequantized and written one at a time, so peak memory is about one tensor.
    """
    reader, meta, shapes = _open(gguf_path)
    config = hf_config_from_metadata(meta, shapes, dtype)
    tok_json, tok_config, gen_config = _tokenizer_files(meta, config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan = _plan(reader)
    layout = [TensorLayout(name, dtype, torch_shape(tensor)) for tensor, name in plan]
    with _progress_bar(progress) as bar:
        task = bar.add_task(f"converting {Path(gguf_path).name}", total=len(plan))
        with StreamingSafetensorsWriter(out / "model.safetensors", layout) as writer:
            for tensor, name in plan:
                bar.update(task, description=f"converting {tensor.name}")
                writer.write(name, dequantize_tensor(tensor, meta, dtype))
                bar.advance(task)
        bar.update(task, description=f"converted {Path(gguf_path).name}")
    files = {"config.json": config, "tokenizer_config.json": tok_config, "generation_config.json": gen_config}
    for name, content in files.items():
        (out / name).write_text(gguf_tokenizer.dumps(content), encoding="utf-8")
    (out / "tokenizer.json").write_text(tok_json, encoding="utf-8")
    return out


def _progress_bar(enabled: bool):  # -> rich.progress.Progress
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=False)

