"""Heading-aware chunking sized in embedder tokens.

Each section a loader found is split on its own (so a chunk never spans two headings) by
``semantic-text-splitter``, which prefers paragraph, then sentence, then word boundaries
and counts with the embedder's own tokenizer. The heading path is embedded with the chunk,
so the budget for the text is the embedder's window minus the heading and special tokens:
no chunk is partly invisible to vector search.
"""

from __future__ import annotations

from typing import Any

from semantic_text_splitter import TextSplitter

from appliance.types import Chunk, LoadedDocument

__all__ = ["Chunker", "embed_text"]

_SPECIAL_TOKENS = 2  # [CLS] and [SEP]
_MIN_TEXT_TOKENS = 48
_SECTION_GAP = "\n\n"


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

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _splitter(self, capacity: int) -> TextSplitter:
        if capacity not in self._splitters:
            overlap = min(self.overlap, capacity // 4)
            self._splitters[capacity] = TextSplitter.from_huggingface_tokenizer(
                self._tokenizer, capacity, overlap
            )
        return self._splitters[capacity]

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
                for offset, piece in self._splitter(capacity).chunk_indices(text):
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
