"""What the TUI shows about an answer's sources: pure functions, no Textual.

The sources of an answer are the hits the pipeline put in the prompt, numbered from 1 in
rank order (the numbers the answer cites with ``[n]``). They come from the pipeline's
``last_hits`` when it has them; otherwise from the answer's citations and closest sources,
with the chunk text read from the knowledge base.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.generate import citation_numbers
from appliance.types import UNSHOWABLE, Answer, Citation, Hit

__all__ = [
    "SourceView",
    "cited_passage",
    "citing_sentences",
    "display_path",
    "linkify_citations",
    "printable",
    "sources_for",
]

ChunkLookup = Callable[[Sequence[int]], dict[int, tuple[str, str, str]]]
"""chunk ids -> {id: (path, heading, text)}"""


@dataclass(frozen=True)
class SourceView:
    """One numbered source of an answer, as the sources panel lists it."""

    n: int
    chunk_id: int
    path: str
    heading: str
    text: str
    score: float
    vector: float | None = None
    keyword: float | None = None
    cited: bool = False
    page: int | None = None

    def scores_line(self) -> str:
        """``fused 0.0328 · cos 0.71 · bm25 12.3`` (a channel that did not find it: ``-``)."""
        fused = f"fused {self.score:.4f}"
        if self.vector is None and self.keyword is None:
            return fused  # per-channel evidence unknown (or neither channel found it)
        cos = f"{self.vector:.2f}" if self.vector is not None else "-"
        bm25 = f"{self.keyword:.1f}" if self.keyword is not None else "-"
        return f"{fused} · cos {cos} · bm25 {bm25}"


def sources_for(
    answer: Answer, hits: Sequence[Hit] | None, lookup: ChunkLookup | None = None
) -> list[SourceView]:
    """The numbered sources behind ``answer``.

    ``hits`` are the hits the pipeline retrieved for it (its ``last_hits``), in rank order;
    source ``n`` is ``hits[n - 1]``. Without them the answer's own citations and closest
    sources are used, and ``lookup`` supplies their text.
    """
    cited = set(citation_numbers(answer.answer)) if not answer.abstained else set()
    if hits is not None:
        return [
            SourceView(
                n=i, chunk_id=h.chunk_id, path=h.path, heading=h.heading, text=h.text,
                score=h.score, vector=h.scores.get("vector"), keyword=h.scores.get("keyword"),
                cited=i in cited, page=h.page,
            )
            for i, h in enumerate(hits, start=1)
        ]
    refs: dict[int, Citation] = {}
    for c in [*answer.citations, *answer.closest]:
        refs.setdefault(c.n, c)
    rows = lookup([c.chunk_id for c in refs.values()]) if lookup and refs else {}
    out: list[SourceView] = []
    for n in sorted(refs):
        c = refs[n]
        path, heading, text = rows.get(c.chunk_id, (c.path, c.heading, ""))
        out.append(SourceView(n=n, chunk_id=c.chunk_id, path=path, heading=heading, text=text,
                              score=c.score, cited=n in cited, page=c.page))
    return out


def display_path(path: str, cwd: str | None = None) -> str:
    """``path`` relative to the working directory when under it, else with ``~`` for home."""
    cwd = cwd if cwd is not None else os.getcwd()
    try:
        rel = os.path.relpath(path, cwd)
    except ValueError:
        rel = path
    if not rel.startswith(".."):
        return rel
    home = str(Path.home())
    if path == home or path.startswith(home + os.sep):
        return "~" + path[len(home):]
    return path


# -- text safe to show in a terminal ---------------------------------------------------------

_NEWLINES = re.compile(r"\r\n?|[\v\f\x1c-\x1e\x85\u2028\u2029]")
_BREAKS = re.compile(r"[\n\t]")


def printable(text: str, *, one_line: bool = False) -> str:
    """``text`` with nothing that could drive the terminal: control characters (escape
    sequences, bells, NUL, C1 codes) and bidirectional overrides become U+FFFD (``�``) or,
    for line and paragraph separators, a newline. Tabs and newlines are kept, unless
    ``one_line``: then each becomes a space. A byte that is not UTF-8 (a file name's)
    becomes U+FFFD too. Markup is not touched (show the result as
    ``Text``, never as markup)."""
    text = UNSHOWABLE.sub("\ufffd", _NEWLINES.sub("\n", text))
    return _BREAKS.sub(" ", text) if one_line else text


# -- citations in the answer text --------------------------------------------------------------

_GROUP = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.S)
_DUNDER = re.compile(r"(?<![\w\\])__(\w+?)__(?!\w)")


def linkify_citations(text: str, known: Iterable[int]) -> str:
    """Markdown with each ``[n]`` (and ``[n, m]``) of a known source turned into a link
    ``cite:n`` that the answer view opens, and Python names like ``__exit__`` kept literal
    (not bold); code spans are left alone."""
    numbers = set(known)

    def link(match: re.Match[str]) -> str:
        ns = [int(d) for d in re.findall(r"\d+", match.group(1))]
        if not ns or any(n not in numbers for n in ns):
            return match.group(0)
        return "".join(f"[\\[{n}\\]](cite:{n})" for n in ns)

    def prose(part: str) -> str:
        return _GROUP.sub(link, _DUNDER.sub(r"\\_\\_\1\\_\\_", part))

    out: list[str] = []
    pos = 0
    for code in _CODE.finditer(text):
        out.append(prose(text[pos:code.start()]))
        out.append(code.group(0))
        pos = code.end()
    out.append(prose(text[pos:]))
    return "".join(out)


_SENTENCE = re.compile(r"[^.!?]+(?:[.!?]+(?:\s*\[[^\]]*\])*|$)")


def citing_sentences(answer_text: str, n: int) -> list[str]:
    """The sentences of an answer that cite source ``n`` (a marker after the full stop,
    ``... globals. [1]``, belongs to the sentence before it)."""
    out = []
    for paragraph in re.split(r"\n\s*\n|\n(?=\s*[-*+]\s)", answer_text):
        for match in _SENTENCE.finditer(paragraph):
            sentence = re.sub(r"^[-*+>#]+\s+", "", " ".join(match.group(0).split()))
            if sentence and n in citation_numbers(sentence):
                out.append(sentence)
    return out


_WORD = re.compile(r"[a-z0-9_]+")
_STOP = frozenset(
    "a an and are as at be by can do does for from has have how i if in into is it its "
    "of on or that the their then there these this to was what when which while who why "
    "will with you your not no".split()
)


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) > 1 and w not in _STOP}


def cited_passage(chunk_text: str, claims: Sequence[str]) -> tuple[int, int] | None:
    """Character span of the chunk's sentence that best supports ``claims`` (the answer's
    sentences citing it), by shared content words; None when nothing is shared."""
    claim_words: set[str] = set()
    for claim in claims:
        claim_words |= _words(re.sub(r"\[[^\]]*\]", " ", claim))
    if not claim_words:
        return None
    best: tuple[int, int] | None = None
    best_score = 0.0
    for match in re.finditer(r"[^.!?\n]+[.!?]*", chunk_text):
        words = _words(match.group(0))
        shared = len(words & claim_words)
        if not shared:
            continue
        score = shared + shared / (len(words) + 1)
        if score > best_score:
            best_score = score
            start = match.start() + (len(match.group(0)) - len(match.group(0).lstrip()))
            best = (start, match.end())
    return best
