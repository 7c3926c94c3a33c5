"""Keyword terms for scripts written without spaces between words (Chinese, Japanese).

FTS5's ``unicode61`` tokenizer splits at spaces and punctuation, so a Chinese sentence is one
token and a query word inside it never matches. Text in these scripts is indexed instead as
its single characters and overlapping character pairs (the bigram scheme of Lucene's
CJKAnalyzer): a two-character word such as 首都 is then one term, found wherever it occurs,
and bm25 weighs rare pairs above common single characters. Hangul is included: Korean
attaches particles to words (서울은), which pairs see through.

Only the standard library is imported here (the store's migrations use it).
"""

from __future__ import annotations

import re

__all__ = ["has_cjk", "index_text", "query_terms"]

_RUN = re.compile(
    "["
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\uff66-\uff9f"  # halfwidth Katakana
    "\U00020000-\U0003134f"  # CJK extensions B-G
    "]+"
)

MAX_QUERY_TERMS = 64
"""Terms of one query at most (as for the English keyword query)."""


def has_cjk(text: str) -> bool:
    """Whether ``text`` has a character of a script written without spaces."""
    return _RUN.search(text) is not None


def _pairs(run: str) -> list[str]:
    return [run[i:i + 2] for i in range(len(run) - 1)] or [run]


def index_text(text: str) -> str:
    """``text`` with every run of such characters replaced by its characters and its
    overlapping pairs, space-separated; other text is left for the tokenizer."""
    def expand(match: re.Match[str]) -> str:
        run = match.group(0)
        singles = list(run) if len(run) > 1 else []
        return " " + " ".join([*singles, *_pairs(run)]) + " "

    return _RUN.sub(expand, text)


def query_terms(text: str) -> list[str]:
    """The pairs of a query's runs of such characters (a lone character as itself), in
    order and without repeats, at most :data:`MAX_QUERY_TERMS`."""
    seen: dict[str, None] = {}
    for run in _RUN.findall(text):
        for term in _pairs(run):
            seen.setdefault(term, None)
    return list(seen)[:MAX_QUERY_TERMS]
