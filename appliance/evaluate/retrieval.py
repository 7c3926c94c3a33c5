"""Retrieval-only evaluation on a data set in the BEIR layout.

A BEIR folder holds ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl``
(``{"_id", "text"}``) and ``qrels/test.tsv`` (``query-id``, ``corpus-id``, ``score``; a
header line is optional). The corpus is written as one text file per document and
ingested into a knowledge base in a temporary data directory (removed afterwards), with
the configured embedder and chunking. Every judged query is searched in keyword, vector
and hybrid mode; chunks map back to their documents (a document counts once, at its best
rank) and the rankings are scored with nDCG@10 (graded, linear gains as trec_eval),
recall@10, recall@k and MRR@10.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import InputError
from appliance.evaluate.metrics import ndcg_at_k, recall_at_k, reciprocal_rank
from appliance.files import read_text, unpaired_surrogate

__all__ = ["SEARCH_MODES", "BeirSet", "evaluate_beir", "load_beir", "score_ranking"]

SEARCH_MODES = ("keyword", "vector", "hybrid")
ProgressFn = Callable[[str, int, int], None]
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class BeirSet:
    """A BEIR data set: documents (title, text), queries, graded judgements."""

    corpus: dict[str, tuple[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _readable(path: Path, what: str) -> str:
    """The text of a BEIR file (:func:`appliance.files.read_text`), saying what a BEIR
    folder holds when the file is missing."""
    if not path.exists() or path.is_dir():
        raise InputError(f"{path} is missing; a BEIR folder holds corpus.jsonl, queries.jsonl "
                         "and qrels/test.tsv.")
    return read_text(path, f"the BEIR {what} file")


def _text_field(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InputError(f"{where}: '{key}' must be a string, not {type(value).__name__}; fix "
                         "that line.")
    return value


def _jsonl(path: Path, what: str) -> list[tuple[int, str, dict[str, Any]]]:
    """(line, id, row) of every object of a BEIR JSONL file; InputError names the line of
    a broken or nested-too-deep line, a row without a usable ``_id``, text that is not a
    string or holds an unpaired surrogate, and an ``_id`` that repeats."""
    rows: list[tuple[int, str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(_readable(path, what).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}: broken JSON ({exc}); fix the {what} file.") from None
        except RecursionError:
            raise InputError(f"{where}: the JSON nests too deeply to read; fix the {what} "
                             "file.") from None
        if not isinstance(row, dict) or "_id" not in row:
            raise InputError(f"{where}: expected an object with '_id'; fix the {what} file.")
        raw_id = row["_id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
            raise InputError(f"{where}: '_id' must be a non-empty string or a whole number; "
                             f"fix the {what} file.")
        row_id = str(raw_id)
        for key, value in (("_id", row_id), ("title", _text_field(row, "title", where)),
                           ("text", _text_field(row, "text", where))):
            bad = unpaired_surrogate(value)
            if bad is not None:
                raise InputError(f"{where}: '{key}' holds an unpaired surrogate ({bad}), which "
                                 "is not text; fix the escape.")
        if row_id in seen:
            raise InputError(f"{where}: repeats _id '{row_id}' (first on line {seen[row_id]}); "
                             "give every row its own id.")
        seen[row_id] = n
        rows.append((n, row_id, row))
    return rows


def load_beir(folder: Path) -> BeirSet:
    """Read a BEIR folder; InputError names the file and line of anything unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a BEIR data set folder.")
    corpus: dict[str, tuple[str, str]] = {
        doc_id: (str(r.get("title") or ""), str(r.get("text") or ""))
        for _, doc_id, r in _jsonl(folder / "corpus.jsonl", "corpus")}
    queries = {qid: str(r.get("text") or "")
               for _, qid, r in _jsonl(folder / "queries.jsonl", "queries")}
    qrels_path = folder / "qrels" / "test.tsv"
    qrels: dict[str, dict[str, int]] = {}
    judged_on: dict[tuple[str, str], tuple[int, int]] = {}
    for n, line in enumerate(_readable(qrels_path, "qrels").splitlines(), start=1):
        parts = line.strip().split("\t")
        if not line.strip():
            continue
        if len(parts) != 3:
            raise InputError(f"{qrels_path.name} line {n}: expected 3 tab-separated columns "
                             "(query-id, corpus-id, score).")
        qid, did, raw = parts
        try:
            score = int(float(raw))
        except (ValueError, OverflowError):  # not a number, or inf / nan
            if n == 1:
                continue  # the header
            raise InputError(f"{qrels_path.name} line {n}: score '{raw}' is not a number."
                             ) from None
        earlier = judged_on.get((qid, did))
        if earlier is not None and earlier[1] != score:
            raise InputError(f"{qrels_path.name} line {n}: judges query '{qid}' and document "
                             f"'{did}' {score}, but line {earlier[0]} judged them {earlier[1]}; "
                             "keep one judgement.")
        judged_on.setdefault((qid, did), (n, score))
        if score > 0:
            qrels.setdefault(qid, {})[did] = score
    qrels = {q: docs for q, docs in qrels.items() if q in queries and queries[q].strip()}
    if not qrels:
        raise InputError(f"{qrels_path} judges no query of queries.jsonl; nothing to evaluate.")
    if not any(d in corpus for docs in qrels.values() for d in docs):
        raise InputError(f"{qrels_path} judges only documents missing from corpus.jsonl "
                         "(or the corpus is empty); nothing to evaluate.")
    return BeirSet(corpus=corpus, queries=queries, qrels=qrels)


def _file_name(doc_id: str) -> str:
    safe = _UNSAFE.sub("_", doc_id).strip("._")[:60] or "doc"
    return f"{safe}-{hashlib.sha1(doc_id.encode('utf-8')).hexdigest()[:8]}.txt"


def score_ranking(ranked: list[str], judged: dict[str, int], k: int) -> dict[str, float]:
    """nDCG@10, recall@10, recall@k and MRR@10 of one ranking of document ids."""
    gains = [float(judged.get(d, 0)) for d in ranked]
    return {
        "ndcg@10": ndcg_at_k(gains, [float(g) for g in judged.values()], 10),
        "recall@10": recall_at_k(ranked, judged, 10),
        f"recall@{k}": recall_at_k(ranked, judged, k),
        "mrr@10": reciprocal_rank([g > 0 for g in gains], 10),
    }


def evaluate_beir(
    folder: Path, settings: Settings, *, k: int = 100, progress: ProgressFn | None = None
) -> dict[str, Any]:
    """Ingest a BEIR corpus into a temporary knowledge base and score each search mode."""
    from appliance.api import Appliance

    if k < 10:
        raise InputError("--k must be at least 10 (nDCG@10 and recall@10 need 10 results).")
    t0 = time.perf_counter()
    data = load_beir(folder)
    with tempfile.TemporaryDirectory(prefix="appliance-beir-") as tmp:
        home = Path(tmp)
        docs = home / "corpus"
        docs.mkdir()
        by_name: dict[str, str] = {}
        for doc_id, (title, text) in data.corpus.items():
            if not (title.strip() or text.strip()):
                continue
            name = _file_name(doc_id)
            by_name[name] = doc_id
            body = f"{title}\n\n{text}\n" if title.strip() else f"{text}\n"
            (docs / name).write_text(body, encoding="utf-8")
        app = Appliance(settings.model_copy(update={"home": home}))
        try:
            report = app.ingest(
                [docs], kb="beir",
                progress=(lambda d, t, _item: progress("ingest", d, t)) if progress else None,
            )
            t1 = time.perf_counter()
            retriever = app.retriever("beir")
            totals: dict[str, dict[str, float]] = {m: {} for m in SEARCH_MODES}
            queries = sorted(data.qrels)
            for n, qid in enumerate(queries, start=1):
                for mode in SEARCH_MODES:
                    result = retriever.search(data.queries[qid], k=k, mode=mode)
                    ranked: list[str] = []
                    for hit in result.hits:
                        doc = by_name.get(Path(hit.path).name)
                        if doc is not None and doc not in ranked:
                            ranked.append(doc)
                    for key, value in score_ranking(ranked, data.qrels[qid], k).items():
                        totals[mode][key] = totals[mode].get(key, 0.0) + value
                if progress is not None:
                    progress("search", n, len(queries))
            search_s = time.perf_counter() - t1
        finally:
            app.close()
    n_q = len(data.qrels)
    return {
        "folder": str(folder),
        "documents": len(data.corpus),
        "ingested": report.added + report.updated + report.unchanged,
        "failed": [f.path.rsplit("/", 1)[-1] + ": " + f.reason for f in report.failed],
        "chunks": report.chunks,
        "queries": n_q,
        "k": k,
        "modes": {m: {key: round(v / n_q, 4) for key, v in totals[m].items()}
                  for m in SEARCH_MODES},
        "ingest_s": round(report.seconds, 1),
        "search_ms_per_query": round(search_s * 1000 / (n_q * len(SEARCH_MODES)), 1),
        "seconds": round(time.perf_counter() - t0, 1),
    }
