"""Unit tests of heading-aware, token-sized chunking."""

from __future__ import annotations

from appliance.ingest.chunking import Chunker, embed_text
from appliance.types import LoadedDocument, Section
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

