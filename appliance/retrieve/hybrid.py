"""Vector, keyword and hybrid search over one knowledge base."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise

import apsw
import numpy as np
import numpy.typing as npt

from appliance.config import RetrieveSettings
from appliance.errors import ApplianceError, InputError
from appliance.files import require_utf8
from appliance.retrieve.rerank import Reranker, rerank_hits
from appliance.store import KnowledgeBase, query_words
from appliance.store.sqlite import ChunkRow
from appliance.types import Embedder, Hit, fold_text, is_blank

__all__ = ["MAX_QUERY_CHARS", "Retriever", "SearchResult", "check_query", "proximity",
           "query_terms", "rrf_fuse", "score_fuse", "under"]

MODES = ("hybrid", "vector", "keyword")

log = logging.getLogger(__name__)

_SIDE_BROKEN = (apsw.CantOpenError, apsw.IOError, apsw.ReadOnlyError, apsw.NotADBError,
                apsw.CorruptError, apsw.ConnectionClosedError)
"""Errors after which the keyword channel's second connection is given up for good."""


def rrf_fuse(
    rankings: Mapping[str, Sequence[int]], weights: Mapping[str, float], k: int = 60
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion: sum of ``weight / (k + rank)`` over channels.

    ``rankings`` maps a channel to chunk ids, best first. Ties keep the order in which ids
    were first seen, channel by channel.
    """
    scores: dict[int, float] = {}
    for channel, ids in rankings.items():
        weight = weights.get(channel, 1.0)
        if weight <= 0:
            continue
        for rank, chunk_id in enumerate(ids, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: item[1], reverse=True)


def score_fuse(
    cosine: Mapping[int, float],
    bm25: Mapping[int, float],
    weights: Mapping[str, float],
    closeness: Mapping[int, float] | None = None,
) -> list[tuple[int, float]]:
    """Weighted mean of cosine similarity, bm25 relative to the best bm25 of the query and,
    when given, the :func:`proximity` of the query's words in each candidate.

    Every candidate needs its cosine (``cosine`` covers the union of both channels); a
    candidate the keyword channel did not return counts as bm25 0, one missing from
    ``closeness`` as proximity 0. ``weights`` has keys ``vector``, ``keyword`` and
    ``proximity`` (the last only counts when ``closeness`` is given). Scores lie in
    [-1, 1]; unlike RRF scores they say how well the best hit matches, not only its rank.
    """
    wv, wk = weights.get("vector", 1.0), weights.get("keyword", 1.0)
    wp = weights.get("proximity", 0.0) if closeness is not None else 0.0
    near = closeness or {}
    total = wv + wk + wp or 1.0
    best = max((s for s in bm25.values() if s > 0), default=0.0)
    fused = {
        cid: (
            wv * cos
            + wk * (bm25.get(cid, 0.0) / best if best else 0.0)
            + wp * near.get(cid, 0.0)
        ) / total
        for cid, cos in cosine.items()
    }
    return sorted(fused.items(), key=lambda item: item[1], reverse=True)


def _within(a: Sequence[int], b: Sequence[int], window: int) -> bool:
    """Whether some position in ``a`` and some in ``b`` (both ascending) are at most
    ``window`` apart."""
    i = j = 0
    while i < len(a) and j < len(b):
        if abs(a[i] - b[j]) <= window:
            return True
        if a[i] < b[j]:
            i += 1
        else:
            j += 1
    return False


MAX_QUERY_CHARS = 100_000
"""Longest search query, in characters: the embedder reads the first few hundred tokens
only, but it and the keyword tokenizer would first take all of a longer one apart (a
5 MB query took 7 s and 900 MB)."""


def check_query(query: str) -> None:
    """InputError when ``query`` is too long or is not text (an unpaired surrogate: a byte
    that is not UTF-8, from a terminal or a command line in another encoding)."""
    if len(query) > MAX_QUERY_CHARS:
        raise InputError(f"The query is {len(query):,} characters long, over the limit of "
                         f"{MAX_QUERY_CHARS:,}; search with a shorter one.")
    require_utf8(query, "query")


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` lies under ``prefix``: ``prefix`` itself or a path inside that
    folder (``/docs`` holds ``/docs/a.md``, not ``/docs2/a.md``). A prefix that ends with
    the separator is a folder already; one written as a file name matches that file."""
    if prefix.endswith(os.sep):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + os.sep)


def query_terms(kb: KnowledgeBase, query: str) -> list[str]:
    """The query's content words (:func:`appliance.store.query_words`) as ``kb``'s keyword
    index normalises them: what :func:`proximity` looks for."""
    return kb.terms(" ".join(query_words(query)))


def proximity(query_terms: Sequence[str], text_terms: Sequence[str], window: int) -> float:
    """The share of the query's consecutive term pairs that occur near each other in a text.

    ``query_terms`` are the query's content words in order and ``text_terms`` the text's
    tokens, both as the keyword index normalises them (:meth:`KnowledgeBase.terms`). A pair
    (a, b) of consecutive, different query terms counts when some a and some b lie at most
    ``window`` tokens apart in the text, in either order. 0.0 for a query with no pair: it
    rewards a passage that says what the question asks in one place, as a paraphrase of
    one sentence does, over one that only mentions its words here and there.
    """
    pairs = [(a, b) for a, b in pairwise(query_terms) if a != b]
    if not pairs:
        return 0.0
    wanted = set(query_terms)
    positions: dict[str, list[int]] = {}
    for i, term in enumerate(text_terms):
        if term in wanted:
            positions.setdefault(term, []).append(i)
    near = sum(
        1
        for a, b in pairs
        if a in positions and b in positions and _within(positions[a], positions[b], window)
    )
    return near / len(pairs)


@dataclass
class SearchResult:
    """Hits of one query and where the time went (milliseconds)."""

    query: str
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The result as ``appliance search --json`` prints it."""
        return {"query": self.query, "hits": [h.to_json() for h in self.hits]}


class Retriever:
    """Searches one knowledge base with one embedder (and, when asked, a reranker).

    ``load_reranker`` is called each time a search reranks (it owns caching: ``Appliance.
    reranker`` loads its model once), so a retriever that never reranks loads nothing.

    With ``concurrent_channels`` set, hybrid searches run the keyword channel on a second,
    read-only connection in a thread of its own, opened on first use; :meth:`close` closes
    it with the knowledge base. Searches may come from several threads at once.
    """

    def __init__(
        self,
        kb: KnowledgeBase,
        embedder: Embedder,
        settings: RetrieveSettings,
        load_reranker: Callable[[], Reranker] | None = None,
    ) -> None:
        kb.check_embedder(embedder)
        self.kb = kb
        self.embedder = embedder
        self.settings = settings
        self._load_reranker = load_reranker
        self._side_lock = threading.Lock()
        self._side: KnowledgeBase | None = None
        self._side_pool: ThreadPoolExecutor | None = None
        self._side_failed = False

    def _keyword_side(self) -> tuple[KnowledgeBase, ThreadPoolExecutor] | None:
        """The second, read-only connection and its thread that run the keyword channel
        concurrently (opened on first use), or None when it cannot be opened: the channels
        then run one after the other, with the same results."""
        with self._side_lock:
            if self._side_failed:
                return None
            if self._side is None or self._side_pool is None:
                try:
                    self._side = KnowledgeBase(self.kb.path, readonly=True,
                                               busy_timeout_ms=self.kb.busy_timeout_ms)
                except (ApplianceError, apsw.Error) as exc:
                    log.debug("keyword channel stays on the main connection: %s", exc)
                    self._side_failed = True
                    return None
                self._side_pool = ThreadPoolExecutor(1, thread_name_prefix="keyword-channel")
            return self._side, self._side_pool

    def _close_side(self) -> None:
        """Close the keyword channel's connection and thread; later searches run the
        channels in turn."""
        with self._side_lock:
            if self._side_pool is not None:
                self._side_pool.shutdown(wait=True)
                self._side_pool = None
            if self._side is not None:
                self._side.close()
                self._side = None
            self._side_failed = True

    def close(self) -> None:
        """Close the knowledge base and the keyword channel's connection and thread."""
        self._close_side()
        self.kb.close()

    @property
    def reranker(self) -> Reranker:
        """The reranker (from ``load_reranker``)."""
        if self._load_reranker is None:
            raise InputError("Reranking is on but this retriever has no reranker; "
                             "search through appliance.api.Appliance.")
        return self._load_reranker()

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        mode: str | None = None,
        collection: str | None = None,
        path_prefix: str | None = None,
        rerank: bool | None = None,
    ) -> SearchResult:
        """The best ``k`` chunks for ``query`` in ``mode`` (hybrid, vector or keyword).

        ``collection`` restricts to one collection; ``path_prefix`` to documents
        :func:`under` it (applied after each channel's candidates are taken, so a very
        selective prefix may return fewer than ``k`` hits). ``rerank`` (default: the
        ``rerank`` setting) reorders the best ``rerank_depth`` candidates with the
        reranker before the first ``k`` are returned.
        """
        mode = mode or self.settings.mode
        if mode not in MODES:
            raise InputError(f"Unknown search mode '{mode}'; use one of {', '.join(MODES)}.")
        k = k or self.settings.k
        reranking = self.settings.rerank if rerank is None else rerank
        want = max(k, self.settings.rerank_depth) if reranking else k
        if is_blank(query):
            raise InputError("The query is empty; type a question or some keywords.")
        check_query(query)
        asked, query = query, fold_text(query)  # matched as documents are stored
        depth = max(self.settings.candidates, k)
        if path_prefix:
            depth = min(4096, depth * 8)
        timings: dict[str, float] = {"embed": 0.0, "search": 0.0}
        vector: list[tuple[int, float]] = []
        keyword: list[tuple[int, float]] = []
        qvec: npt.NDArray[np.float32] | None = None
        pending: Future[list[tuple[int, float]]] | None = None

        def keyword_search(kb: KnowledgeBase) -> list[tuple[int, float]]:
            return kb.keyword_search(  # folds the query
                asked, depth, collection, bound_from=self.settings.prefilter_from,
                # under a path prefix a word common elsewhere may be rare: search them all
                max_share=None if path_prefix else self.settings.keyword_max_share)

        side = (self._keyword_side()
                if mode == "hybrid" and self.settings.concurrent_channels else None)
        if side is not None:
            try:
                pending = side[1].submit(keyword_search, side[0])
            except RuntimeError:  # another thread's search closed it a moment ago
                pending = None
        if mode in ("hybrid", "vector"):
            t0 = time.perf_counter()
            qvec = self.embedder.embed([query])[0]
            t1 = time.perf_counter()
            vector = self.kb.vector_search(
                qvec, depth, collection,
                prefilter_from=self.settings.prefilter_from, oversample=self.settings.oversample,
            )
            timings["embed"] = (t1 - t0) * 1000
            timings["search"] += (time.perf_counter() - t1) * 1000
        t2 = time.perf_counter()
        if pending is not None:
            try:
                keyword = pending.result()
            except apsw.Error as exc:  # this query runs again on the main connection
                if isinstance(exc, _SIDE_BROKEN):  # e.g. it cannot read the WAL files
                    log.debug("keyword channel moves to the main connection: %s", exc)
                    self._close_side()
                pending = None
        if pending is None and mode in ("hybrid", "keyword"):
            keyword = keyword_search(self.kb)
        rankings: dict[str, list[int]] = {
            "vector": [i for i, _ in vector],
            "keyword": [i for i, _ in keyword],
        }
        weights = {"vector": self.settings.vector_weight, "keyword": self.settings.keyword_weight}
        rows: dict[int, ChunkRow] | None = None
        if mode == "vector":
            fused = [(i, s) for i, s in vector]
        elif mode == "keyword":
            fused = [(i, s) for i, s in keyword]
        elif self.settings.fusion == "rrf":
            fused = rrf_fuse(rankings, weights, self.settings.rrf_k)
        else:
            cosine = dict(vector)
            missing = [cid for cid, _ in keyword if cid not in cosine]
            if qvec is not None:
                cosine.update(self.kb.similarities(qvec, missing))
            vector = list(cosine.items())
            closeness: dict[int, float] | None = None
            if self.settings.proximity_weight > 0:
                rows = self.kb.chunks(list(cosine))
                closeness = self._closeness(query, rows, path_prefix)
                weights["proximity"] = self.settings.proximity_weight
            fused = score_fuse(cosine, dict(keyword), weights, closeness)
        vec_score = dict(vector)
        kw_score = dict(keyword)
        vec_rank = {cid: r for r, cid in enumerate(rankings["vector"], start=1)}
        kw_rank = {cid: r for r, cid in enumerate(rankings["keyword"], start=1)}
        if rows is None:
            rows = self.kb.chunks([cid for cid, _ in fused[: depth if path_prefix else want]])
        hits: list[Hit] = []
        for cid, score in fused:
            row = rows.get(cid)
            if row is None or (path_prefix and not under(row.path, path_prefix)):
                continue
            hits.append(
                Hit(
                    chunk_id=cid,
                    path=row.path,
                    title=row.title,
                    heading=row.heading,
                    text=row.text,
                    score=score,
                    page=row.page,
                    collection=row.collection,
                    scores={"vector": vec_score.get(cid), "keyword": kw_score.get(cid)},
                    ranks={"vector": vec_rank.get(cid), "keyword": kw_rank.get(cid)},
                )
            )
            if len(hits) >= want:
                break
        timings["search"] += (time.perf_counter() - t2) * 1000
        if reranking and len(hits) > 1:
            t3 = time.perf_counter()
            top = hits[: self.settings.rerank_depth]
            scores = self.reranker.score(query, [h.text for h in top])
            hits = rerank_hits(top, scores, self.settings.rerank_weight) + hits[len(top):]
            timings["rerank"] = (time.perf_counter() - t3) * 1000
        return SearchResult(query=asked, hits=hits[:k], timings_ms=timings)

    def _closeness(
        self, query: str, rows: Mapping[int, ChunkRow], path_prefix: str | None
    ) -> dict[int, float]:
        """:func:`proximity` of the query's content words in each candidate chunk (those
        outside ``path_prefix`` are skipped: they are dropped anyway)."""
        terms = query_terms(self.kb, query)
        window = self.settings.proximity_window
        return {
            cid: proximity(terms, self.kb.terms(row.text), window)
            for cid, row in rows.items()
            if not path_prefix or under(row.path, path_prefix)
        }
