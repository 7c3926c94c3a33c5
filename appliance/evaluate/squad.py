"""SQuAD 2.0 data for evaluation: loading, a fixed dev/test split, a corpus, EM and F1.

The metrics follow the official SQuAD v2 evaluation script: answers are normalised
(lowercase, ASCII punctuation removed, the articles *a*, *an*, *the* dropped, whitespace
collapsed), exact match compares the normalised strings, token F1 compares their token
multisets, and both take the best score over the gold answers. Gold answers that normalise
to nothing are ignored; a question with no gold answer left (unanswerable) expects the
empty prediction.

The split is by article, so no paragraph of a test article is ever seen while tuning.
Articles are ordered by the sha256 of ``"<seed>:<title>"`` (independent of Python's random
module and of the file's order) and the first ``round(n * dev_fraction)`` go to dev. With
the default seed the shared file (8 articles, ``/work/shared/data/squad2-dev-a``) splits
into :data:`DEV_ARTICLES` (1,378 questions, 654 answerable) and :data:`TEST_ARTICLES`
(1,450 questions, 645 answerable).

Only the standard library and :mod:`appliance.files` (the input checks) are imported here.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.files import read_text, unpaired_surrogate
from appliance.types import fold_text

__all__ = [
    "DEV_ARTICLES",
    "SPLIT_SEED",
    "TEST_ARTICLES",
    "Article",
    "Paragraph",
    "Question",
    "answer_in_text",
    "corpus_file_name",
    "exact_match",
    "load_squad",
    "normalize_answer",
    "normalize_whitespace",
    "parse_corpus_name",
    "questions",
    "split_articles",
    "squad_corpus_dir",
    "token_f1",
    "write_corpus",
]

SPLIT_SEED = 0
"""Seed of :func:`split_articles`; chosen so that dev and test hold similar question counts."""

DEV_ARTICLES: tuple[str, ...] = (
    "1973_oil_crisis",
    "French_and_Indian_War",
    "Imperialism",
    "Scottish_Parliament",
)
"""Development (tuning) articles of the shared file under the default split."""

TEST_ARTICLES: tuple[str, ...] = (
    "Huguenot",
    "Normans",
    "Packet_switching",
    "Yuan_dynasty",
)
"""Test (reporting) articles of the shared file under the default split."""


@dataclass(frozen=True)
class Question:
    """One question with its gold answer texts (empty when unanswerable)."""

    id: str
    question: str
    answers: list[str]
    answerable: bool
    article: str
    paragraph_index: int


@dataclass(frozen=True)
class Paragraph:
    """A context paragraph and the questions asked about it."""

    context: str
    questions: list[Question] = field(default_factory=list)


@dataclass(frozen=True)
class Article:
    """A Wikipedia article: its title and paragraphs in order."""

    title: str
    paragraphs: list[Paragraph] = field(default_factory=list)

    @property
    def questions(self) -> list[Question]:
        """Every question of the article, in file order."""
        return [q for p in self.paragraphs for q in p.questions]


# -- loading -------------------------------------------------------------------------------


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {type(value).__name__}")
    bad = unpaired_surrogate(value)
    if bad is not None:
        raise ValueError(f"{where}: holds an unpaired surrogate ({bad}), which is not text")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def _question_id(value: Any, default: str, where: str) -> str:
    """A question's id: a string or a whole number; ``default`` when missing or null."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{where}: expected a string or a whole number, got "
                         f"{type(value).__name__}")
    return _str(str(value), where)


def load_squad(path: Path) -> list[Article]:
    """Read a file in the official SQuAD (1.1 or 2.0) JSON layout.

    Questions without ``is_impossible`` (SQuAD 1.1) count as answerable; a question
    without an id gets ``<title>-<paragraph>-<question>``. Duplicate answer texts of a
    question are kept once, in order. Raises ValueError naming the bad field: a value of
    the wrong type, an article title that repeats, text with an unpaired surrogate, nesting
    too deep to parse. The file is read by :func:`appliance.files.read_text` (InputError for
    a missing, non-regular, oversized or non-UTF-8 file; a leading BOM is allowed).
    """
    text = read_text(Path(path), "a SQuAD JSON file")
    try:
        raw = json.loads(text)
    except RecursionError:
        raise ValueError("its JSON nests too deeply to read") from None
    if not isinstance(raw, dict):
        raise ValueError("expected a JSON object with a 'data' list at the top")
    articles: list[Article] = []
    titles: dict[str, int] = {}
    for a_i, art in enumerate(_list(raw.get("data"), "data")):
        art = _dict(art, f"data[{a_i}]")
        title = _str(art.get("title"), f"data[{a_i}].title")
        if title in titles:
            raise ValueError(f"data[{a_i}].title: '{title}' repeats data[{titles[title]}].title "
                             "(titles name the articles, so they must differ)")
        titles[title] = a_i
        paragraphs: list[Paragraph] = []
        for p_i, par in enumerate(_list(art.get("paragraphs"), f"data[{a_i}].paragraphs")):
            where = f"data[{a_i}].paragraphs[{p_i}]"
            par = _dict(par, where)
            context = _str(par.get("context"), f"{where}.context")
            qs: list[Question] = []
            for q_i, qa in enumerate(_list(par.get("qas", []), f"{where}.qas")):
                qwhere = f"{where}.qas[{q_i}]"
                qa = _dict(qa, qwhere)
                answers: dict[str, None] = {}
                for n, ans in enumerate(_list(qa.get("answers", []), f"{qwhere}.answers")):
                    ans = _dict(ans, f"{qwhere}.answers[{n}]")
                    answers.setdefault(_str(ans.get("text"), f"{qwhere}.answers[{n}].text"))
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise ValueError(f"{qwhere}.is_impossible: expected true or false, got "
                                     f"{type(impossible).__name__}")
                qs.append(
                    Question(
                        id=_question_id(qa.get("id"), f"{title}-{p_i}-{q_i}",
                                        f"{qwhere}.id"),
                        question=_str(qa.get("question"), f"{qwhere}.question"),
                        answers=[] if impossible else list(answers),
                        answerable=not impossible and bool(answers),
                        article=title,
                        paragraph_index=p_i,
                    )
                )
            paragraphs.append(Paragraph(context=context, questions=qs))
        articles.append(Article(title=title, paragraphs=paragraphs))
    return articles


def questions(articles: Iterable[Article], *, answerable: bool | None = None) -> list[Question]:
    """All questions of ``articles`` in order; only (un)answerable ones when asked."""
    out = [q for a in articles for q in a.questions]
    if answerable is None:
        return out
    return [q for q in out if q.answerable == answerable]


# -- split ---------------------------------------------------------------------------------


def _split_key(seed: int, title: str) -> str:
    return hashlib.sha256(f"{seed}:{title}".encode()).hexdigest()


def split_articles(
    articles: Sequence[Article], dev_fraction: float = 0.5, seed: int = SPLIT_SEED
) -> tuple[list[Article], list[Article]]:
    """Split ``articles`` into (dev, test) by article, deterministically.

    Articles are ordered by ``sha256(f"{seed}:{title}")``; the first
    ``round(len(articles) * dev_fraction)`` are dev, the rest test. Each part keeps the
    input's order. The result depends only on the titles, the fraction and the seed.
    """
    if not 0.0 <= dev_fraction <= 1.0:
        raise ValueError("dev_fraction must lie in [0, 1]")
    titles = [a.title for a in articles]
    if len(set(titles)) != len(titles):
        raise ValueError("article titles must be unique to split by article")
    ranked = sorted(titles, key=lambda t: (_split_key(seed, t), t))
    dev_titles = set(ranked[: round(len(titles) * dev_fraction)])
    dev = [a for a in articles if a.title in dev_titles]
    test = [a for a in articles if a.title not in dev_titles]
    return dev, test


# -- corpus --------------------------------------------------------------------------------

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_CORPUS_NAME = re.compile(r"^(?P<article>.+)_(?P<index>\d{3,})\.txt$")


def squad_corpus_dir(home: Path, kb: str) -> Path:
    """Where the paragraphs of the SQuAD knowledge base ``kb`` are written as corpus files
    (under the data directory ``home``)."""
    return home / "eval" / "squad" / kb


def corpus_file_name(title: str, paragraph_index: int) -> str:
    """``<Article>_<nnn>.txt``: the file :func:`write_corpus` writes for one paragraph.

    ``<Article>`` is the title itself when that is a safe file name (ASCII letters, digits,
    ``_`` and ``-``, not starting or ending with ``_``). Otherwise it is the title with each
    run of other characters turned into ``_`` (``article`` if nothing is left), then ``-``
    and 8 hex digits of the title's sha256, so titles that lose different characters
    (``C++`` and ``C#``, or two CJK titles) still get different names.
    """
    safe = _UNSAFE.sub("_", title).strip("_")
    if not safe or safe != title:
        digest = hashlib.sha256(title.encode("utf-8")).hexdigest()[:8]
        safe = f"{safe or 'article'}-{digest}"
    return f"{safe}_{paragraph_index:03d}.txt"


def parse_corpus_name(name: str) -> tuple[str, int] | None:
    """(article, paragraph index) of a corpus file name or path; None if not one.

    The article is the ``<Article>`` part of :func:`corpus_file_name`: the title only
    where the title is a safe file name.
    """
    match = _CORPUS_NAME.match(Path(name).name)
    if match is None:
        return None
    return match.group("article"), int(match.group("index"))


def write_corpus(articles: Iterable[Article], folder: Path) -> list[Path]:
    """Write one ``.txt`` file per paragraph: the article title, a blank line, the context.

    Files are named by :func:`corpus_file_name`, so a retrieved chunk's path maps back to
    its paragraph. Files whose content is already identical are left untouched (their
    mtime survives, as incremental ingest expects). Returns the paths in article order.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    seen: set[str] = set()
    for article in articles:
        for index, paragraph in enumerate(article.paragraphs):
            name = corpus_file_name(article.title, index)
            if name in seen:
                raise ValueError(f"two paragraphs map to the same file name {name}")
            seen.add(name)
            path = folder / name
            data = f"{article.title}\n\n{paragraph.context.strip()}\n"
            if not (path.is_file() and path.read_text(encoding="utf-8") == data):
                path.write_text(data, encoding="utf-8")
            written.append(path)
    return written


# -- metrics -------------------------------------------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop ASCII punctuation, drop a/an/the, collapse spaces.

    The steps run in the official order (lower, punctuation, articles, whitespace), so
    punctuation inside a word joins its parts (``"U.S."`` becomes ``"us"``).
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(answers: str | Sequence[str]) -> list[str]:
    """Gold answers as the official script scores them: non-empty after normalisation, or
    the single empty answer (an unanswerable question expects an empty prediction)."""
    items = [answers] if isinstance(answers, str) else list(answers)
    kept = [a for a in items if normalize_answer(a)]
    return kept or [""]


def _exact(gold: str, prediction: str) -> float:
    return float(normalize_answer(gold) == normalize_answer(prediction))


def _f1(gold: str, prediction: str) -> float:
    gold_tokens = normalize_answer(gold).split()
    pred_tokens = normalize_answer(prediction).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)
    same = sum((Counter(gold_tokens) & Counter(pred_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, answers: str | Sequence[str]) -> float:
    """1.0 if ``prediction`` equals some gold answer after normalisation, else 0.0."""
    return max(_exact(gold, prediction) for gold in _golds(answers))


def token_f1(prediction: str, answers: str | Sequence[str]) -> float:
    """The best token-level F1 of ``prediction`` against the gold answers (0.0 .. 1.0)."""
    return max(_f1(gold, prediction) for gold in _golds(answers))


# -- retrieval helpers ---------------------------------------------------------------------


def normalize_whitespace(text: str) -> str:
    """Lowercase ``text`` and collapse every run of whitespace into one space."""
    return " ".join(text.lower().split())


def answer_in_text(answers: Iterable[str], text: str) -> bool:
    """Whether some non-blank gold answer occurs in ``text`` (case-insensitive substring,
    whitespace normalised on both sides, and both in the form documents are stored in,
    :func:`~appliance.types.fold_text`): the retrieval hit criterion."""
    haystack = normalize_whitespace(fold_text(text))
    return any((needle := normalize_whitespace(fold_text(a))) and needle in haystack
               for a in answers)
