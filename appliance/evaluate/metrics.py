"""Scoring answers and rankings: per-question scores, per-mode aggregates, ranking metrics.

Everything here is pure (standard library only) and works on plain records: the eval item
(:class:`EvalItem`) and the Answer record as ``batch`` writes it, plus ``context``, the
texts of the chunks the answer cites (``{chunk_id: text}``).

Definitions (per mode; "answered" means not abstained):

- ``em`` / ``f1``: SQuAD v2 style over every question: an unanswerable question scores 1
  when the answer abstains; answers are compared with their ``[n]`` markers stripped and
  SQuAD normalisation. ``em_answerable`` / ``f1_answerable``: over answerable questions only.
- ``contained``: share of answerable questions whose answer contains a gold answer
  (whitespace-normalised, case-insensitive substring).
- ``citation_precision``: share of citations whose chunk contains a gold answer or belongs
  to a gold source (answerable questions); ``citation_coverage``: share of answered
  questions that cite at least one source (retrieval modes only).
- ``abstention_accuracy``: share of unanswerable questions that abstain;
  ``false_abstention``: share of answerable questions that abstain.
- ``format_compliance``: share of questions with a ``format`` whose answer complies (a
  regex the answer must match, or a JSON schema the answer must validate against; an
  abstention complies only when the question is unanswerable).
- ``faithfulness``: the share of an answer's content words found in the text it cites
  (0 for an answer citing nothing), averaged over answered questions (retrieval modes).
- ``accuracy``: answerable questions answered with a gold answer contained, plus
  unanswerable questions abstained on, over all questions.
- ``p50_ms`` / ``p95_ms``: answer latency (``timings_ms.total``); ``tokens_per_s``:
  completion tokens over generation seconds.
- ``intervals``: 95 % intervals of the quality metrics: Wilson score intervals for shares,
  a seeded percentile bootstrap for means of per-question scores (F1, EM, faithfulness).
  :func:`paired_difference` gives the interval of a change between two modes answering
  the same questions.
"""

from __future__ import annotations

import json
import math
import random
import re
import signal
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.batch import BatchSummary
from appliance.evaluate.squad import answer_in_text, exact_match, normalize_answer, token_f1
from appliance.generate.citations import strip_citations

__all__ = [
    "RETRIEVAL_MODES",
    "Difference",
    "EvalItem",
    "QuestionScore",
    "aggregate",
    "bootstrap_interval",
    "content_words",
    "faithfulness",
    "format_ok",
    "is_gold_source",
    "ndcg_at_k",
    "paired_difference",
    "rank_metrics",
    "recall_at_k",
    "reciprocal_rank",
    "schema_errors",
    "schema_problem",
    "score_answer",
    "search_within",
    "wilson_interval",
]

RETRIEVAL_MODES = ("rag", "hybrid")

Format = str | dict[str, Any] | None


@dataclass(frozen=True)
class EvalItem:
    """One question of an eval set (DESIGN.md, "Eval set")."""

    id: str
    question: str
    answers: list[str] = field(default_factory=list)
    answerable: bool = True
    gold_sources: list[str] = field(default_factory=list)
    format: Format = None

    def to_json(self) -> dict[str, Any]:
        """The item as one line of an eval set."""
        row: dict[str, Any] = {"id": self.id, "question": self.question,
                               "answers": list(self.answers), "answerable": self.answerable}
        if self.gold_sources:
            row["gold_sources"] = list(self.gold_sources)
        if self.format is not None:
            row["format"] = self.format
        return row


# -- words ---------------------------------------------------------------------------------

_STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each either else
few for from further had has have having he her here hers herself him himself his how i if
in into is it its itself just let like may me might more most must my myself no nor not now
of off on once one only or other ought our ours ourselves out over own per same shall she
should so some such than that the their theirs them themselves then there these they this
those through thus to too under until up upon us use used very was we were what when where
whether which while who whom whose why will with within without would yes yet you your
yours yourself yourselves according answer document documents source sources
""".split())


def content_words(text: str) -> list[str]:
    """The SQuAD-normalised words of ``text`` without stopwords and ``[n]`` markers."""
    return [w for w in normalize_answer(strip_citations(text)).split() if w not in _STOPWORDS]


def faithfulness(answer: str, cited_texts: Iterable[str]) -> float:
    """Share of the answer's content words that occur in the cited texts (1.0 when the
    answer has no content words; 0.0 when it cites nothing)."""
    words = content_words(answer)
    texts = list(cited_texts)
    if not texts:
        return 0.0
    if not words:
        return 1.0
    vocabulary = set(normalize_answer(" ".join(texts)).split())
    return sum(w in vocabulary for w in words) / len(words)


def is_gold_source(path: str, gold_sources: Sequence[str]) -> bool:
    """Whether ``path`` is one of the gold sources (matched by file name, or by a
    path suffix when the gold source names folders)."""
    norm = path.replace("\\", "/")
    name = norm.rsplit("/", 1)[-1]
    for gold in gold_sources:
        g = gold.replace("\\", "/").strip("/")
        if g and (g == name or norm == g or norm.endswith("/" + g)):
            return True
    return False


# -- formats ---------------------------------------------------------------------------------

_FENCE = re.compile(r"^```[\w-]*\s*\n?(.*?)\n?```$", re.S)
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "null": (type(None),), "integer": (int,), "number": (int, float),
}


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    if name == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _JSON_TYPES.get(name, ()))


def schema_errors(value: Any, schema: Mapping[str, Any], where: str = "$") -> list[str]:
    """Why ``value`` does not satisfy ``schema`` (empty when it does).

    A subset of JSON Schema, enough for answer formats: ``type`` (a name or a list),
    ``enum``, ``const``, ``properties``, ``required``, ``additionalProperties`` (a bool or a
    schema), ``items``, ``minItems``/``maxItems``, ``minLength``/``maxLength``, ``pattern``
    (searched, as JSON Schema does), ``minimum``/``maximum``, ``anyOf``, ``allOf``, ``oneOf``
    and ``not``. Unknown keywords are ignored.
    """
    errors: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else list(kind)
        if not any(_is_type(value, n) for n in names):
            return [f"{where}: expected {' or '.join(names)}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}")
    if isinstance(value, dict):
        props: Mapping[str, Any] = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                errors.append(f"{where}: missing property '{name}'")
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in props:
                errors += schema_errors(item, props[name], f"{where}.{name}")
            elif extra is False:
                errors.append(f"{where}: unexpected property '{name}'")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{where}.{name}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                errors += schema_errors(item, schema["items"], f"{where}[{i}]")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not search_within(schema["pattern"], value):
            errors.append(f"{where}: does not match {schema['pattern']!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: below {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: above {schema['maximum']}")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, where)
    if "anyOf" in schema and not any(not schema_errors(value, s, where)
                                     for s in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema and sum(not schema_errors(value, s, where)
                                 for s in schema["oneOf"]) != 1:
        errors.append(f"{where}: does not match exactly one of oneOf")
    if isinstance(schema.get("not"), dict) and not schema_errors(value, schema["not"], where):
        errors.append(f"{where}: matches a schema it must not")
    return errors


_SCHEMA_KEYS: dict[str, tuple[type, ...]] = {
    "type": (str, list), "enum": (list,), "properties": (dict,), "required": (list,),
    "additionalProperties": (bool, dict), "items": (dict,), "minItems": (int,),
    "maxItems": (int,), "minLength": (int,), "maxLength": (int,), "pattern": (str,),
    "minimum": (int, float), "maximum": (int, float), "anyOf": (list,), "allOf": (list,),
    "oneOf": (list,), "not": (dict,),
}
"""The keywords :func:`schema_errors` reads, and the JSON types their values must have."""


def schema_problem(schema: Any, where: str = "$") -> str | None:
    """Why ``schema`` cannot serve as an answer format for :func:`schema_errors` (None when
    it can): a keyword it reads has a value of the wrong type, a ``type`` names no JSON
    type, a ``pattern`` is not a regular expression, or a subschema is not an object."""
    if not isinstance(schema, dict):
        return f"{where} must be a JSON schema object"
    for key, kinds in _SCHEMA_KEYS.items():
        if key not in schema:
            continue
        value = schema[key]
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            return f"{where}.{key} has the wrong type ({type(value).__name__})"
    kind = schema.get("type")
    names = [kind] if isinstance(kind, str) else list(kind or [])
    if any(not isinstance(n, str) or n not in _JSON_TYPES for n in names):
        return f"{where}.type names no JSON type ({kind!r})"
    if any(not isinstance(n, str) for n in schema.get("required", [])):
        return f"{where}.required must list property names"
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except re.error as exc:
            return f"{where}.pattern is not a valid regular expression ({exc})"
    subs: list[tuple[str, Any]] = [(f"{where}.properties.{k}", v)
                                   for k, v in schema.get("properties", {}).items()]
    subs += [(f"{where}.{key}", schema[key]) for key in ("items", "not")
             if key in schema]
    if isinstance(schema.get("additionalProperties"), dict):
        subs.append((f"{where}.additionalProperties", schema["additionalProperties"]))
    for key in ("anyOf", "allOf", "oneOf"):
        subs += [(f"{where}.{key}[{i}]", v) for i, v in enumerate(schema.get(key, []))]
    for sub_where, sub in subs:
        problem = schema_problem(sub, sub_where)
        if problem is not None:
            return problem
    return None


REGEX_SECONDS = 2.0
"""How long one format regular expression may search an answer (see :func:`search_within`)."""


class _RegexTimeout(Exception):
    pass


def search_within(pattern: str, text: str, seconds: float = REGEX_SECONDS) -> bool | None:
    """``re.search(pattern, text)`` found something; None when it ran longer than
    ``seconds`` (a pattern such as ``^(\\w+\\s?)*$`` backtracks for ages on an ordinary
    sentence). The time limit is a SIGALRM timer, so it applies on the main thread of a
    POSIX process only; elsewhere the search runs unbounded."""
    if threading.current_thread() is not threading.main_thread() \
            or not hasattr(signal, "setitimer"):
        return re.search(pattern, text) is not None

    def expire(signum: int, frame: Any) -> None:
        raise _RegexTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        return re.search(pattern, text) is not None
    except _RegexTimeout:
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def format_ok(answer: str, fmt: Format) -> bool:
    """Whether ``answer`` (``[n]`` markers stripped) complies with ``fmt``.

    A string is a regular expression the answer must match (``re.search``, so anchor it
    with ``^...$`` to constrain the whole answer); a dict is a JSON schema the answer,
    parsed as JSON (a surrounding code fence is allowed), must satisfy. An answer that
    cannot be checked (a pattern that does not compile or runs past
    :data:`REGEX_SECONDS`, JSON nested too deeply to parse, a schema that is not one)
    does not comply.
    """
    if fmt is None:
        return True
    text = strip_citations(answer).strip()
    if isinstance(fmt, str):
        try:
            return bool(search_within(fmt, text))
        except re.error:
            return False
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if schema_problem(fmt) is not None:
        return False
    try:
        return not schema_errors(value, fmt)
    except RecursionError:
        return False


# -- rankings --------------------------------------------------------------------------------


def reciprocal_rank(relevant: Sequence[bool], k: int | None = None) -> float:
    """1 / rank of the first relevant result within the first ``k`` (0.0 when none)."""
    for rank, rel in enumerate(relevant[:k] if k else relevant, start=1):
        if rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(gains: Sequence[float], ideal: Sequence[float], k: int = 10) -> float:
    """nDCG@k with linear gains (as trec_eval): ``gains`` of the ranking, best first;
    ``ideal`` the gains of every relevant item (any order)."""
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
    best = sorted((g for g in ideal if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(best))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str], k: int) -> float:
    """Share of the relevant ids found in the first ``k`` of ``ranked``."""
    rel = set(relevant)
    if not rel:
        return 0.0
    return len(rel & set(ranked[:k])) / len(rel)


def rank_metrics(ranked_paths: Sequence[str], gold_sources: Sequence[str]) -> dict[str, float]:
    """hit@1/5/10, MRR@10 and nDCG@10 of a ranking of document paths (one entry per chunk,
    best first) against gold sources; repeated documents count once, at their best rank."""
    docs: list[str] = []
    for path in ranked_paths:
        if path not in docs:
            docs.append(path)
    rel = [is_gold_source(p, gold_sources) for p in docs]
    return {
        "hit@1": float(any(rel[:1])),
        "hit@5": float(any(rel[:5])),
        "hit@10": float(any(rel[:10])),
        "mrr": reciprocal_rank(rel, 10),
        "ndcg@10": ndcg_at_k([float(r) for r in rel], [1.0] * len(set(gold_sources)), 10),
    }


# -- one question ------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuestionScore:
    """The scores of one answer to one question."""

    id: str
    answerable: bool
    abstained: bool
    em: float
    f1: float
    contained: bool
    citations: int
    citations_ok: int
    faithfulness: float | None
    format_ok: bool | None
    latency_ms: float
    completion_tokens: int
    generate_s: float

    @property
    def correct(self) -> bool:
        """Answered with a gold answer contained, or abstained on an unanswerable one."""
        return self.contained if self.answerable else self.abstained


def score_answer(item: EvalItem, record: Mapping[str, Any]) -> QuestionScore:
    """Score one Answer record (as ``batch`` writes it, plus ``context``) against its item."""
    abstained = bool(record.get("abstained"))
    text = "" if abstained else strip_citations(str(record.get("answer", "")))
    mode = str(record.get("mode", ""))
    if item.answerable:
        em = exact_match(text, item.answers) if text else 0.0
        f1 = token_f1(text, item.answers) if text else 0.0
        contained = bool(text) and answer_in_text(item.answers, text)
    else:
        em = f1 = float(abstained)
        contained = False
    context: Mapping[str, str] = record.get("context") or {}
    citations = [] if abstained else list(record.get("citations") or [])
    ok = 0
    if item.answerable:
        for c in citations:
            chunk_text = context.get(str(c.get("chunk_id")), "")
            if answer_in_text(item.answers, chunk_text) or is_gold_source(
                str(c.get("path", "")), item.gold_sources
            ):
                ok += 1
    faith: float | None = None
    if mode in RETRIEVAL_MODES and not abstained:
        faith = faithfulness(
            str(record.get("answer", "")),
            [context.get(str(c.get("chunk_id")), "") for c in citations],
        )
    fmt: bool | None = None
    if item.format is not None:
        fmt = (not item.answerable) if abstained else format_ok(
            str(record.get("answer", "")), item.format)
    timings: Mapping[str, Any] = record.get("timings_ms") or {}
    tokens: Mapping[str, Any] = record.get("tokens") or {}
    completion = int(tokens.get("completion") or 0)
    tps = float(record.get("tokens_per_s") or 0.0)
    return QuestionScore(
        id=item.id, answerable=item.answerable, abstained=abstained, em=em, f1=f1,
        contained=contained, citations=len(citations), citations_ok=ok, faithfulness=faith,
        format_ok=fmt, latency_ms=float(timings.get("total") or 0.0),
        completion_tokens=completion if tps > 0 else 0,
        generate_s=completion / tps if tps > 0 else 0.0,
    )


# -- uncertainty -------------------------------------------------------------------------------

Z95 = 1.959963984540054
"""The standard normal quantile of a two-sided 95 % interval."""
BOOTSTRAP_RESAMPLES = 2000
"""Resamples per bootstrap interval: the 2.5 % and 97.5 % quantiles settle to about a point."""
BOOTSTRAP_SEED = 20261121
"""Fixed, so the same answers always give the same report."""


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of the share ``successes / n`` (None when ``n`` is 0).

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a
    point at 0 % or 100 %, where small evaluation sets often sit.
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..{n}, got {successes}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of already sorted values, linearly interpolated."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def bootstrap_interval(
    values: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """A percentile-bootstrap interval of the mean of ``values`` (None when empty).

    Resamples the questions with replacement ``resamples`` times with a seeded generator,
    so the interval is reproducible; a single value gives a zero-width interval.
    """
    n = len(values)
    if n == 0:
        return None
    rng = random.Random(seed)
    data = list(values)
    means = sorted(sum(rng.choices(data, k=n)) / n for _ in range(resamples))
    tail = (1.0 - level) / 2
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


@dataclass(frozen=True)
class Difference:
    """A change of one metric between two modes over the same questions."""

    before: float
    after: float
    low: float
    high: float
    n: int

    @property
    def delta(self) -> float:
        """``after - before``."""
        return self.after - self.before

    @property
    def significant(self) -> bool:
        """True when the 95 % interval of the change excludes zero."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        """The change as a JSON object, values rounded to 4 digits."""
        return {"before": round(self.before, 4), "after": round(self.after, 4),
                "delta": round(self.delta, 4), "low": round(self.low, 4),
                "high": round(self.high, 4), "n": self.n, "significant": self.significant}


def paired_difference(
    before: Sequence[float],
    after: Sequence[float],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> Difference | None:
    """The mean change from ``before`` to ``after``, paired by question, with its interval.

    Both sequences score the same questions in the same order. Resampling the per-question
    differences (a paired bootstrap) removes the questions' own difficulty from the
    interval, so it is much narrower than comparing two separate intervals.
    """
    if len(before) != len(after):
        raise ValueError(f"paired scores differ in length: {len(before)} vs {len(after)}")
    if not before:
        return None
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    interval = bootstrap_interval(diffs, resamples=resamples, seed=seed)
    assert interval is not None
    n = len(diffs)
    return Difference(before=sum(before) / n, after=sum(after) / n,
                      low=interval[0], high=interval[1], n=n)


def _share(flags: Sequence[bool]) -> list[float] | None:
    interval = wilson_interval(sum(flags), len(flags))
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


def _boot(values: Sequence[float]) -> list[float] | None:
    interval = bootstrap_interval(values)
    return None if interval is None else [round(interval[0], 4), round(interval[1], 4)]


# -- one mode ----------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(scores: Sequence[QuestionScore], mode: str) -> dict[str, Any]:
    """The metrics of one mode over its scored questions (None where not applicable)."""
    ans = [s for s in scores if s.answerable]
    unans = [s for s in scores if not s.answerable]
    answered = [s for s in scores if not s.abstained]
    cited_pool = [s for s in answered if s.answerable]
    n_cit = sum(s.citations for s in cited_pool)
    retrieval = mode in RETRIEVAL_MODES
    formats = [s.format_ok for s in scores if s.format_ok is not None]
    faith = [s.faithfulness for s in answered if s.faithfulness is not None]
    timing = BatchSummary(
        latencies_ms=[s.latency_ms for s in scores],
        completion_tokens=sum(s.completion_tokens for s in scores),
        generate_s=sum(s.generate_s for s in scores),
    )
    return {
        "questions": len(scores),
        "answerable": len(ans),
        "unanswerable": len(unans),
        "abstained": sum(s.abstained for s in scores),
        "accuracy": _mean([float(s.correct) for s in scores]),
        "em": _mean([s.em for s in scores]),
        "f1": _mean([s.f1 for s in scores]),
        "em_answerable": _mean([s.em for s in ans]),
        "f1_answerable": _mean([s.f1 for s in ans]),
        "contained": _mean([float(s.contained) for s in ans]),
        "citation_precision": (sum(s.citations_ok for s in cited_pool) / n_cit
                               if retrieval and n_cit else None),
        "citation_coverage": (_mean([float(s.citations > 0) for s in answered])
                              if retrieval else None),
        "abstention_accuracy": _mean([float(s.abstained) for s in unans]),
        "false_abstention": _mean([float(s.abstained) for s in ans]),
        "format_compliance": _mean([float(f) for f in formats]),
        "format_questions": len(formats),
        "faithfulness": _mean(faith) if retrieval else None,
        "p50_ms": round(timing.p50_ms, 1) if scores else None,
        "p95_ms": round(timing.p95_ms, 1) if scores else None,
        "tokens_per_s": round(timing.tokens_per_s, 2) if timing.generate_s > 0 else None,
        "intervals": {k: v for k, v in {
            "accuracy": _share([s.correct for s in scores]),
            "em": _boot([s.em for s in scores]),
            "f1": _boot([s.f1 for s in scores]),
            "em_answerable": _boot([s.em for s in ans]),
            "f1_answerable": _boot([s.f1 for s in ans]),
            "contained": _share([s.contained for s in ans]),
            "citation_coverage": (_share([s.citations > 0 for s in answered])
                                  if retrieval else None),
            "abstention_accuracy": _share([s.abstained for s in unans]),
            "false_abstention": _share([s.abstained for s in ans]),
            "format_compliance": _share([bool(f) for f in formats]),
            "faithfulness": _boot(faith) if retrieval else None,
        }.items() if v is not None},
    }
