"""GGUF reading: tiny random Llama/Qwen2 models written as GGUF (llama.cpp's conventions) read back exactly.

Oracles: the original weights, transformers on the converted folder (logits), and transformers' own GGUF
tokenizer conversion. Real-model checks against the zoo's GGUFs are marked slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgecloud.models import gguf_tokenizer
from edgecloud.models.gguf_loader import GGUFError, convert_gguf_to_hf_folder, read_gguf
from edgecloud.models.gguf_writer import permute_rows, write_gguf
from edgecloud.models.loader import load_model

transformers = pytest.importorskip("transformers")

TEXTS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "héllo wörld ✓ — naïve café 日本語 🤖",
    "<|im_start|>user\nfor i in range(10):<|im_end|>\n<|im_start|>assistant\n",
    "x = 12345 + 0.5e-3  # it's   HERE'S\t\ttabs\n\n\n",
    "",
]


def tiny_hf_model(arch: str, vocab: int, *, tied: bool, seed: int = 0) -> transformers.PreTrainedModel:
    """A random transformers Llama or Qwen2 model (fp32), small enough for a unit test."""
    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=256,
                  tie_word_embeddings=tied, bos_token_id=0, eos_token_id=2)
    torch.manual_seed(seed)
    if arch == "llama":
        config = transformers.LlamaConfig(rope_theta=10000.0, **common)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(rope_theta=1000000.0, **common)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():  # sharper than the default init so that errors show in the logits
            p.normal_(0.0, 0.2)
    return model.eval().requires_grad_(False)


def hf_config_dict(model: transformers.PreTrainedModel) -> dict:
    config = model.config.to_dict()
    config["rope_theta"] = model.config.rope_parameters["rope_theta"]
    return config


def token_count(folder: Path) -> int:
    data = json.loads((folder / "tokenizer.json").read_text())
    return len(data["model"]["vocab"]) + sum(1 for t in data["added_tokens"] if t["id"] >= len(data["model"]["vocab"]))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory, tiny_tokenizer_folder):
    """(arch, transformers model, GGUF path in F32) with the conftest's tiny BPE tokenizer."""
    arch = request.param
    model = tiny_hf_model(arch, token_count(tiny_tokenizer_folder), tied=arch == "qwen2")
    path = tmp_path_factory.mktemp(f"gguf-{arch}") / "tiny.gguf"
    write_gguf(path, hf_config_dict(model), model.state_dict(), tiny_tokenizer_folder,
               pre="default" if arch == "llama" else "qwen2")
    return arch, model, path


def expected_state(model: transformers.PreTrainedModel) -> dict[str, torch.Tensor]:
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    return state


def test_read_gguf_equals_original_weights_and_config(tiny) -> None:
    arch, model, path = tiny
    contents = read_gguf(path, dtype=torch.float32)
    expected = expected_state(model)
    assert contents.state_dict.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(contents.state_dict[name], tensor), name
    cfg = contents.hf_config
    assert cfg["model_type"] == arch
    assert cfg["architectures"] == [type(model).__name__]
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings"):
        assert cfg[key] == getattr(model.config, key), key
    assert cfg["rope_theta"] == model.config.rope_parameters["rope_theta"]
    assert contents.tokenizer_config["eos_token"] == "<|im_end|>"
    assert contents.tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert contents.generation_config["eos_token_id"][0] == 2


def test_read_gguf_bf16_default(tiny) -> None:
    _, model, path = tiny
    contents = read_gguf(path)
    weight = contents.state_dict["model.layers.0.self_attn.q_proj.weight"]
    assert weight.dtype == torch.bfloat16
    torch.testing.assert_close(weight, model.model.layers[0].self_attn.q_proj.weight.to(torch.bfloat16))


def test_converted_folder_matches_original_logits_in_transformers(tiny, tmp_path) -> None:
    _, model, path = tiny
    folder = convert_gguf_to_hf_folder(path, tmp_path / "hf", dtype=torch.float32, progress=False)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (folder / name).is_file(), name
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-4, rtol=0)
    # The runtime reads the folder and the GGUF itself to the same logits.
    with torch.no_grad():
        for source in (folder, path):
            ours = load_model(source, dtype=torch.float32)
            torch.testing.assert_close(ours(ids), model(ids).logits, atol=1e-4, rtol=1e-4)


def test_safetensors_written_by_streaming_writer_loads(tiny, tmp_path) -> None:
    _, model, path = tiny
    folder = convert_gguf_to_hf_folder(path, tmp_path / "hf", progress=False)
    tensors = load_file(str(folder / "model.safetensors"))
    assert tensors.keys() == expected_state(model).keys()
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    config = json.loads((folder / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"


def test_quantized_q8_0_within_tolerance(tiny, tmp_path, tiny_tokenizer_folder) -> None:
    _, model, _ = tiny
    path = tmp_path / "q8.gguf"
    write_gguf(path, hf_config_dict(model), model.state_dict(), tiny_tokenizer_folder,
               quant=gguf.GGMLQuantizationType.Q8_0)
    contents = read_gguf(path, dtype=torch.float32)
    for name, tensor in expected_state(model).items():
        # Q8_0: blocks of 32 with one scale; error at most half a step of max|block| / 127.
        tolerance = tensor.abs().max().item() / 127
        torch.testing.assert_close(contents.state_dict[name], tensor, atol=tolerance, rtol=0, msg=name)
    reader = gguf.GGUFReader(path)
    assert {t.tensor_type for t in reader.tensors if len(t.shape) == 2} == {gguf.GGMLQuantizationType.Q8_0}


def test_llama_permutation_roundtrip_and_oracle(tiny) -> None:
    """llama.cpp permutes q/k rows of the llama arch: the file holds them permuted, the reader undoes it."""
    arch, model, path = tiny
    reader = gguf.GGUFReader(path)
    stored = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
    original = model.model.layers[0].self_attn.q_proj.weight.numpy()
    expected = permute_rows(original, 4) if arch == "llama" else original
    np.testing.assert_array_equal(np.asarray(stored.data).reshape(original.shape), expected)
    if arch == "llama":
        assert not np.array_equal(expected, original)
    # transformers' own GGUF reader as an independent oracle for the file's layout.
    utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(model.config)
    theirs = utils.load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)["tensors"]
    ours = read_gguf(path, dtype=torch.float32).state_dict
    for name, tensor in ours.items():
        assert torch.equal(torch.as_tensor(np.asarray(theirs[name])).float(), tensor), name


@pytest.mark.parametrize("pre", ["default", "qwen2", "llama-bpe"])
def test_tokenizer_equals_transformers_gguf_conversion(tiny_tokenizer_folder, tmp_path, pre) -> None:
    # A llama-typed folder: transformers 5 swaps in its own Qwen2Tokenizer for model_type qwen2.
    model = tiny_hf_model("llama", token_count(tiny_tokenizer_folder), tied=True)
    path = write_gguf(tmp_path / "tok.gguf", hf_config_dict(model), model.state_dict(), tiny_tokenizer_folder,
                      pre=pre)
    folder = convert_gguf_to_hf_folder(path, tmp_path / "hf", progress=False)
    ours = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tok.gguf")
    original = transformers.AutoTokenizer.from_pretrained(tiny_tokenizer_folder)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        if pre == "default":  # same split as the tokenizer the GGUF was made from
            assert ids == original.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
    assert ours.convert_tokens_to_ids("<|im_start|>") == original.convert_tokens_to_ids("<|im_start|>")
    assert "<|im_end|>" in ours.all_special_tokens


def test_special_flags_from_token_types() -> None:
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": ["a", "b", "ab", "<|s|>", "<tool>", "[PAD5]"],
            "tokenizer.ggml.token_type": [1, 1, 1, 3, 4, 5], "tokenizer.ggml.merges": ["a b"],
            "tokenizer.ggml.eos_token_id": 3, "tokenizer.ggml.bos_token_id": 3, "tokenizer.ggml.add_bos_token": True}
    tok = gguf_tokenizer.build_tokenizer(meta)
    assert tok.encode("ab<|s|>b<tool>", add_special_tokens=False).ids == [2, 3, 1, 4]
    assert tok.encode("ab").ids == [3, 2]  # add_bos_token
    added = {t.content: t.special for t in tok.get_added_tokens_decoder().values()}
    assert added == {"<|s|>": True, "<tool>": False}
    assert gguf_tokenizer.generation_config(meta) == {"bos_token_id": 3, "eos_token_id": 3}


def test_unsupported_inputs(tmp_path) -> None:
    with pytest.raises(GGUFError, match="not found"):
        read_gguf(tmp_path / "missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf at all")
    with pytest.raises(GGUFError):
        read_gguf(bad)
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFError, match="architecture 'gpt2' is not supported"):
        read_gguf(tmp_path / "gpt2.gguf")
    with pytest.raises(gguf_tokenizer.GGUFTokenizerError, match="'llama'"):
        gguf_tokenizer.build_tokenizer({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": []})


# --- real models (slow) ------------------------------------------------------------------------------

REAL_TEXTS = [*TEXTS, "<tool_call>{\"a\": 1}</tool_call> <|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
              "import numpy as np\nclass Foo(Bar):\n\tdef __init__(self, *args, **kw) -> None: ..."]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"])
def test_real_gguf_tokenizer_equals_transformers(name) -> None:
    from edgecloud.models import zoo

    folder = zoo.pull(name, progress=False)
    path = zoo.gguf_path(name)
    ours = transformers.AutoTokenizer.from_pretrained(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    for text in REAL_TEXTS:
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == text
    assert len(ours.encode("<|im_start|>", add_special_tokens=False)) == 1


@pytest.mark.slow
def test_real_llama_gguf_equals_transformers_reader() -> None:
    """SmolLM2 (llama arch, permuted q/k, Q4_1/Q8_0) dequantized exactly as transformers does it."""
    from edgecloud.models import zoo

    name = "smollm2-135m-instruct"
    folder = zoo.pull(name, progress=False)
    utils = pytest.importorskip("transformers.modeling_gguf_pytorch_utils")
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config)
    theirs = utils.load_gguf_checkpoint(str(zoo.gguf_path(name)), return_tensors=True,
                                        model_to_load=skeleton)["tensors"]
    ours = load_file(str(folder / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    for key, tensor in ours.items():
        assert torch.equal(tensor, torch.as_tensor(np.asarray(theirs[key])).to(torch.bfloat16)), key
