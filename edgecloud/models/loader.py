"""Build a runtime model from a Hugging Face folder, a GGUF file, or a model-zoo name."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from edgecloud.models.config import ModelConfig
from edgecloud.models.llama import LlamaModel, RotaryEmbedding


class WeightsError(ValueError):
    """Checkpoint tensors that do not fit the model's config."""


def runtime_state_dict(hf_state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Map Hugging Face parameter names to the runtime's (drop ``model.``; drop a tied lm_head)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in hf_state.items():
        if name.startswith("model."):
            name = name[len("model."):]
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if name.endswith("rotary_emb.inv_freq"):
            continue
        out[name] = tensor
    return out


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder's ``model.safetensors`` or sharded ``model-*.safetensors``."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"{path} not found")
        state.update(load_file(str(path)))
    return state


def build_model(config: ModelConfig, hf_state: dict[str, torch.Tensor], *,
                dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu") -> LlamaModel:
    """Create a model on ``device`` in ``dtype`` holding the given Hugging Face weights."""
    state = {k: v.to(device=device, dtype=dtype) for k, v in runtime_state_dict(hf_state, config).items()}
    with torch.device("meta"):
        model = LlamaModel(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing/unexpected keys or shape mismatch
        raise WeightsError(f"checkpoint does not match config: {exc}") from exc
    model.rotary = RotaryEmbedding(config.head_dim, config.rope_theta).to(device)
    return model.eval().requires_grad_(False)


def load_model(source: str | Path, *, dtype: torch.dtype = torch.bfloat16,
               device: str | torch.device = "cpu") -> LlamaModel:
    """Load a model from a zoo name, a Hugging Face folder or a ``.gguf`` file."""
    path = resolve_source(source)
    if path.suffix == ".gguf":
        from edgecloud.models.gguf_loader import read_gguf

        contents = read_gguf(path, dtype=dtype)
        return build_model(ModelConfig.from_hf(contents.hf_config), contents.state_dict, dtype=dtype, device=device)
    config = ModelConfig.from_folder(path)
    return build_model(config, read_safetensors_folder(path), dtype=dtype, device=device)


def resolve_source(source: str | Path) -> Path:
    """A local folder/GGUF path as is; anything else through the model zoo (pulling if needed)."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    from edgecloud.models import zoo

    return zoo.resolve(str(source))


def model_display_name(source: str | Path) -> str:
    """How a node names its model to others: the zoo name, or the folder/file name of a path."""
    text = str(source)
    return Path(text).name if ("/" in text or Path(text).exists()) and not text.startswith("hf://") else text


def save_model(model: LlamaModel, folder: str | Path) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (Hugging Face names) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2))
    state = {("lm_head.weight" if name == "lm_head.weight" else f"model.{name}"): t.contiguous()
             for name, t in model.state_dict().items() if not name.startswith("rotary.")}
    save_file(state, str(folder / "model.safetensors"))
    return folder
