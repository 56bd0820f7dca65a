"""Tokenizer wrapper: chat template rendering and streaming detokenization, against transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from edgecloud.models.tokenizer import Tokenizer, TokenizerError

CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = ["def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
          "héllo wörld ✓ — naïve café 日本語", "for i in range(10):\n    print(i)\n"] * 20


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tok")
    backend = BackendTokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    return path


def test_chat_template_matches_transformers(folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours = Tokenizer.from_folder(folder)
    theirs = transformers.AutoTokenizer.from_pretrained(folder)
    messages = [{"role": "user", "content": "Write fib in Python."}]
    text = ours.apply_chat_template(messages)
    assert text == theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.encode(text) == theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.prompt_ids("Write fib in Python.") == ours.encode(text)
    assert ours.prompt_ids("x = 1", chat=False) == ours.encode("x = 1")


def test_eos_ids_come_from_config_and_generation_config(folder: Path) -> None:
    tok = Tokenizer.from_folder(folder)
    assert tok.eos_token_ids == {2, 0}


def test_stream_decoder_reassembles_multibyte_text(folder: Path) -> None:
    tok = Tokenizer.from_folder(folder)
    text = "naïve café ✓ 日本語 def fib(n): return n"
    ids = tok.encode(text)
    decoder = tok.stream_decoder()
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_missing_files_and_template_give_clear_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json not found"):
        Tokenizer.from_folder(tmp_path)
    tok = Tokenizer.from_folder(folder)
    tok.chat_template = None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
