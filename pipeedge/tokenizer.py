"""Client-side tokenization for text generation.

``load_tokenizer`` wraps the Hugging Face tokenizer of a local model directory (never downloads).
Without one (random-weight tests, a directory holding only weights) it falls back to
``ByteTokenizer``: UTF-8 bytes shifted by 3 (0 = pad, 1 = bos, 2 = eos), which fits any
vocabulary of at least 259 ids (the tiny test configs have 320).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class Tokenizer:
    """What the generator needs from a tokenizer."""

    name = "tokenizer"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """Token ids of a chat prompt ending where the assistant's reply begins."""
        return self.encode(simple_chat_prompt(messages))


def simple_chat_prompt(messages: Sequence[Mapping[str, Any]]) -> str:
    """A plain template for models without a chat template of their own."""
    parts = [f"{m.get('role', 'user')}: {message_text(m)}\n" for m in messages]
    return "".join(parts) + "assistant:"


def message_text(message: Mapping[str, Any]) -> str:
    """An OpenAI message's content as text (string, or a list of {"type": "text"} parts)."""
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content
                       if isinstance(p, Mapping) and p.get("type", "text") == "text")
    raise ValueError(f"message content must be a string or a list of text parts, "
                     f"got {type(content).__name__}")


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: id = byte + 3; ids 0-2 are pad/bos/eos; ids >= 259 decode to ''."""

    name = "bytes"
    OFFSET = 3

    def __init__(self, vocab_size: int = 259, *, bos_token_id: int | None = None,
                 eos_token_ids: Sequence[int] = (2,)) -> None:
        if vocab_size < 256 + self.OFFSET:
            raise ValueError(f"a byte-level tokenizer needs a vocabulary of at least "
                             f"{256 + self.OFFSET} ids, the model has {vocab_size}; give the "
                             "model's tokenizer directory instead")
        self.vocab_size = vocab_size
        self.bos_token_id = bos_token_id
        self.eos_token_ids = tuple(eos_token_ids)

    def encode(self, text: str) -> list[int]:
        ids = [b + self.OFFSET for b in text.encode("utf-8")]
        return ([self.bos_token_id] if self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(i - self.OFFSET for i in ids if self.OFFSET <= i < 256 + self.OFFSET)
        return data.decode("utf-8", errors="replace")


class HFTokenizer(Tokenizer):
    """A transformers tokenizer loaded from a local directory."""

    def __init__(self, path: str | os.PathLike[str], eos_token_ids: Sequence[int] = ()) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.name = str(path)
        self.bos_token_id = self.tok.bos_token_id
        eos = list(eos_token_ids)
        if self.tok.eos_token_id is not None and self.tok.eos_token_id not in eos:
            eos.append(self.tok.eos_token_id)
        self.eos_token_ids = tuple(eos)

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=True))

    def chat_ids(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        if not getattr(self.tok, "chat_template", None):
            return super().chat_ids(messages)
        plain = [{"role": m.get("role", "user"), "content": message_text(m)} for m in messages]
        text = self.tok.apply_chat_template(plain, tokenize=False, add_generation_prompt=True)
        # The template already holds any BOS it wants.
        return list(self.tok.encode(text, add_special_tokens=False))


def config_eos_ids(config: Mapping[str, Any]) -> list[int]:
    eos = config.get("eos_token_id")
    if eos is None:
        return []
    return [int(e) for e in eos] if isinstance(eos, list) else [int(eos)]


def has_tokenizer(path: str | os.PathLike[str] | None) -> bool:
    if not path:
        return False
    directory = Path(path)
    return directory.is_dir() and any((directory / f).is_file() for f in _TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike[str] | None,
                   config: Mapping[str, Any] | None = None) -> Tokenizer:
    """The tokenizer of local model directory ``path``, or the byte-level fallback.

    Args:
        path: a directory with tokenizer files (tokenizer.json, vocab.json, ...), or None.
        config: the model's config.json contents (vocabulary size, bos/eos ids for the fallback).
    """
    config = config or {}
    eos = config_eos_ids(config)
    if path and has_tokenizer(path):
        return HFTokenizer(path, eos)
    if path:
        log.info("%s has no tokenizer files; using the byte-level tokenizer", path)
    bos = config.get("bos_token_id")
    vocab = int(config.get("vocab_size", 259))
    return ByteTokenizer(vocab, bos_token_id=None if bos is None else int(bos),
                         eos_token_ids=eos or [2])


class TextStream:
    """Turns a growing list of token ids into text deltas, holding back an incomplete UTF-8
    character (the replacement char at the end of a partial decode) until it completes."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # emitted so far

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        full = self.tokenizer.decode(self.ids)
        if full.endswith("\ufffd"):
            return ""
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text = full if full.startswith(self.text) else self.text
        return delta

    def flush(self) -> str:
        full = self.tokenizer.decode(self.ids)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += delta
        return delta
