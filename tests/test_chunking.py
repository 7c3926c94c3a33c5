"""Unit tests of heading-aware, token-sized chunking."""

from __future__ import annotations

import time
from itertools import pairwise

import pytest

from appliance.ingest.chunking import _MAX_CHARS_PER_TOKEN, Chunker, embed_text
from appliance.types import Chunk, LoadedDocument, Section
from tests.fakes import word_tokenizer


def _doc() -> LoadedDocument:
    long_text = "\n\n".join(
        " ".join(f"word{p}_{i}" for i in range(40)) + "." for p in range(12)
    )
    return LoadedDocument(
        title="Guide",
        kind="markdown",
        sections=[
            Section("Intro text here.", ("Guide",)),
            Section(long_text, ("Guide", "Install", "Linux")),
            Section("   ", ("Guide", "Empty")),
            Section("Page two text.", (), page=2),
        ],
    )


def test_chunks_fit_the_window_heading_included() -> None:
    tok = word_tokenizer()
    chunker = Chunker(tok, max_tokens=64, overlap=8)
    chunks = chunker.chunk(_doc())
    assert len(chunks) > 5
    for c in chunks:
        n = len(tok.encode(embed_text(c.heading, c.text), add_special_tokens=False).ids) + 2
        assert n <= 64, (n, c)
        assert c.token_count == n


def test_headings_pages_offsets_and_order() -> None:
    doc = _doc()
    chunks = Chunker(word_tokenizer(), max_tokens=64, overlap=8).chunk(doc)
    full = "\n\n".join(s.text for s in doc.sections)
    assert [c.order for c in chunks] == list(range(len(chunks)))
    assert chunks[0].heading == "Guide"
    assert chunks[1].heading_path == ("Guide", "Install", "Linux")
    assert chunks[-1].page == 2 and chunks[-1].heading == "Guide"  # title stands in
    for c in chunks:
        assert full[c.start : c.end] == c.text
    assert not any(c.heading_path == ("Guide", "Empty") for c in chunks)


def test_overlap_between_neighbours() -> None:
    text = " ".join(f"Sentence {i} says w{i}a w{i}b w{i}c." for i in range(60))
    doc = LoadedDocument("T", "text", [Section(text, ("T",))])
    chunks = Chunker(word_tokenizer(), max_tokens=64, overlap=16).chunk(doc)
    assert len(chunks) > 3
    assert any(chunks[i].end > chunks[i + 1].start for i in range(len(chunks) - 1))




def _chunk_timed(text: str, max_tokens: int = 64) -> list[Chunk]:
    doc = LoadedDocument("T", "text", [Section(text, ("T",))])
    started = time.perf_counter()
    chunks = Chunker(word_tokenizer(), max_tokens=max_tokens, overlap=8).chunk(doc)
    assert time.perf_counter() - started < 30.0  # linear: well under a second when idle
    return chunks


def _assert_fit(chunks: list[Chunk], text: str) -> None:
    """Each chunk is its slice of ``text`` and fits 64 tokens and 60 tokens' characters
    (64 less the special tokens and the heading "T" with its newline)."""
    tok = word_tokenizer()
    for c in chunks:
        assert text[c.start : c.end] == c.text
        n = len(tok.encode(embed_text(c.heading, c.text), add_special_tokens=False).ids) + 2
        assert n == c.token_count <= 64
        assert len(c.text) <= 60 * _MAX_CHARS_PER_TOKEN


@pytest.mark.parametrize(
    "unit",
    [
        "0123456789abcdef",  # one [UNK] token however long: cut by characters
        "x=a+b;f(c,d)/e",  # a token every character or two: cut by tokens
    ],
)
def test_text_without_whitespace_is_cut_to_fit(unit: str) -> None:
    text = unit * (200_000 // len(unit))
    chunks = _chunk_timed(text)
    assert len(chunks) > 20
    _assert_fit(chunks, text)
    rebuilt = ""
    for c in chunks:
        assert c.start <= len(rebuilt) < c.end  # overlap, but no gap and always progress
        rebuilt += c.text[len(rebuilt) - c.start :]
    assert rebuilt == text


def test_long_run_inside_normal_text() -> None:
    before = " ".join(f"w{i}" for i in range(300)) + "."
    text = f"{before}\n\n{'ab' * 20_000}\n\nThe end."
    chunks = _chunk_timed(text)
    _assert_fit(chunks, text)
    alone = _chunk_timed(before)
    assert chunks[: len(alone)] == alone  # the text before the run chunks as it did
    assert chunks[-1].text == "The end."


def _assert_words_covered(chunks: list[Chunk], text: str) -> None:
    """The chunks cut ``text`` (words joined by single spaces) between words, in order,
    leaving out nothing but the spaces they were cut at."""
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert all(a.start < b.start <= a.end + 1 for a, b in pairwise(chunks))
    assert all(c.start == 0 or text[c.start - 1] == " " for c in chunks)
    assert all(c.end == len(text) or text[c.end] == " " for c in chunks)


def test_many_long_unknown_words_are_split_by_characters() -> None:
    text = " ".join(f"{i:04d}" + "z" * 196 for i in range(500))  # 500 words, one token each
    chunks = _chunk_timed(text)
    _assert_fit(chunks, text)
    _assert_words_covered(chunks, text)


def test_long_line_of_short_words_without_punctuation() -> None:
    text = " ".join(f"w{i % 997}" for i in range(40_000))
    chunks = _chunk_timed(text)
    assert len(chunks) > 100
    _assert_fit(chunks, text)
    _assert_words_covered(chunks, text)
