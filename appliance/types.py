"""Plain data types shared by every layer, and the protocols models implement."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONTROL_CHARS",
    "FLAG_NOTES",
    "NOT_GENERATED",
    "UNSHOWABLE",
    "Answer",
    "Chunk",
    "Citation",
    "Embedder",
    "FailedFile",
    "Generator",
    "Hit",
    "IngestReport",
    "LoadedDocument",
    "Section",
    "answer_notes",
    "fold_text",
    "is_blank",
    "page_suffix",
    "strip_controls",
    "unique_sections",
]


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, as a loader found it."""

    text: str
    heading_path: tuple[str, ...] = ()
    page: int | None = None


@dataclass(frozen=True)
class LoadedDocument:
    """What a loader extracts from one file: a title, a kind and its sections in order."""

    title: str
    kind: str
    sections: list[Section]


@dataclass(frozen=True)
class Chunk:
    """A piece of a document small enough for the embedder's window."""

    order: int
    text: str
    heading_path: tuple[str, ...]
    page: int | None
    start: int
    end: int
    token_count: int

    @property
    def heading(self) -> str:
        """The heading path joined for display, e.g. ``Guide > Install``."""
        return " > ".join(self.heading_path)


@dataclass
class Hit:
    """One retrieved chunk with its fused score and the raw per-channel evidence.

    ``scores`` holds ``vector`` (cosine similarity, -1..1) and ``keyword`` (bm25 relevance,
    higher is better; FTS5's rank negated) when that channel found the chunk, else None,
    and ``rerank`` (the reranker's score) when the hit was reranked.
    """

    chunk_id: int
    path: str
    title: str
    heading: str
    text: str
    score: float
    page: int | None = None
    collection: str = ""
    scores: dict[str, float | None] = field(default_factory=dict)
    ranks: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The hit as ``appliance search --json`` prints it."""
        return {
            "chunk_id": self.chunk_id,
            "path": self.path,
            "heading": self.heading,
            "text": self.text,
            "score": self.score,
            "scores": {
                "vector": self.scores.get("vector"),
                "keyword": self.scores.get("keyword"),
                **({"rerank": self.scores["rerank"]} if "rerank" in self.scores else {}),
            },
        }


@dataclass
class FailedFile:
    """A file that ingest skipped, with the one-line reason."""

    path: str
    reason: str


@dataclass
class IngestReport:
    """Outcome of one ingest run."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[FailedFile] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def chunks_per_s(self) -> float:
        """Chunks written per second of the whole run."""
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as ``appliance ingest --json`` prints it."""
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [asdict(f) for f in self.failed],
            "chunks": self.chunks,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Citation:
    """A source an answer cites with ``[n]``."""

    n: int
    path: str
    heading: str
    chunk_id: int
    score: float
    page: int | None = None
    """The PDF page the source's text starts on (None for formats without pages; then the
    JSON record has no ``page``)."""


def page_suffix(page: int | None) -> str:
    """`` p. 12`` for a source on page 12, empty when it has no page."""
    return f" p. {page}" if page else ""


class _Located(Protocol):
    @property
    def path(self) -> str: ...
    @property
    def page(self) -> int | None: ...
    @property
    def heading(self) -> str: ...


_S = TypeVar("_S", bound=_Located)


def unique_sections(sources: Iterable[_S]) -> list[_S]:
    """``sources`` with one per section (file, page, heading), first kept: two passages of
    one section would read as the same line twice in a list of closest sources."""
    seen: set[tuple[str, int | None, str]] = set()
    kept: list[_S] = []
    for s in sources:
        key = (s.path, s.page, s.heading)
        if key not in seen:
            seen.add(key)
            kept.append(s)
    return kept


FLAG_NOTES = {
    "abstained:retrieval": "not generated: no passage scored close enough to the question",
    "abstained:no_hits": "not generated: the knowledge base returned no passage",
    "stopped:loop": "stopped: the model began repeating itself",
    "max_tokens": "cut off at the token limit",
}
"""What an answer's flags mean to a reader (``ask``'s footer, the TUI's line under it)."""
NOT_GENERATED = ("abstained:retrieval", "abstained:no_hits")
"""Flags of an abstention decided before the model ran."""


def answer_notes(answer: Answer) -> list[str]:
    """The :data:`FLAG_NOTES` of ``answer``'s flags, in that order."""
    return [note for flag, note in FLAG_NOTES.items() if flag in answer.flags]


@dataclass
class Answer:
    """The answer record of DESIGN.md (what ``ask --json`` prints and ``batch`` writes)."""

    id: str
    question: str
    answer: str
    abstained: bool
    citations: list[Citation]
    closest: list[Citation]
    mode: str
    model: str
    timings_ms: dict[str, float]
    tokens: dict[str, int]
    tokens_per_s: float
    flags: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data, field names as in DESIGN.md; a citation's
        ``page`` is there only when its source has one (a PDF)."""
        data = asdict(self)
        for key in ("citations", "closest"):
            for cite in data[key]:
                if cite["page"] is None:
                    del cite["page"]
        return data


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors."""

    @property
    def id(self) -> str:
        """Registry id of the model, recorded in every knowledge base it builds."""
        ...

    @property
    def dim(self) -> int:
        """Vector dimension."""
        ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed ``texts`` into an array of shape (len(texts), dim)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes in the embedder's window, special tokens excluded."""
        ...


@runtime_checkable
class Generator(Protocol):
    """A chat model that streams text."""

    @property
    def id(self) -> str:
        """Registry id of the model."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes for this model."""
        ...

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int,
        first_token_bias: Mapping[str, float] | None = None,
    ) -> Iterator[str]:
        """Yield the completion's text pieces for a chat ``messages`` list.

        ``first_token_bias`` maps a text to a number added to the logit of its first token
        at the first generated position only (a calibrated nudge, e.g. against abstaining).
        """
        ...


CONTROL_CHARS = re.compile(
    r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""Characters that drive a terminal or reorder text instead of showing: C0 and C1 control
codes (NUL, ESC, CSI, ...) other than tab, newline and carriage return, and bidirectional
overrides."""


UNSHOWABLE = re.compile(f"{CONTROL_CHARS.pattern}|[\ud800-\udfff]")
""":data:`CONTROL_CHARS` and unpaired surrogates (a byte of a file name that is not UTF-8):
what no UTF-8 terminal may be sent."""

SOFT_HYPHEN = "\u00ad"
"""An invisible hyphenation hint inside a word (HTML ``&shy;``, hyphenated PDFs)."""

_INVISIBLE = re.compile(f"[\u200b-\u200d\u2060\ufeff{SOFT_HYPHEN}]")


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: blanks, control characters and characters that
    print as nothing (zero-width spaces and joiners, word joiner, BOM, soft hyphen)."""
    return not _INVISIBLE.sub("", strip_controls(text)).strip()


def fold_text(text: str) -> str:
    """``text`` in Unicode NFC without soft hyphens: the form that documents are stored in
    and keyword queries are matched in. The keyword index splits words at a soft hyphen
    (``Kühl&shy;mittel&shy;pumpe`` would not match ``Kühlmittelpumpe``) and compares code
    points, so a decomposed é or Hangul syllable (macOS, some PDFs) would not match the
    composed one a keyboard types."""
    if SOFT_HYPHEN in text:
        text = text.replace(SOFT_HYPHEN, "")
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def strip_controls(text: str) -> str:
    """``text`` without :data:`CONTROL_CHARS`, tabs and line breaks kept: no question means
    them, and echoing them would drive the terminal."""
    return CONTROL_CHARS.sub("", text)
