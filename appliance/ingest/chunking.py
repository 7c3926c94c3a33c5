"""Heading-aware chunking sized in embedder tokens.

Each section a loader found is split on its own (so a chunk never spans two headings) by
``semantic-text-splitter``, which prefers paragraph, then sentence, then word boundaries
and counts with the embedder's own tokenizer. The heading path is embedded with the chunk,
so the budget for the text is the embedder's window minus the heading and special tokens:
no chunk is partly invisible to vector search.

A chunk is also held to ``_MAX_CHARS_PER_TOKEN`` characters per token of its budget. Normal
text never comes near that, but a word the tokenizer cannot split becomes one ``[UNK]``
token however long it is, so a hex dump would otherwise be a single chunk. Runs without
whitespace longer than that bound never reach the splitter (it is slow on them): they are
cut anywhere, after the last token that fits or at the character bound, in time linear in
their length. Text with many shorter such words is split with a size that counts
``_MAX_CHARS_PER_TOKEN`` characters as one token.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from typing import Any

from semantic_text_splitter import TextSplitter

from appliance.types import Chunk, LoadedDocument

__all__ = ["Chunker", "embed_text"]

_SPECIAL_TOKENS = 2  # [CLS] and [SEP]
_MIN_TEXT_TOKENS = 48
_SECTION_GAP = "\n\n"
_MAX_CHARS_PER_TOKEN = 16


def embed_text(heading: str, text: str) -> str:
    """The text the embedder sees for a chunk: its heading path, then its text."""
    return f"{heading}\n{text}" if heading else text


class Chunker:
    """Cuts a LoadedDocument into Chunks of at most ``max_tokens`` embedder tokens."""

    def __init__(self, tokenizer: Any, max_tokens: int = 256, overlap: int = 32) -> None:
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap = overlap
        self._splitters: dict[int, TextSplitter] = {}
        self._bounded_splitters: dict[int, TextSplitter] = {}

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _splitter(self, capacity: int) -> TextSplitter:
        if capacity not in self._splitters:
            self._splitters[capacity] = TextSplitter.from_huggingface_tokenizer(
                self._tokenizer, capacity, self._overlap(capacity)
            )
        return self._splitters[capacity]

    def _overlap(self, capacity: int) -> int:
        return min(self.overlap, capacity // 4)

    def _bounded_splitter(self, capacity: int) -> TextSplitter:
        """A splitter that also counts ``_MAX_CHARS_PER_TOKEN`` characters as a token."""
        if capacity not in self._bounded_splitters:

            def size(text: str) -> int:
                return max(self.count_tokens(text), -(-len(text) // _MAX_CHARS_PER_TOKEN))

            self._bounded_splitters[capacity] = TextSplitter.from_callback(
                size, capacity, self._overlap(capacity)
            )
        return self._bounded_splitters[capacity]

    def _pieces(self, text: str, capacity: int) -> Iterator[tuple[int, str]]:
        """(offset, piece) of ``text``: at most ``capacity`` tokens and
        ``capacity * _MAX_CHARS_PER_TOKEN`` characters each, in order."""
        start = 0
        for run in _long_run(capacity * _MAX_CHARS_PER_TOKEN).finditer(text):
            yield from self._split(text[start : run.start()], start, capacity)
            yield from self._cut(run.group(), run.start(), capacity)
            start = run.end()
        yield from self._split(text[start:], start, capacity)

    def _split(self, text: str, base: int, capacity: int) -> Iterator[tuple[int, str]]:
        pieces = self._splitter(capacity).chunk_indices(text)
        if any(len(piece) > capacity * _MAX_CHARS_PER_TOKEN for _, piece in pieces):
            # Words that are one [UNK] each: few tokens, many characters. The bounded
            # splitter gives the same chunks on normal text but is slower.
            pieces = self._bounded_splitter(capacity).chunk_indices(text)
        for offset, piece in pieces:
            yield base + offset, piece

    def _cut(self, run: str, base: int, capacity: int) -> Iterator[tuple[int, str]]:
        """Cut a run without whitespace anywhere, keeping the splitter's overlap share."""
        max_chars = capacity * _MAX_CHARS_PER_TOKEN
        start, size = 0, max_chars
        while start < len(run):
            # Grow a window from the last piece's length until it holds more than
            # ``capacity`` tokens, then end the piece where the ``capacity``-th token ends.
            while True:
                end = min(len(run), start + size)
                encoding = self._tokenizer.encode(run[start:end], add_special_tokens=False)
                if len(encoding.ids) > capacity:
                    end = start + max(1, encoding.offsets[capacity - 1][1])
                    break
                if end == len(run) or size >= max_chars:
                    break
                size = min(max_chars, 2 * size)
            while end - start > 1 and self.count_tokens(run[start:end]) > capacity:
                end = start + max(1, (end - start) * 9 // 10)
            yield base + start, run[start:end]
            if end == len(run):
                return
            length = end - start
            start = end - length * self._overlap(capacity) // capacity
            size = min(max_chars, length + length // 4 + 8)

    def heading_for(self, doc: LoadedDocument, heading_path: tuple[str, ...]) -> tuple[str, ...]:
        """The heading path a chunk records: the section's, else the document title."""
        if heading_path:
            return heading_path
        return (doc.title,) if doc.title else ()

    def chunk(self, doc: LoadedDocument) -> list[Chunk]:
        """All chunks of ``doc`` in reading order, with offsets into its extracted text."""
        chunks: list[Chunk] = []
        base = 0
        for section in doc.sections:
            text = section.text
            if text.strip():
                path = self.heading_for(doc, section.heading_path)
                heading = " > ".join(path)
                # Long heading paths keep only their last parts so the text keeps its room.
                while path and self.count_tokens(heading) > self.max_tokens // 3:
                    path = path[1:]
                    heading = " > ".join(path)
                budget = self.max_tokens - _SPECIAL_TOKENS - (
                    self.count_tokens(heading) + 1 if heading else 0
                )
                capacity = max(_MIN_TEXT_TOKENS, budget)
                for offset, piece in self._pieces(text, capacity):
                    if not piece.strip():
                        continue
                    tokens = self.count_tokens(embed_text(heading, piece)) + _SPECIAL_TOKENS
                    chunks.append(
                        Chunk(
                            order=len(chunks),
                            text=piece,
                            heading_path=path,
                            page=section.page,
                            start=base + offset,
                            end=base + offset + len(piece),
                            token_count=tokens,
                        )
                    )
            base += len(text) + len(_SECTION_GAP)
        return chunks


@cache
def _long_run(max_chars: int) -> re.Pattern[str]:
    # The lookbehind starts a match only at a run's first character, keeping the scan linear.
    return re.compile(rf"(?<!\S)\S{{{max_chars + 1},}}")
