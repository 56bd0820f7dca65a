"""Tokenizer wrapper: chat template rendering and streaming detokenization, against transformers."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.models.tokenizer import Tokenizer, TokenizerError


@pytest.fixture
def folder(tiny_tokenizer_folder: Path) -> Path:
    return tiny_tokenizer_folder


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
    assert decoder.flush() == ""
    cut = tok.encode("日本")
    partial = tok.stream_decoder()
    held = "".join(partial.push(i) for i in cut[:-1])
    assert held + partial.flush() == tok.decode(cut[:-1])


def test_missing_files_and_template_give_clear_errors(tmp_path: Path, folder: Path) -> None:
    with pytest.raises(TokenizerError, match=r"tokenizer\.json not found"):
        Tokenizer.from_folder(tmp_path)
    tok = Tokenizer.from_folder(folder)
    tok.chat_template = None
    with pytest.raises(TokenizerError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
