"""Behaviour data for the grounded adapter: answer from numbered sources, cite, or abstain.

Every example is a real prompt of the answer pipeline: the messages come from
:func:`appliance.generate.prompt.build_rag_prompt` (the same system prompt, the same worked
example turns, the same ``<source id="n" ...>`` blocks, neutralised text, the same token
budget), followed by the assistant turn to learn. The worked examples' assistant turns
carry ``"weight": 0``: they are context, identical in every prompt, and not learned.
The reply is:

- **answer**: the question is answerable and a source holds a gold answer: the reply is
  the answer span, then the number of the source that holds it, e.g. ``1973 [2].`` (the
  style of the prompt's worked example);
- **abstain** (:data:`~appliance.generate.prompt.ABSTAIN_SENTENCE`) when no source holds an
  answer. Two kinds, both on the question's own topic, so the model cannot abstain by topic
  alone: SQuAD 2.0's *unanswerable* questions (written against the paragraph to look
  answerable; the paragraph itself is among the sources), and *hard negatives*: answerable
  questions whose gold paragraph (and every source that contains an answer) is removed,
  leaving the most similar paragraphs of the same article.

The raw material is SQuAD 2.0 (CC BY-SA 4.0). Only the articles of the development split
(:data:`appliance.evaluate.squad.DEV_ARTICLES` under the default split) are used, so the
test split stays unseen for evaluation. Sources are either retrieved from a knowledge base
of those articles (``--kb``: exactly the hits the pipeline would retrieve, chunking
included) or made from the SQuAD paragraphs directly (each paragraph as the corpus file
``<Article>_<nnn>.txt`` would be ingested: title line, blank line, text; cut to the
embedder's window; the other sources are the paragraphs of the same article most similar
to the question by TF-IDF). The mix aims at ``abstain_share`` abstentions, a quarter of
them at most from hard negatives by default; the source order is shuffled, so the cited
number varies. Everything is seeded: the same inputs give the same file.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.evaluate.squad import (
    Article,
    Question,
    answer_in_text,
    corpus_file_name,
    parse_corpus_name,
    split_articles,
    squad_corpus_dir,
)
from appliance.generate.prompt import ABSTAIN_SENTENCE, build_rag_prompt
from appliance.types import Hit

if TYPE_CHECKING:
    from appliance.api import Appliance

__all__ = [
    "GroundedOptions",
    "GroundedReport",
    "SourceFinder",
    "SquadSources",
    "answer_text",
    "build_grounded",
    "check_squad_kb",
    "held_out_articles",
]

SourceFinder = Callable[[Question, int], list[Hit]]
"""``find(question, k)``: up to ``k`` candidate sources for a question, best first."""

_WORD = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that "
    "what which who whom whose when where why how did do does as into than then there their "
    "they he she his her not no".split()
)


@dataclass(frozen=True)
class GroundedOptions:
    """How the examples are drawn."""

    sources: int = 3
    """Sources per prompt (the pipeline retrieves up to 5; fewer keep examples short)."""
    abstain_share: float = 0.4
    """Target share of abstaining examples."""
    hard_negative_share: float = 0.2
    """Share of answerable questions turned into hard negatives."""
    max_source_chars: int = 1000
    """Longest source text made from a paragraph (about the embedder's 256 tokens)."""
    limit: int = 0
    """Most examples written (0: all); the mix is kept."""
    hold_out: int = 0
    """Answerable questions kept out of every example (drawn by the seed), so that an
    abstention margin can be calibrated on questions of the same articles the model never
    saw in training (``scripts/calibrate_margin.py --exclude`` finds them)."""
    seed: int = 0
    n_ctx: int = 4096
    max_tokens: int = 256

    def __post_init__(self) -> None:
        from appliance.errors import InputError

        if not 1 <= self.sources <= 20:
            raise InputError(f"--sources must be 1..20, not {self.sources}.")
        if not 0.0 <= self.abstain_share < 1.0:
            raise InputError(f"--abstain-share must lie in [0, 1), not {self.abstain_share}.")
        if not 0.0 <= self.hard_negative_share <= 1.0:
            raise InputError("--hard-negatives must lie in [0, 1].")
        if self.limit < 0:
            raise InputError("--limit must be >= 0.")
        if self.hold_out < 0:
            raise InputError("--hold-out must be >= 0.")


@dataclass
class GroundedReport:
    """What was built."""

    articles: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    answer: int = 0
    abstain_unanswerable: int = 0
    abstain_hard_negative: int = 0
    abstain_not_retrieved: int = 0
    """Answerable questions whose retrieved sources lack every gold answer (``--kb``)."""
    skipped: int = 0
    """Questions left out: no usable source, an answer not found, or over the mix."""
    held_out_questions: int = 0
    """Answerable questions kept out for calibration (``--hold-out``)."""
    source: str = ""

    @property
    def examples(self) -> int:
        """Examples written."""
        return (self.answer + self.abstain_unanswerable + self.abstain_hard_negative
                + self.abstain_not_retrieved)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready counts."""
        return {**asdict(self), "examples": self.examples}


def held_out_articles(articles: Sequence[Article]) -> tuple[list[Article], list[Article]]:
    """(train-data articles, held-out articles): SQuAD's dev split trains, test is held out."""
    dev, test = split_articles(articles)
    return dev, test


def check_squad_kb(app: Appliance, kb: str) -> None:
    """Raise InputError unless ``kb`` is new or holds only SQuAD corpus files of its own
    corpus folder, so that ingesting SQuAD (which prunes) cannot touch a user's knowledge
    base."""
    from appliance.errors import InputError

    if kb not in app.list_kbs():
        return
    folder = squad_corpus_dir(app.settings.home, kb)
    homes = {os.path.abspath(folder), os.path.realpath(folder)}
    with app.open_kb(kb) as store:
        foreign = [d.path for d in store.documents()
                   if os.path.dirname(d.path) not in homes or parse_corpus_name(d.path) is None]
    if foreign:
        raise InputError(
            f"Knowledge base '{kb}' holds documents that are not SQuAD paragraphs (e.g. "
            f"{foreign[0]}) and would be pruned; pass a new --kb name (such as 'squad-{kb}') "
            "so the SQuAD articles get a knowledge base of their own."
        )


def answer_text(answer: str, n: int) -> str:
    """The assistant reply for an answer found in source ``n``."""
    return f"{answer.strip().rstrip('.')} [{n}]."


# -- sources straight from SQuAD paragraphs --------------------------------------------------


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def _windows(text: str, limit: int) -> list[str]:
    """``text`` cut at sentence ends into pieces of at most ``limit`` characters."""
    if len(text) <= limit:
        return [text]
    pieces: list[str] = []
    current = ""
    for sentence in _SENTENCE_END.split(text):
        if current and len(current) + 1 + len(sentence) > limit:
            pieces.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}".strip()
    if current:
        pieces.append(current)
    return [p[:limit] for p in pieces]


class SquadSources:
    """Sources made from the paragraphs of the chosen articles (no knowledge base needed).

    A hit's path is the corpus file the evaluation would ingest
    (``<corpus>/<Article>_<nnn>.txt``), its heading the article title and its text the
    title line, a blank line and (a window of) the paragraph, as ingest would chunk it.
    """

    def __init__(self, articles: Sequence[Article], corpus: Path,
                 max_chars: int = 1000) -> None:
        self.docs: list[tuple[str, int, str, str]] = []  # (article, paragraph, path, text)
        for article in articles:
            for index, paragraph in enumerate(article.paragraphs):
                path = str(corpus / corpus_file_name(article.title, index))
                body = paragraph.context.strip()
                for piece in _windows(body, max(100, max_chars - len(article.title) - 2)):
                    self.docs.append((article.title, index, path, f"{article.title}\n\n{piece}"))
        self._tf = [Counter(_words(d[3])) for d in self.docs]
        df: Counter[str] = Counter()
        for tf in self._tf:
            df.update(tf.keys())
        n = len(self.docs)
        self._idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
        self._norm = [math.sqrt(sum((c * self._idf[w]) ** 2 for w, c in tf.items())) or 1.0
                      for tf in self._tf]

    def _score(self, query: Counter[str], i: int) -> float:
        tf = self._tf[i]
        return sum(q * self._idf.get(w, 0.0) * tf.get(w, 0) * self._idf.get(w, 0.0)
                   for w, q in query.items()) / self._norm[i]

    def __call__(self, question: Question, k: int) -> list[Hit]:
        """The gold paragraph's window (holding the answer, if any) first, then the most
        similar windows of the same article."""
        query = Counter(_words(question.question))
        same = [i for i, d in enumerate(self.docs) if d[0] == question.article]
        gold = [i for i in same if self.docs[i][1] == question.paragraph_index]
        if question.answers:
            with_answer = [i for i in gold if answer_in_text(question.answers, self.docs[i][3])]
            gold = with_answer or gold
        ranked = sorted(same, key=lambda i: -self._score(query, i))
        chosen: list[int] = gold[:1]
        seen_paragraphs = {self.docs[i][1] for i in chosen}
        for i in ranked:
            if len(chosen) >= k:
                break
            if self.docs[i][1] not in seen_paragraphs:
                chosen.append(i)
                seen_paragraphs.add(self.docs[i][1])
        return [
            Hit(chunk_id=i + 1, path=self.docs[i][2], title=self.docs[i][0],
                heading=self.docs[i][0], text=self.docs[i][3], score=self._score(query, i))
            for i in chosen
        ]


# -- building ---------------------------------------------------------------------------------


def build_grounded(
    articles: Sequence[Article],
    find_sources: SourceFinder,
    count_tokens: Callable[[str], int],
    options: GroundedOptions | None = None,
    *,
    retrieved: bool = False,
    exclude_articles: Sequence[str] = (),
) -> tuple[list[dict[str, Any]], GroundedReport]:
    """Chat examples (``{"messages": [...]}``) from the questions of ``articles``.

    ``find_sources`` gives candidate sources; with ``retrieved`` (a knowledge base) they
    are taken as retrieved, and an answerable question none of whose sources holds an
    answer becomes an abstention, as it would be at inference. Sources from
    ``exclude_articles`` (held-out titles) are always dropped.
    """
    options = options or GroundedOptions()
    rng = random.Random(options.seed)
    report = GroundedReport(articles=[a.title for a in articles],
                            held_out=list(exclude_articles),
                            source="knowledge base" if retrieved else "squad paragraphs")
    excluded = {_safe(t) for t in exclude_articles}
    answerable = [q for a in articles for q in a.questions
                  if q.answerable and q.question.strip()]
    unanswerable = [q for a in articles for q in a.questions
                    if not q.answerable and q.question.strip()]
    rng.shuffle(answerable)
    rng.shuffle(unanswerable)
    report.held_out_questions = min(options.hold_out, len(answerable))
    answerable = answerable[report.held_out_questions:]
    n_hard = round(len(answerable) * options.hard_negative_share)
    hard, positive = answerable[:n_hard], answerable[n_hard:]
    share = options.abstain_share
    want_abstain = round(len(positive) * share / (1 - share)) if share else 0
    unanswerable = unanswerable[: max(0, want_abstain - len(hard))]
    report.skipped += len(answerable) + len(
        [q for a in articles for q in a.questions if not q.answerable]
    ) - len(hard) - len(positive) - len(unanswerable)

    def sources(q: Question, k: int) -> list[Hit]:
        hits = [h for h in find_sources(q, k + 4)
                if (parsed := parse_corpus_name(h.path)) is None or parsed[0] not in excluded]
        return hits

    plans: list[tuple[str, Question]] = (
        [("answer", q) for q in positive] + [("hard", q) for q in hard]
        + [("unanswerable", q) for q in unanswerable]
    )
    rng.shuffle(plans)
    built: list[tuple[str, dict[str, Any]]] = []
    for done, (kind, q) in enumerate(plans):
        if options.limit and len(built) >= options.limit:
            report.skipped += len(plans) - done
            break
        hits = sources(q, options.sources)
        if kind == "hard":
            hits = [h for h in hits if not answer_in_text(q.answers, h.text)]
        hits = hits[: options.sources]
        if not hits:
            report.skipped += 1
            continue
        if not retrieved:
            rng.shuffle(hits)
        prompt = build_rag_prompt(q.question, hits, count_tokens=count_tokens,
                                  n_ctx=options.n_ctx, max_tokens=options.max_tokens)
        reply = ABSTAIN_SENTENCE
        if kind == "answer":
            found = next((answer_text(ans, src.n) for src in prompt.sources
                          for ans in q.answers if answer_in_text([ans], src.text)), None)
            if found is not None:
                reply = found
            elif retrieved:
                kind = "not_retrieved"
            else:
                report.skipped += 1
                continue
        context: list[dict[str, Any]] = [
            {**m, "weight": 0} if m["role"] == "assistant" else dict(m)
            for m in prompt.messages
        ]
        built.append((kind, {"messages": [*context,
                                          {"role": "assistant", "content": reply}]}))
    kinds = Counter(kind for kind, _ in built)
    report.answer = kinds["answer"]
    report.abstain_hard_negative = kinds["hard"]
    report.abstain_unanswerable = kinds["unanswerable"]
    report.abstain_not_retrieved = kinds["not_retrieved"]
    return [example for _, example in built], report


def _safe(title: str) -> str:
    """The article name as it appears in corpus file names."""
    return corpus_file_name(title, 0).rsplit("_", 1)[0]
