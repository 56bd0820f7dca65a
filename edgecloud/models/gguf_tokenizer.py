"""Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json) from a GGUF's ``tokenizer.*`` metadata.

GGUF files of Llama-family models with a byte-level BPE vocabulary (``tokenizer.ggml.model == "gpt2"``:
Qwen2, SmolLM, Llama 3) carry the vocabulary, the merges, token types and special-token ids as metadata.
This module rebuilds the equivalent ``tokenizers`` pipeline: normalizer, pre-tokenizer split chosen by
``tokenizer.ggml.pre``, byte-level BPE, byte-level decoder, and added tokens.
"""

from __future__ import annotations

import json
import logging
from functools import cache
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType), as stored in tokenizer.ggml.token_type.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer splits, keyed by llama.cpp's ``tokenizer.ggml.pre`` names.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
}
_NFC_PRES = {"qwen2", "deepseek-r1-qwen"}  # Qwen2's own tokenizer.json normalizes to NFC
_IGNORE_MERGES_PRES = {"llama-bpe", "llama3", "llama-v3", "smaug-bpe", "falcon3"}
# Token texts that end a turn; llama.cpp stops on these too (its "end of generation" set).
_END_OF_GENERATION = {"<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
                      "<|end_of_text|>", "<EOT>"}
_SPECIAL_KEYS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                 "pad_token": "padding_token_id"}


class GGUFTokenizerError(ValueError):
    """GGUF tokenizer metadata this module cannot turn into a tokenizer."""


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: every byte as one printable character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _spell_byte_level(token: str) -> str:
    """A token stored as raw text, respelled in the byte-level alphabet (as the vocabulary expects)."""
    spelling = byte_to_unicode()
    return "".join(spelling[b] for b in token.encode("utf-8"))


def _pre_tokenizer(pre: str) -> pre_tokenizers.PreTokenizer:
    if pre in _SPLITS:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre == "smollm":  # SmolLM: single digits, then GPT-2's split
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre not in ("default", "gpt2", "gpt-2"):
        log.warning("unknown GGUF pre-tokenizer %r: using GPT-2's split", pre)
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _token_types(meta: dict[str, Any], count: int) -> list[int]:
    types = meta.get("tokenizer.ggml.token_type")
    if types is None:
        return [NORMAL] * count
    if len(types) != count:
        raise GGUFTokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {count} tokens")
    return [int(t) for t in types]


def _special_token(meta: dict[str, Any], key: str) -> tuple[int, str] | None:
    """(id, text) of a special token named by ``tokenizer.ggml.<key>``, if set and in range."""
    token_id = meta.get(f"tokenizer.ggml.{key}")
    tokens = meta["tokenizer.ggml.tokens"]
    if token_id is None or not 0 <= int(token_id) < len(tokens):
        return None
    return int(token_id), tokens[int(token_id)]


def build_tokenizer(meta: dict[str, Any]) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equivalent to the byte-level BPE tokenizer the GGUF describes."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFTokenizerError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    types = _token_types(meta, len(tokens))
    pre = str(meta.get("tokenizer.ggml.pre", "default"))
    alphabet = set(byte_to_unicode().values())

    vocab: dict[str, int] = {}
    for index, (token, token_type) in enumerate(zip(tokens, types, strict=True)):
        if token_type in (NORMAL, UNUSED) and not set(token) <= alphabet:
            token = _spell_byte_level(token)
        vocab.setdefault(token, index)
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                     ignore_merges=pre in _IGNORE_MERGES_PRES)

    tokenizer = Tokenizer(bpe)
    if pre in _NFC_PRES:
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = _post_processor(meta)

    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types, strict=True) if kind == CONTROL]
    user = [AddedToken(t, special=False, normalized=False)
            for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED]
    tokenizer.add_special_tokens(control)
    tokenizer.add_tokens(user)
    return tokenizer


def _post_processor(meta: dict[str, Any]) -> processors.PostProcessor:
    """Byte-level offsets, plus BOS/EOS insertion when the GGUF asks for it."""
    byte_level = processors.ByteLevel(trim_offsets=False)
    bos = _special_token(meta, "bos_token_id") if meta.get("tokenizer.ggml.add_bos_token") else None
    eos = _special_token(meta, "eos_token_id") if meta.get("tokenizer.ggml.add_eos_token") else None
    if bos is None and eos is None:
        return byte_level
    def segment(name: str, type_id: int) -> list[str]:
        return ([f"{bos[1]}:{type_id}"] if bos else []) + [f"${name}:{type_id}"] + (
            [f"{eos[1]}:{type_id}"] if eos else [])

    specials = sorted({(text, tid) for tid, text in (x for x in (bos, eos) if x)})
    template = processors.TemplateProcessing(single=" ".join(segment("A", 0)),
                                             pair=" ".join(segment("A", 0) + segment("B", 1)),
                                             special_tokens=specials)
    return processors.Sequence([byte_level, template])


def tokenizer_json(meta: dict[str, Any]) -> str:
    """The content of ``tokenizer.json``."""
    return build_tokenizer(meta).to_str()


def tokenizer_config(meta: dict[str, Any], *, model_max_length: int | None = None) -> dict[str, Any]:
    """The content of ``tokenizer_config.json``: special tokens, BOS/EOS flags and the chat template."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
    }
    for name, key in _SPECIAL_KEYS.items():
        if (special := _special_token(meta, key)) is not None:
            config[name] = special[1]
    if (template := meta.get("tokenizer.chat_template")) is not None:
        config["chat_template"] = str(template)
    if model_max_length:
        config["model_max_length"] = int(model_max_length)
    return config


def end_of_generation_ids(meta: dict[str, Any]) -> list[int]:
    """Ids that end generation: EOS first, then EOT/EOM and control tokens that end a turn."""
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        if (special := _special_token(meta, key)) is not None and special[0] not in ids:
            ids.append(special[0])
    tokens = meta["tokenizer.ggml.tokens"]
    types = _token_types(meta, len(tokens))
    for index, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind == CONTROL and token in _END_OF_GENERATION and index not in ids:
            ids.append(index)
    return ids


def generation_config(meta: dict[str, Any]) -> dict[str, Any]:
    """The content of ``generation_config.json`` (token ids only; GGUF stores no sampling defaults)."""
    config: dict[str, Any] = {}
    if (bos := _special_token(meta, "bos_token_id")) is not None:
        config["bos_token_id"] = bos[0]
    eos = end_of_generation_ids(meta)
    if eos:
        config["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    if (pad := _special_token(meta, "padding_token_id")) is not None:
        config["pad_token_id"] = pad[0]
    return config


def dumps(config: dict[str, Any]) -> str:
    """JSON as written into model folders."""
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"
