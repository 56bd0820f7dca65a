"""Tokenizer from tokenizer.json (``tokenizers``), chat templates, and streaming detokenization."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer as BackendTokenizer

Message = dict[str, str]


class TokenizerError(ValueError):
    """A tokenizer folder that is missing files or cannot render a chat."""


USER_SLOT = "\ue000edgecloud-user-message\ue000"  # private-use marker where the user text goes


def _raise_exception(message: str) -> None:
    raise TokenizerError(f"chat template error: {message}")


def _special_token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as strings or as AddedToken dicts."""
    if isinstance(value, dict):
        return value.get("content")
    return value


@dataclass
class Tokenizer:
    """Text <-> token ids for one model, plus its chat template."""

    backend: BackendTokenizer
    chat_template: str | None = None
    special_tokens: dict[str, str] = field(default_factory=dict)  # bos_token, eos_token, ...
    eos_token_ids: frozenset[int] = frozenset()

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        """Read tokenizer.json, tokenizer_config.json and generation_config.json of a model folder."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"{path} not found")
        backend = BackendTokenizer.from_file(str(path))
        config = _read_json(folder / "tokenizer_config.json")
        generation = _read_json(folder / "generation_config.json")
        special = {key: text for key in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if (text := _special_token_text(config.get(key)))}
        eos_ids = set()
        if "eos_token" in special and (tid := backend.token_to_id(special["eos_token"])) is not None:
            eos_ids.add(tid)
        gen_eos = generation.get("eos_token_id")
        eos_ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return cls(backend, template, special, frozenset(int(i) for i in eos_ids))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` exactly as written (special-token text included is recognised).

        For trusted text only (a rendered chat template); user text goes through ``encode_text``.
        """
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_text(self, text: str) -> list[int]:
        """Token ids of untrusted text: ``<|im_end|>`` typed by a user stays plain text, not a control token."""
        return self._plain_backend.encode(text, add_special_tokens=False).ids

    @cached_property
    def _plain_backend(self) -> BackendTokenizer:
        plain = BackendTokenizer.from_str(self.backend.to_str())
        plain.encode_special_tokens = True
        return plain

    def decode(self, ids: list[int], *, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    @cached_property
    def _template(self) -> jinja2.Template:
        if not self.chat_template:
            raise TokenizerError("this model has no chat template; use a raw prompt")
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                           extensions=["jinja2.ext.loopcontrols"])
        env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
            x, indent=indent, ensure_ascii=ensure_ascii)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        return env.from_string(self.chat_template)

    def apply_chat_template(self, messages: list[Message], *, add_generation_prompt: bool = True) -> str:
        """Render a conversation with the model's chat template (as Hugging Face does)."""
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     tools=None, **self.special_tokens)

    def prompt_ids(self, prompt: str, *, chat: bool = True, system: str | None = None,
                   assistant_prefix: str = "") -> list[int]:
        """Ids for a user prompt: through the chat template when there is one and ``chat``.

        ``assistant_prefix`` opens the assistant turn (e.g. a Python code fence). The prompt and the
        prefix are encoded with special tokens off, so user text cannot open or close chat turns;
        only the template's own markup becomes control tokens.
        """
        if not (chat and self.chat_template):
            return self.encode_text(prompt)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": USER_SLOT}]
        parts = self.apply_chat_template(messages).split(USER_SLOT)
        if len(parts) != 2:
            raise TokenizerError("the chat template does not place the user message exactly once")
        before, after = parts
        return (self.encode(before) + self.encode_text(prompt) + self.encode(after)
                + self.encode_text(assistant_prefix))

    def stream_decoder(self) -> StreamDecoder:
        return StreamDecoder(self)


class StreamDecoder:
    """Turns a stream of token ids into text pieces, holding back incomplete UTF-8."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes (may be empty)."""
        self._ids.append(token_id)
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset:self._read_offset])
        text = self._tokenizer.decode(self._ids[self._prefix_offset:])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
            return text[len(prefix):]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of the stream (an incomplete character decodes as U+FFFD)."""
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset:self._read_offset])
        text = self._tokenizer.decode(self._ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self._ids)
        return text[len(prefix):]


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
