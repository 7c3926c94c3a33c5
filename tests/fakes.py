"""Deterministic fakes for fast unit tests (the integration tests use the real models)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace

if TYPE_CHECKING:
    from appliance.store import KnowledgeBase

_WORD = re.compile(r"\w+")


def word_tokenizer() -> Tokenizer:
    """A tokenizer with one token per word or punctuation mark (all unknown)."""
    tok = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()  # type: ignore[assignment]
    return tok


class HashEmbedder:
    """Bag-of-words vectors by feature hashing: texts sharing words are similar."""

    def __init__(self, dim: int = 64, model_id: str = "hash-64") -> None:
        self._dim = dim
        self._id = model_id
        self.tokenizer = word_tokenizer()
        self.max_tokens = 256
        self.calls = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def dim(self) -> int:
        return self._dim

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "big")
                out[row, h % self._dim] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else out[row]
            if not norm:
                out[row, 0] = 1.0
        return out


Reply = str | Callable[[list[dict[str, str]]], str]


class FakeGenerator:
    """A deterministic generator: ``reply`` (a string, or a function of the messages)
    streamed in word-sized pieces; every call's messages are kept in ``calls``."""

    def __init__(self, reply: Reply = "Blue [1].", model_id: str = "fake-gen",
                 fail: bool = False) -> None:
        self.reply = reply
        self._id = model_id
        self.fail = fail
        self.calls: list[list[dict[str, str]]] = []
        self.biases: list[dict[str, float]] = []
        self.n_ctx = 2048

    @property
    def id(self) -> str:
        return self._id

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, messages: list[dict[str, str]], max_tokens: int,
               first_token_bias: Mapping[str, float] | None = None) -> Iterator[str]:
        self.calls.append(messages)
        self.biases.append(dict(first_token_bias or {}))
        if self.fail:
            raise RuntimeError("decode failed")
        text = self.reply(messages) if callable(self.reply) else self.reply
        for word in text.split(" ")[:max_tokens]:
            yield word + " "


def make_kb(path: Path, texts: Mapping[str, str], emb: HashEmbedder | None = None,
            collections: Mapping[str, str] | None = None) -> KnowledgeBase:
    """A new knowledge base at ``path`` holding one single-chunk document per (path, text),
    embedded by ``emb`` (a new :class:`HashEmbedder` by default), in collection
    ``collections[path]`` (default ``"default"``), titled and headed by its path."""
    from appliance.store import KnowledgeBase
    from appliance.types import Chunk

    emb = emb or HashEmbedder()
    kb = KnowledgeBase(path, create=True)
    kb.bind_embedder(emb)
    for doc, text in texts.items():
        chunk = Chunk(0, text, (doc,), None, 0, len(text), len(text.split()))
        kb.replace_document(path=doc, sha256=doc, size=1, mtime=1, title=doc, kind="text",
                            collection=(collections or {}).get(doc, "default"),
                            chunks=[chunk], vectors=emb.embed([text]))
    return kb
