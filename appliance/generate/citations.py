"""Reading a generated answer: its [n] citations and whether it abstains."""

from __future__ import annotations

import re
from collections.abc import Sequence

from appliance.generate.prompt import PromptSource
from appliance.types import Citation

__all__ = [
    "citation_numbers",
    "is_abstention",
    "resolve_citations",
    "source_citation",
    "strip_citations",
]

_SEP = r"(?:\s*(?:,|;|and|&|-|–)\s*)"
_NUM = r"(?:sources?\s*:?\s*#?\s*)?\d{1,3}"
_MARKER = re.compile(rf"\[\s*({_NUM}(?:{_SEP}{_NUM})*)\s*\]", re.I)
_RANGE = re.compile(r"(\d{1,3})\s*[-–]\s*(\d{1,3})")
_DIGITS = re.compile(r"\d{1,3}")
_MAX_RANGE = 20
_CODE = re.compile(r"```.*?(?:```|$)|`[^`\n]*`", re.S)


def citation_numbers(text: str) -> list[int]:
    """The source numbers ``text`` cites, in order of first appearance.

    Understands ``[1]``, ``[1, 2]``, ``[1][2]``, ``[1; 2]``, ``[1-3]`` and ``[Source 1]``;
    brackets inside code spans (`` `x[0]` ``) and fenced blocks are not citations.
    """
    seen: dict[int, None] = {}
    for match in _MARKER.finditer(_CODE.sub(" ", text)):
        body = match.group(1)
        for lo, hi in _RANGE.findall(body):
            a, b = int(lo), int(hi)
            if a <= b <= a + _MAX_RANGE:
                for n in range(a, b + 1):
                    seen.setdefault(n, None)
        for digits in _DIGITS.findall(body):
            seen.setdefault(int(digits), None)
    return sorted(seen, key=list(seen).index)


def strip_citations(text: str) -> str:
    """``text`` without its [n] markers (for scoring answers against gold text)."""
    text = _MARKER.sub("", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return " ".join(text.split())


def source_citation(source: PromptSource) -> Citation:
    """The citation record of a numbered source."""
    hit = source.hit
    return Citation(
        n=source.n, path=hit.path, heading=hit.heading, chunk_id=hit.chunk_id, score=hit.score,
        page=hit.page,
    )


def resolve_citations(
    text: str, sources: Sequence[PromptSource]
) -> tuple[list[Citation], list[str]]:
    """The sources ``text`` cites, in order of first citation, and flags for the rest.

    A number that matches no source given to the model is dropped and flagged as
    ``unknown_citation:N``.
    """
    by_n = {s.n: s for s in sources}
    citations: list[Citation] = []
    flags: list[str] = []
    for n in citation_numbers(text):
        source = by_n.get(n)
        if source is None:
            flags.append(f"unknown_citation:{n}")
        else:
            citations.append(source_citation(source))
    return citations, flags


# -- abstention ------------------------------------------------------------------------------

_NEG = r"(?:could ?not|couldnt|can ?not|cant|did ?not|didnt|was unable to|am unable to|unable to)"
_WHAT = (
    r"(?:this|that|it|the answer|an answer|any answer|this information|that information|"
    r"the information|information|any information|anything|any mention|any relevant "
    r"information|relevant information|the requested information)"
)
_WHERE = (
    r"(?:the |these |those |your |any of the |provided |given |supplied )*"
    r"(?:provided |given |supplied |available )?"
    r"(?:documents?|sources?|context|texts?|passages?|materials?)"
)
_ABSTAIN = [
    re.compile(rf"^(?:i )?{_NEG} (?:find|locate) {_WHAT}"
               rf"(?: \w+){{0,4}} in {_WHERE}"),
    re.compile(rf"^{_WHERE} (?:do|does|did) not (?:contain|mention|include|provide|say|"
               r"specify|state|answer|have)"),
    re.compile(rf"^(?:there is|theres) no (?:information|mention|answer)(?: \w+){{0,5}} in "
               rf"{_WHERE}"),
    re.compile(r"^(?:i )?(?:could ?not|couldnt) find this in the documents?$"),
    re.compile(r"^not in the documents?$"),
]
_PUNCT = re.compile(r"[^\w\s]")
_FILLER = re.compile(r"^(?:(?:im |i am )?sorry |unfortunately |apologies |however )(?:but )?")
_FIRST_SENTENCE = re.compile(r"(?<=[.!?])\s|\n")


def _normal(text: str) -> str:
    text = text.lower().replace("’", "'").replace("'", "")
    text = _PUNCT.sub(" ", text)
    return " ".join(text.split())


def is_abstention(text: str) -> bool:
    """Whether an answer is the model's verdict that the sources lack the answer.

    Tolerant of case, punctuation, apostrophes and the usual rewordings of the fixed
    sentence ("I couldn't find that in the provided documents", "The sources do not
    contain ..."); only the answer's first sentence is read, so an answer that cites and
    then remarks that something else is missing is not an abstention. An empty answer
    counts as one.
    """
    stripped = text.strip()
    if not stripped:
        return True
    first = _FIRST_SENTENCE.split(stripped, maxsplit=1)[0]
    norm = _FILLER.sub("", _normal(first))
    return any(p.search(norm) for p in _ABSTAIN)
