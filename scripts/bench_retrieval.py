#!/usr/bin/env python
"""Retrieval benchmark: ingest throughput, query latency at scale, retrieval quality.

Sections (``--sections``, default all three):

1. **ingest**: the demo corpus (CPython's pydoc topics) into a fresh knowledge base; files,
   chunks, seconds, chunks/s; then the same ingest again with nothing changed, whose time
   should be under 10% of the first.
2. **latency**: p50/p95 per search mode at about 10k and 100k chunks, query embedding
   included. The large knowledge bases are synthetic: the real chunks and vectors of the
   demo and SQuAD knowledge bases, replicated with a unique id word appended to each text
   and Gaussian noise added to each vector (then re-normalised), written straight through
   ``KnowledgeBase.replace_document`` in documents of 100 chunks. Queries are real SQuAD
   questions. Target: hybrid p95 <= 60 ms at 100k. Hybrid is also measured with
   the channels in turn on one connection (``retrieve.concurrent_channels`` off) and with
   every query word searched (``retrieve.keyword_max_share`` = 1), taking turns query by
   query, and the ratios printed. On the largest knowledge
   base, hybrid hit@1 of 300 answerable SQuAD questions shows what leaving out common words
   costs in quality (hit@5 is kept in the JSON only: each paragraph is there many times
   over, so the top 5 are mostly copies of the first).
3. **quality**: the paragraphs of a SQuAD split (``--split``, default test) as a knowledge
   base; every answerable question of the split in each mode; hit@k = share of questions
   for which a gold answer occurs (case-insensitive, whitespace-normalised substring) in
   the text of one of the top-k chunks. Targets: hybrid hit@1 >= 0.90, hit@5 >= 0.98, and
   hybrid at least as good as the better single channel at both depths.
   ``--grid`` also evaluates hybrid fusion over a grid of (vector_weight, keyword_weight,
   rrf_k) on the chosen split: tune on ``--split dev``, report on test. ``--rerank`` adds
   hybrid + the reranker (``retrieve.rerank_model``, its top ``rerank_depth``): each
   question's candidates are scored once and combined at every weight of a small grid
   (the configured ``rerank_weight`` is the row the targets read); about 0.7 s per
   candidate on 2 cores, so a split takes tens of minutes.

Everything runs under a temporary data directory that is deleted at the end (the
synthetic knowledge bases are kept in ``--keep DIR`` when given, and reused from there).
The numbers are printed as tables and, with ``--out FILE``, written as JSON.

    .venv/bin/python scripts/bench_retrieval.py                       # full run
    .venv/bin/python scripts/bench_retrieval.py --quick               # smoke run
    .venv/bin/python scripts/bench_retrieval.py --grid --split dev    # tune fusion on dev
    .venv/bin/python scripts/bench_retrieval.py --sections quality --rerank   # + reranker
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import calibrate_margin  # noqa: E402

from appliance.api import Appliance  # noqa: E402
from appliance.config import Settings, load_settings  # noqa: E402
from appliance.demo import write_pydoc_corpus  # noqa: E402
from appliance.evaluate.squad import (  # noqa: E402
    Article,
    Question,
    answer_in_text,
    corpus_file_name,
    load_squad,
    questions,
    split_articles,
    write_corpus,
)
from appliance.retrieve import (  # noqa: E402
    Retriever,
    proximity,
    query_terms,
    rerank_hits,
    rrf_fuse,
    score_fuse,
)
from appliance.store import KnowledgeBase  # noqa: E402
from appliance.types import Chunk  # noqa: E402

MODES = ("vector", "keyword", "hybrid")
EVERY_WORD = "hybrid, every query word"
BASELINES: dict[str, dict[str, Any]] = {  # hybrid with one setting changed, for the ratios
    "hybrid, channels in turn": {"concurrent_channels": False},
    EVERY_WORD: {"keyword_max_share": 1.0},
}
SCALED_QUALITY_QUESTIONS = 300
SECTIONS = ("ingest", "latency", "quality")

TARGET_RERUN_RATIO = 0.10
TARGET_HYBRID_P95_MS_100K = 60.0
TARGET_HIT1 = 0.90
TARGET_HIT5 = 0.98

DOC_CHUNKS = 100  # chunks per synthetic document
VECTOR_NOISE = 0.02  # per-dimension sigma: cos(original, copy) is about 0.93 at 384 dims
WARMUP_QUERIES = 5
GRID_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
GRID_RRF_K = (10, 30, 60)
GRID_DEPTH = 50
GRID_SCORE_KEYWORD = (0.25, 0.5, 0.75, 1.0, 1.5)  # score fusion, vector weight 1
GRID_PROXIMITY = (0.0, 0.25, 0.5, 0.75, 1.0)
RERANK_WEIGHTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0)

Vectors = npt.NDArray[np.float32]


# -- helpers -------------------------------------------------------------------------------


def pct(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation); NaN for no values."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else math.nan


def fmt(value: float | int | None, digits: int = 1) -> str:
    """A number for a table cell."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


@dataclass
class SummaryRow:
    """One line of the final table: a number and, when it has one, its target."""

    section: str
    metric: str
    value: float | int | str | None
    target: str = ""
    ok: bool | None = None
    digits: int = 3
    percent: bool = False

    def cell(self) -> str:
        """The value as the summary table shows it."""
        if isinstance(self.value, str):
            return self.value
        if self.percent and isinstance(self.value, float) and not math.isnan(self.value):
            return f"{self.value:.{self.digits}%}"
        return fmt(self.value, self.digits)

    def to_json(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "metric": self.metric,
            "value": self.value,
            "target": self.target or None,
            "ok": self.ok,
        }


@dataclass
class SeedData:
    """Real chunks and their vectors, the material the synthetic knowledge bases copy."""

    texts: list[str]
    headings: list[str]
    tokens: list[int]
    vectors: Vectors


@dataclass
class Bench:
    """State shared by the sections: options, the appliance, results."""

    args: argparse.Namespace
    console: Console
    root: Path
    settings: Settings
    app: Appliance
    results: dict[str, Any] = field(default_factory=dict)
    summary: list[SummaryRow] = field(default_factory=list)
    _articles: list[Article] | None = None

    @property
    def articles(self) -> list[Article]:
        if self._articles is None:
            self._articles = load_squad(self.args.squad)
        return self._articles

    def split(self, name: str) -> list[Article]:
        dev, test = split_articles(self.articles)
        return {"dev": dev, "test": test, "all": list(self.articles)}[name]

    def ensure_kb(self, name: str, folder_writer: Callable[[Path], object]) -> dict[str, Any]:
        """Ingest a corpus into knowledge base ``name`` unless this run already did."""
        key = f"kb:{name}"
        if key not in self.results:
            folder = self.root / "corpora" / name
            folder_writer(folder)
            report = self.app.ingest([folder], kb=name)
            self.results[key] = report.to_json() | {"files": _files(report.to_json())}
        info: dict[str, Any] = self.results[key]
        return info

    @contextmanager
    def step(self, text: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with self.console.status(text):
            yield
        self.console.print(f"[dim]{text}: {time.perf_counter() - t0:.1f} s[/dim]")


def _files(report: dict[str, Any]) -> int:
    return (
        int(report["added"])
        + int(report["updated"])
        + int(report["unchanged"])
        + len(report["failed"])
    )


# -- 1. ingest -----------------------------------------------------------------------------


def section_ingest(b: Bench) -> None:
    corpus = b.root / "corpora" / "demo"
    write_pydoc_corpus(corpus)
    _ = b.app.embedder  # load the model before timing
    with b.step("ingest: demo corpus, first run"):
        first = b.app.ingest([corpus], kb="demo")
    with b.step("ingest: demo corpus, unchanged re-run"):
        second = b.app.ingest([corpus], kb="demo")
    b.results["kb:demo"] = first.to_json() | {"files": _files(first.to_json())}
    ratio = second.seconds / first.seconds if first.seconds > 0 else math.nan
    out = {
        "files": _files(first.to_json()),
        "failed": len(first.failed),
        "chunks": first.chunks,
        "seconds": first.seconds,
        "chunks_per_s": first.chunks_per_s,
        "rerun_seconds": second.seconds,
        "rerun_unchanged": second.unchanged,
        "rerun_ratio": ratio,
    }
    b.results["ingest"] = out
    table = Table(title="1. Ingest throughput (demo corpus: pydoc topics)")
    for col in ("files", "failed", "chunks", "seconds", "chunks/s", "re-run s", "re-run / first"):
        table.add_column(col, justify="right")
    table.add_row(
        fmt(out["files"]),
        fmt(out["failed"]),
        fmt(out["chunks"]),
        fmt(first.seconds, 2),
        fmt(first.chunks_per_s),
        fmt(second.seconds, 3),
        f"{ratio:.1%}",
    )
    b.console.print(table)
    b.summary += [
        SummaryRow("ingest", "demo files", out["files"]),
        SummaryRow("ingest", "demo files failed", out["failed"], "0", out["failed"] == 0),
        SummaryRow("ingest", "demo chunks", first.chunks),
        SummaryRow("ingest", "first run s", first.seconds, digits=2),
        SummaryRow("ingest", "demo chunks/s", first.chunks_per_s, digits=1),
        SummaryRow("ingest", "unchanged re-run s", second.seconds, digits=3),
        SummaryRow(
            "ingest",
            "unchanged re-run / first run",
            ratio,
            f"< {TARGET_RERUN_RATIO:.0%}",
            ratio < TARGET_RERUN_RATIO,
            digits=1,
            percent=True,
        ),
    ]


# -- 2. latency ----------------------------------------------------------------------------


def _seed_data(b: Bench) -> SeedData:
    """Chunks and vectors of the demo and all-SQuAD knowledge bases (ingested if needed)."""
    with b.step("latency: seed knowledge bases (demo, SQuAD all)"):
        b.ensure_kb("demo", write_pydoc_corpus)
        b.ensure_kb("squad-all", lambda folder: write_corpus(b.articles, folder))
    texts: list[str] = []
    headings: list[str] = []
    tokens: list[int] = []
    vectors: list[Vectors] = []
    for name in ("demo", "squad-all"):
        with KnowledgeBase(b.settings.kb_path(name)) as kb:
            vecs = {
                int(rowid): np.frombuffer(blob, dtype=np.float32)
                for rowid, blob in kb.conn.execute("SELECT rowid, embedding FROM chunks_vec")
            }
            ids = sorted(vecs)
            rows = kb.chunks(ids)
            token_counts = dict(kb.conn.execute("SELECT id, token_count FROM chunks"))
            for cid in ids:
                row = rows[cid]
                texts.append(row.text)
                headings.append(row.heading)
                tokens.append(int(token_counts[cid]))
                vectors.append(vecs[cid])
    return SeedData(texts, headings, tokens, np.vstack(vectors).astype(np.float32))


def _grow_kb(b: Bench, path: Path, seed: SeedData, target: int, rng: np.random.Generator) -> float:
    """Append synthetic chunks to the knowledge base at ``path`` until it holds ``target``.

    Returns the seconds spent writing.
    """
    t0 = time.perf_counter()
    with KnowledgeBase(path, create=True) as kb:
        kb.bind_embedder(b.app.embedder)
        have = kb.count("chunks")
        doc_no = kb.count("documents")
        n_seed = len(seed.texts)
        while have < target:
            take = min(DOC_CHUNKS, target - have)
            idx = (np.arange(have, have + take) * 7919) % n_seed  # a stride mixes the sources
            noise = rng.normal(0.0, VECTOR_NOISE, (take, seed.vectors.shape[1]))
            vecs = seed.vectors[idx] + noise.astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            words = rng.integers(0, 36**8, size=take)
            chunks = []
            for order, (i, word) in enumerate(zip(idx.tolist(), words.tolist(), strict=True)):
                text = f"{seed.texts[i]} ref{np.base_repr(word, 36).lower()}"
                heading = seed.headings[i]
                chunks.append(
                    Chunk(
                        order=order,
                        text=text,
                        heading_path=(heading,) if heading else (),
                        page=None,
                        start=0,
                        end=len(text),
                        token_count=seed.tokens[i] + 3,
                    )
                )
            name = f"synthetic/{doc_no:06d}.txt"
            kb.replace_document(
                path=name,
                sha256=hashlib.sha256(name.encode()).hexdigest(),
                size=0,
                mtime=0.0,
                title=f"synthetic {doc_no}",
                kind="text",
                collection="default",
                chunks=chunks,
                vectors=vecs.astype(np.float32),
            )
            doc_no += 1
            have += take
        kb.checkpoint()
    return time.perf_counter() - t0


def _scaled_kb(
    b: Bench,
    seed: SeedData,
    size: int,
    store: Path,
    previous: Path | None,
    rng: np.random.Generator,
) -> tuple[Path, float, bool]:
    """A synthetic knowledge base of ``size`` chunks under ``store``: (path, build s, reused).

    One left there by an earlier ``--keep`` run with the right size and embedder is
    reused; otherwise it is built by copying ``previous`` (a smaller one) and growing it.
    """
    path = store / f"scaled-{size}.sqlite"
    if path.is_file():
        try:
            with KnowledgeBase(path) as kb:
                if kb.count("chunks") == size and kb.embedder_id == b.app.embedder.id:
                    return path, 0.0, True
        except Exception:  # unreadable, foreign or half-built: rebuild it
            pass
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    if previous is not None and previous.is_file():
        shutil.copyfile(previous, path)
    return path, _grow_kb(b, path, seed, size, rng), False


def _latency_queries(b: Bench, n: int) -> tuple[list[str], list[str]]:
    """(warm-up, measured) questions: a fixed random sample of all SQuAD questions."""
    qs = [q.question for q in questions(b.articles)]
    random.Random(0).shuffle(qs)
    return qs[:WARMUP_QUERIES], qs[WARMUP_QUERIES : WARMUP_QUERIES + n]


def _measure(
    retrievers: dict[str, tuple[Retriever, str]], warmup: list[str], queries: list[str]
) -> dict[str, dict[str, Any]]:
    """Latency of each labelled (retriever, mode), taking turns query by query so that a
    change in the machine's load falls on all of them alike."""
    for q in warmup:
        for retriever, mode in retrievers.values():
            retriever.search(q, mode=mode)
    total: dict[str, list[float]] = {label: [] for label in retrievers}
    embed: dict[str, list[float]] = {label: [] for label in retrievers}
    search: dict[str, list[float]] = {label: [] for label in retrievers}
    for q in queries:
        for label, (retriever, mode) in retrievers.items():
            t0 = time.perf_counter()
            result = retriever.search(q, mode=mode)
            total[label].append((time.perf_counter() - t0) * 1000)
            embed[label].append(result.timings_ms.get("embed", 0.0))
            search[label].append(result.timings_ms.get("search", 0.0))
    return {
        label: {
            "queries": len(queries),
            "p50_ms": pct(total[label], 50),
            "p95_ms": pct(total[label], 95),
            "max_ms": max(total[label]),
            "embed_p50_ms": pct(embed[label], 50),
            "embed_p95_ms": pct(embed[label], 95),
            "search_p50_ms": pct(search[label], 50),
            "search_p95_ms": pct(search[label], 95),
        }
        for label in retrievers
    }


def _scaled_quality(b: Bench, retrievers: dict[str, Retriever]) -> dict[str, dict[str, float]]:
    """Hybrid hit@1 / hit@5 on a synthetic knowledge base (every SQuAD paragraph is in it
    many times over), for a fixed sample of answerable SQuAD questions, per retriever."""
    qs = questions(b.articles, answerable=True)
    random.Random(1).shuffle(qs)
    qs = qs[:SCALED_QUALITY_QUESTIONS]
    out: dict[str, dict[str, float]] = {}
    for label, retriever in retrievers.items():
        hit1 = hit5 = 0
        for q in qs:
            texts = [h.text for h in retriever.search(q.question, k=5, mode="hybrid").hits]
            hit1 += _hit(q.answers, texts, 1)
            hit5 += _hit(q.answers, texts, 5)
        out[label] = {"questions": len(qs), "hit@1": hit1 / len(qs), "hit@5": hit5 / len(qs)}
    return out


def section_latency(b: Bench) -> None:
    sizes = [10_000] if b.args.quick else [10_000, 100_000]
    n_queries = 30 if b.args.quick else 100
    seed = _seed_data(b)
    warmup, queries = _latency_queries(b, n_queries)
    store = b.args.keep or (b.root / "scaled")
    store.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    out: dict[str, Any] = {
        "seed_chunks": len(seed.texts),
        "queries": len(queries),
        "vector_noise": VECTOR_NOISE,
        "sizes": {},
    }
    table = Table(title="2. Query latency, ms (query embedding included)")
    note = (
        f"{len(queries)} SQuAD questions after {WARMUP_QUERIES} warm-up ones; "
        f"synthetic KBs copied from {len(seed.texts):,} real chunks"
    )
    for col in ("chunks", "mode", "p50", "p95", "max", "embed p50", "search p50", "search p95"):
        table.add_column(col, justify="right")
    previous: Path | None = None
    for size in sizes:
        with b.step(f"latency: knowledge base of {size:,} chunks"):
            path, build_s, reused = _scaled_kb(b, seed, size, store, previous, rng)
        previous = path
        entry: dict[str, Any] = {
            "build_seconds": build_s,
            "reused": reused,
            "file_mb": path.stat().st_size / 1e6,
            "modes": {},
        }
        with contextlib.ExitStack() as stack:
            stack.enter_context(b.step(f"latency: {size:,} chunks, queries"))
            kb = stack.enter_context(KnowledgeBase(path))

            def retriever(kb: KnowledgeBase = kb, **update: Any) -> Retriever:
                r = Retriever(kb, b.app.embedder, b.settings.retrieve.model_copy(update=update))
                stack.callback(r.close)
                return r

            default = retriever()
            runs = {mode: (default, mode) for mode in MODES}
            baselines = {label: retriever(**update) for label, update in BASELINES.items()}
            runs.update({label: (r, "hybrid") for label, r in baselines.items()})
            measured = _measure(runs, warmup, queries)
            if size == max(sizes):
                entry["quality"] = _scaled_quality(
                    b, {"hybrid": default, EVERY_WORD: baselines[EVERY_WORD]})
            for mode, stats in measured.items():
                entry["modes"][mode] = stats
                table.add_row(
                    fmt(size),
                    mode,
                    fmt(stats["p50_ms"]),
                    fmt(stats["p95_ms"]),
                    fmt(stats["max_ms"]),
                    fmt(stats["embed_p50_ms"]),
                    fmt(stats["search_p50_ms"]),
                    fmt(stats["search_p95_ms"]),
                )
        out["sizes"][str(size)] = entry
        label = f"{size // 1000}k"
        for mode in MODES:
            stats = entry["modes"][mode]
            b.summary.append(
                SummaryRow("latency", f"{mode} p50 ms @ {label}", stats["p50_ms"], digits=1)
            )
            target, ok = "", None
            if size == 100_000 and mode == "hybrid":
                target = f"<= {TARGET_HYBRID_P95_MS_100K:.0f}"
                ok = stats["p95_ms"] <= TARGET_HYBRID_P95_MS_100K
            b.summary.append(
                SummaryRow(
                    "latency", f"{mode} p95 ms @ {label}", stats["p95_ms"], target, ok, digits=1
                )
            )
        for name in BASELINES:
            for q in ("p50", "p95"):
                b.summary.append(SummaryRow(
                    "latency", f"hybrid {q} / {name} @ {label}",
                    entry["modes"]["hybrid"][f"{q}_ms"] / entry["modes"][name][f"{q}_ms"],
                    digits=2))
        for name, quality in entry.get("quality", {}).items():  # hit@5: copies of hit@1
            b.summary.append(SummaryRow(
                "latency", f"{name} hit@1 @ {label} ({quality['questions']:.0f} "
                "answerable SQuAD questions)", quality["hit@1"]))
        b.summary.append(
            SummaryRow(
                "latency",
                f"query embed p50 ms @ {label}",
                entry["modes"]["hybrid"]["embed_p50_ms"],
                digits=1,
            )
        )
        b.summary.append(
            SummaryRow(
                "latency", f"synthetic KB build s @ {label}", None if reused else build_s, digits=1
            )
        )
    b.results["latency"] = out
    b.console.print(table)
    b.console.print(f"  {note}")
    parts = []
    for size_key, e in out["sizes"].items():
        how = "reused" if e["reused"] else f"built in {e['build_seconds']:.1f} s"
        parts.append(f"{int(size_key):,} chunks {how} ({e['file_mb']:.0f} MB)")
    builds = ", ".join(parts)
    b.console.print(f"  synthetic knowledge bases: {builds}")
    if not b.args.keep:
        shutil.rmtree(store, ignore_errors=True)


# -- 3. quality ----------------------------------------------------------------------------


def _hit(answers: Sequence[str], texts: Sequence[str], k: int) -> bool:
    return any(answer_in_text(answers, t) for t in texts[:k])


def write_articles(articles: Sequence[Article], folder: Path) -> None:
    """One ``<title>.txt`` per article (title, blank line, its paragraphs separated by blank
    lines), as a user would ingest a Wikipedia article: the chunker, not the data set,
    then decides where chunks end."""
    folder.mkdir(parents=True, exist_ok=True)
    for article in articles:
        body = "\n\n".join(p.context.strip() for p in article.paragraphs)
        name = corpus_file_name(article.title, 0).removesuffix("_000.txt") + ".txt"
        (folder / name).write_text(f"{article.title}\n\n{body}\n", encoding="utf-8")


def _quality_questions(b: Bench) -> tuple[str, list[Question]]:
    per_article = b.args.layout == "article"
    kb = f"squad-{b.args.split}" + ("-articles" if per_article else "")
    articles = b.split(b.args.split)
    qs = questions(articles, answerable=True)
    if b.args.quick:
        qs = qs[:300]
    with b.step(f"quality: ingest SQuAD {b.args.split} {b.args.layout}s"):
        b.ensure_kb(kb, lambda folder: (write_articles if per_article else write_corpus)(
            articles, folder))
    return kb, qs


def section_quality(b: Bench) -> None:
    kb, qs = _quality_questions(b)
    info = b.results[f"kb:{kb}"]
    out: dict[str, Any] = {
        "split": b.args.split,
        "articles": sorted(a.title for a in b.split(b.args.split)),
        "questions": len(qs),
        "files": info["files"],
        "chunks": info["chunks"],
        "modes": {},
    }
    for mode in MODES:
        hit1 = hit5 = 0
        mrr = 0.0
        times: list[float] = []
        with b.step(f"quality: {len(qs)} questions, {mode}"):
            for q in qs:
                t0 = time.perf_counter()
                result = b.app.search(q.question, kb=kb, k=5, mode=mode)
                times.append((time.perf_counter() - t0) * 1000)
                texts = [h.text for h in result.hits]
                hit1 += _hit(q.answers, texts, 1)
                hit5 += _hit(q.answers, texts, 5)
                rank = next(
                    (r for r, t in enumerate(texts, 1) if answer_in_text(q.answers, t)), None
                )
                mrr += 1 / rank if rank else 0.0
        n = max(1, len(qs))
        out["modes"][mode] = {
            "hit@1": hit1 / n,
            "hit@5": hit5 / n,
            "mrr@5": mrr / n,
            "p50_ms": pct(times, 50),
        }
    b.results["quality"] = out
    modes = out["modes"]
    table = Table(title=f"3. Retrieval quality, SQuAD {b.args.split} split")
    note = (
        f"{', '.join(out['articles'])}: {len(qs)} answerable questions, "
        f"{out['files']} {b.args.layout}s, {out['chunks']} chunks; hit = a gold answer in the "
        "chunk's text"
    )
    for col in ("mode", "hit@1", "hit@5", "MRR@5", "p50 ms"):
        table.add_column(col, justify="right")
    for mode in MODES:
        m = modes[mode]
        table.add_row(
            mode, fmt(m["hit@1"], 3), fmt(m["hit@5"], 3), fmt(m["mrr@5"], 3), fmt(m["p50_ms"])
        )
    b.console.print(table)
    b.console.print(f"  {note}")
    h, v, k = modes["hybrid"], modes["vector"], modes["keyword"]
    tag = f" ({b.args.split})"
    b.summary += [
        SummaryRow("quality", "questions" + tag, len(qs)),
        SummaryRow("quality", "vector hit@1" + tag, v["hit@1"]),
        SummaryRow("quality", "vector hit@5" + tag, v["hit@5"]),
        SummaryRow("quality", "keyword hit@1" + tag, k["hit@1"]),
        SummaryRow("quality", "keyword hit@5" + tag, k["hit@5"]),
        SummaryRow(
            "quality",
            "hybrid hit@1" + tag,
            h["hit@1"],
            f">= {TARGET_HIT1:.2f}",
            h["hit@1"] >= TARGET_HIT1,
        ),
        SummaryRow(
            "quality",
            "hybrid hit@5" + tag,
            h["hit@5"],
            f">= {TARGET_HIT5:.2f}",
            h["hit@5"] >= TARGET_HIT5,
        ),
        SummaryRow(
            "quality",
            "hybrid - best channel, hit@1" + tag,
            h["hit@1"] - max(v["hit@1"], k["hit@1"]),
            ">= 0",
            h["hit@1"] >= max(v["hit@1"], k["hit@1"]),
        ),
        SummaryRow(
            "quality",
            "hybrid - best channel, hit@5" + tag,
            h["hit@5"] - max(v["hit@5"], k["hit@5"]),
            ">= 0",
            h["hit@5"] >= max(v["hit@5"], k["hit@5"]),
        ),
    ]
    if b.args.rerank:
        rerank_quality(b, kb, qs)
    if b.args.grid:
        grid(b, kb, qs)


def rerank_quality(b: Bench, kb: str, qs: list[Question]) -> None:
    """Hybrid + reranker: hit@1 / hit@5 and latency at each weight of RERANK_WEIGHTS."""
    cfg = b.settings.retrieve
    weights = sorted({*RERANK_WEIGHTS, cfg.rerank_weight})
    retriever = b.app.retriever(kb)
    hits1 = dict.fromkeys(weights, 0)
    hits5 = 0
    base1 = 0
    times: list[float] = []
    with b.step(f"quality: {len(qs)} questions, hybrid + rerank ({cfg.rerank_model}, "
                f"top {cfg.rerank_depth})"):
        retriever.reranker  # noqa: B018 - load the model outside the timed loop
        for q in qs:
            t0 = time.perf_counter()
            hits = retriever.search(q.question, k=cfg.rerank_depth, mode="hybrid",
                                    rerank=False).hits
            scores = retriever.reranker.score(q.question, [h.text for h in hits])
            times.append((time.perf_counter() - t0) * 1000)
            texts = [h.text for h in hits]
            base1 += _hit(q.answers, texts, 1)
            hits5 += _hit(q.answers, texts, 5)
            for w in weights:
                hits1[w] += _hit(q.answers, [h.text for h in rerank_hits(hits, scores, w)], 1)
    n = max(1, len(qs))
    b.results["rerank"] = {
        "model": cfg.rerank_model, "depth": cfg.rerank_depth, "weight": cfg.rerank_weight,
        "hit@1_by_weight": {str(w): hits1[w] / n for w in weights},
        "hit@1_without": base1 / n, "hit@5": hits5 / n, "p50_ms": pct(times, 50),
        "p95_ms": pct(times, 95),
    }
    table = Table(title=f"3b. Hybrid + rerank ({cfg.rerank_model}, top {cfg.rerank_depth}), "
                        f"SQuAD {b.args.split} split")
    for col in ("rerank weight", "hit@1", "hit@5", "p50 ms", "p95 ms"):
        table.add_column(col, justify="right")
    table.add_row("0 (no rerank)", fmt(base1 / n, 3), fmt(hits5 / n, 3), "", "")
    for w in weights:
        mark = " (setting)" if w == cfg.rerank_weight else ""
        table.add_row(f"{w:g}{mark}", fmt(hits1[w] / n, 3), fmt(hits5 / n, 3),
                      fmt(pct(times, 50)), fmt(pct(times, 95)))
    b.console.print(table)
    chosen = hits1[cfg.rerank_weight] / n
    tag = f" ({b.args.split})"
    b.summary += [
        SummaryRow("quality", "hybrid + rerank hit@1" + tag, chosen, f">= {TARGET_HIT1:.2f}",
                   chosen >= TARGET_HIT1),
        SummaryRow("quality", "hybrid + rerank p50 ms" + tag, pct(times, 50)),
    ]


def _score(rankings: list[list[int]], relevant: list[set[int]]) -> dict[str, float]:
    hit1 = hit5 = 0
    mrr = 0.0
    for ranked, rel in zip(rankings, relevant, strict=True):
        top = ranked[:5]
        rank = next((r for r, cid in enumerate(top, 1) if cid in rel), None)
        hit1 += rank == 1
        hit5 += rank is not None
        mrr += 1 / rank if rank else 0.0
    n = max(1, len(rankings))
    return {"hit@1": hit1 / n, "hit@5": hit5 / n, "mrr@5": mrr / n}


def grid(b: Bench, kb_name: str, qs: list[Question]) -> None:
    """Hybrid fusion over a grid of settings, each channel searched once per question.

    RRF rows fuse ``GRID_DEPTH`` candidates a channel; score-fusion rows (vector weight 1,
    keyword and proximity weights varied, proximity_window as configured) fuse
    ``candidates`` a channel, as :meth:`Retriever.search` does.
    """
    r = b.settings.retrieve
    depth = max(r.candidates, 5)
    with (
        KnowledgeBase(b.settings.kb_path(kb_name)) as kb,
        b.step(f"grid: channel searches for {len(qs)} questions"),
    ):
        ids = [int(x[0]) for x in kb.conn.execute("SELECT id FROM chunks")]
        texts = {cid: row.text for cid, row in kb.chunks(ids).items()}
        relevant = [{cid for cid, t in texts.items() if answer_in_text(q.answers, t)} for q in qs]
        terms = {cid: kb.terms(t) for cid, t in texts.items()}
        vec_ids: list[list[int]] = []
        kw_ids: list[list[int]] = []
        scored: list[tuple[dict[int, float], dict[int, float], dict[int, float]]] = []
        for q in qs:
            qvec = b.app.embedder.embed([q.question])[0]  # one at a time, as search does
            vector = kb.vector_search(qvec, GRID_DEPTH)
            keyword = kb.keyword_search(q.question, GRID_DEPTH)
            vec_ids.append([cid for cid, _ in vector])
            kw_ids.append([cid for cid, _ in keyword])
            cosine = dict(vector[:depth])
            cosine.update(kb.similarities(qvec, [c for c, _ in keyword[:depth] if c not in cosine]))
            qterms = query_terms(kb, q.question)
            near = {c: proximity(qterms, terms[c], r.proximity_window) for c in cosine}
            scored.append((cosine, dict(keyword[:depth]), near))
    rows: list[dict[str, Any]] = []
    for vw in GRID_WEIGHTS:
        for kw in GRID_WEIGHTS:
            for rrf_k in GRID_RRF_K:
                fused = [
                    [
                        cid
                        for cid, _ in rrf_fuse(
                            {"vector": v, "keyword": k}, {"vector": vw, "keyword": kw}, rrf_k
                        )
                    ]
                    for v, k in zip(vec_ids, kw_ids, strict=True)
                ]
                rows.append(
                    {"fusion": "rrf", "vector_weight": vw, "keyword_weight": kw,
                     "proximity_weight": 0.0, "rrf_k": rrf_k}
                    | _score(fused, relevant)
                )
    for kw in GRID_SCORE_KEYWORD:
        for pw in GRID_PROXIMITY:
            weights = {"vector": 1.0, "keyword": kw, "proximity": pw}
            fused = [
                [cid for cid, _ in score_fuse(cos, bm, weights, near)]
                for cos, bm, near in scored
            ]
            rows.append(
                {"fusion": "score", "vector_weight": 1.0, "keyword_weight": kw,
                 "proximity_weight": pw, "rrf_k": None}
                | _score(fused, relevant)
            )

    def is_current(row: dict[str, Any]) -> bool:
        """Whether a row ranks as the current settings do."""
        if row["fusion"] != r.fusion:
            return False
        ratio = math.isclose(
            row["keyword_weight"] / row["vector_weight"],
            r.keyword_weight / max(r.vector_weight, 1e-9),
        )
        if row["fusion"] == "rrf":
            return ratio and math.isclose(row["vector_weight"], r.vector_weight) and (
                row["rrf_k"] == r.rrf_k
            )
        return ratio and math.isclose(
            row["proximity_weight"], r.proximity_weight / max(r.vector_weight, 1e-9)
        )

    def distance(row: dict[str, Any]) -> tuple[float, float, float]:
        """How far a row is from the current defaults (ties go to the nearest)."""
        ratio = abs(
            math.log(row["vector_weight"] / row["keyword_weight"])
            - math.log(max(r.vector_weight, 1e-9) / max(r.keyword_weight, 1e-9))
        )
        other = (
            abs(row["rrf_k"] - r.rrf_k)
            if row["fusion"] == "rrf"
            else abs(row["proximity_weight"] - r.proximity_weight)
        )
        return float(row["fusion"] != r.fusion), ratio, other

    rows.sort(key=lambda x: (-x["hit@1"], -x["hit@5"], -x["mrr@5"], *distance(x)))
    current = next((x for x in rows if is_current(x)), None)
    channels = {"vector only": _score(vec_ids, relevant), "keyword only": _score(kw_ids, relevant)}
    b.results["grid"] = {
        "split": b.args.split,
        "questions": len(qs),
        "rows": rows,
        "channels": channels,
        "current": current,
    }
    table = Table(title=f"Fusion grid, SQuAD {b.args.split} split: best rows")
    note = (
        f"{len(qs)} questions, {len(rows)} settings; rrf fuses {GRID_DEPTH} candidates per "
        f"channel, score fusion {depth} (vector weight 1, proximity_window "
        f"{r.proximity_window})"
    )
    for col in ("", "fusion", "vector_weight", "keyword_weight", "proximity_weight", "rrf_k",
                "hit@1", "hit@5", "MRR@5"):
        table.add_column(col, justify="right")

    def cells(row: dict[str, Any]) -> list[str]:
        return [
            row["fusion"],
            fmt(row["vector_weight"], 2),
            fmt(row["keyword_weight"], 2),
            fmt(row["proximity_weight"], 2),
            "" if row["rrf_k"] is None else str(row["rrf_k"]),
            fmt(row["hit@1"], 3),
            fmt(row["hit@5"], 3),
            fmt(row["mrr@5"], 3),
        ]

    for i, row in enumerate(rows[:8], 1):
        table.add_row(str(i), *cells(row))
    if current is not None:
        table.add_row("current", *cells(current), style="bold")
    for name, sc in channels.items():
        table.add_row(
            name, "", "", "", "", "", fmt(sc["hit@1"], 3), fmt(sc["hit@5"], 3),
            fmt(sc["mrr@5"], 3), style="dim",
        )
    b.console.print(table)
    b.console.print(f"  {note}")
    best = rows[0]
    tag = f" ({b.args.split})"
    b.summary += [
        SummaryRow(
            "grid",
            "best fusion / vector / keyword / proximity weight / rrf_k" + tag,
            f"{best['fusion']} / {best['vector_weight']:g} / {best['keyword_weight']:g} / "
            f"{best['proximity_weight']:g} / {best['rrf_k'] if best['rrf_k'] is not None else '-'}",
        ),
        SummaryRow("grid", "best hybrid hit@1" + tag, best["hit@1"]),
        SummaryRow("grid", "best hybrid hit@5" + tag, best["hit@5"]),
    ]
    quality = b.results.get("quality", {}).get("modes", {}).get("hybrid")
    if (
        current is not None
        and quality is not None
        and (
            abs(current["hit@1"] - quality["hit@1"]) > 1e-9
            or abs(current["hit@5"] - quality["hit@5"]) > 1e-9
        )
    ):
        b.console.print(
            "[yellow]note: the grid row of the current settings differs from "
            "Appliance.search's hybrid numbers above[/yellow]"
        )


# -- main ----------------------------------------------------------------------------------


def print_summary(b: Bench, seconds: dict[str, float]) -> None:
    table = Table(title="Summary")
    for col, justify in (
        ("section", "left"),
        ("metric", "left"),
        ("value", "right"),
        ("target", "right"),
        ("", "center"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in b.summary:
        mark = "" if row.ok is None else ("[green]ok[/green]" if row.ok else "[red]MISS[/red]")
        table.add_row(row.section, row.metric, row.cell(), row.target, mark)
    for name, s in seconds.items():
        table.add_row("time", f"{name} s", fmt(s, 1), "", "")
    b.console.print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--squad",
        type=Path,
        default=calibrate_margin.DEFAULT_SQUAD,
        help="SQuAD 2.0 JSON file (default: %(default)s)",
    )
    p.add_argument(
        "--split",
        choices=("dev", "test", "all"),
        default="test",
        help="SQuAD split for the quality section (default: test; tune on dev)",
    )
    p.add_argument(
        "--layout",
        choices=("paragraph", "article"),
        default="paragraph",
        help="quality corpus: one document per SQuAD paragraph (default) or per article "
        "(the chunker cuts it)",
    )
    p.add_argument(
        "--grid",
        action="store_true",
        help="also evaluate hybrid over a grid of fusion settings on --split "
        "(alone it implies --sections quality)",
    )
    p.add_argument(
        "--rerank",
        action="store_true",
        help="also evaluate hybrid + the reranker in the quality section (slow: an LLM "
        "scores each question's top candidates)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k chunks only, 30 queries, the first 300 questions",
    )
    p.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)",
    )
    p.add_argument("--out", type=Path, help="write the numbers as JSON to this file")
    p.add_argument(
        "--keep", type=Path, help="keep (and reuse) the synthetic knowledge bases in this folder"
    )
    args = p.parse_args(argv)
    if args.sections is None:
        args.sections = "quality" if args.grid else ",".join(SECTIONS)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.sections = [s for s in SECTIONS if s in chosen]
    if ("latency" in args.sections or "quality" in args.sections) and not args.squad.is_file():
        p.error(f"{args.squad} does not exist; pass --squad PATH")
    if args.keep:
        args.keep = args.keep.expanduser().resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 110)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="appliance-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(root / "home")
        app = Appliance(settings)
        b = Bench(args, console, root, settings, app)
        b.results["config"] = {
            "sections": args.sections,
            "split": args.split,
            "layout": args.layout,
            "quick": args.quick,
            "grid": args.grid,
            "rerank": args.rerank,
            "squad": str(args.squad),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "embedder": settings.embed.model,
            "retrieve": settings.retrieve.model_dump(),
        }
        try:
            for name, fn in (
                ("ingest", section_ingest),
                ("latency", section_latency),
                ("quality", section_quality),
            ):
                if name in args.sections:
                    t0 = time.perf_counter()
                    fn(b)
                    seconds[name] = time.perf_counter() - t0
        finally:
            app.close()
        seconds["total"] = time.perf_counter() - started
        b.results["seconds"] = seconds
        b.results["summary"] = [r.to_json() for r in b.summary]
        print_summary(b, seconds)
        if args.out:
            data = {k: v for k, v in b.results.items() if not k.startswith("kb:")}
            data["knowledge_bases"] = {
                k[3:]: v for k, v in b.results.items() if k.startswith("kb:")
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
            console.print(f"numbers written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
