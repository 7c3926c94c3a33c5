"""Unit tests of fusion and the retriever with a fake embedder."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import apsw
import pytest

import appliance.retrieve.hybrid as hybrid_module
from appliance.config import RetrieveSettings
from appliance.errors import InputError, KnowledgeBaseError
from appliance.retrieve import Retriever, proximity, rrf_fuse, score_fuse
from appliance.store import KnowledgeBase
from tests.fakes import HashEmbedder, make_kb


def test_rrf_weights_and_order() -> None:
    fused = rrf_fuse({"vector": [1, 2, 3], "keyword": [3, 2]}, {"vector": 1, "keyword": 1}, k=60)
    ids = [i for i, _ in fused]
    assert ids == [3, 2, 1]  # 1/63 + 1/61 edges out 1/62 + 1/62
    assert fused[0][1] == pytest.approx(1 / 63 + 1 / 61)
    only_kw = rrf_fuse({"vector": [1], "keyword": [2]}, {"vector": 0, "keyword": 1})
    assert [i for i, _ in only_kw] == [2]
    heavier = rrf_fuse({"vector": [1], "keyword": [2]}, {"vector": 1, "keyword": 2})
    assert heavier[0][0] == 2


@pytest.fixture
def retriever(tmp_path: Path):
    emb = HashEmbedder()
    docs = {
        "/docs/with.rst": "the with statement calls __enter__ and then __exit__ on the manager",
        "/docs/for.rst": "the for statement iterates over the items of a sequence",
        "/other/while.rst": "the while statement repeats while a condition is true",
    }
    kb = make_kb(tmp_path / "r.sqlite", docs, emb,
                 {p: "other" if "other" in p else "docs" for p in docs})
    retriever = Retriever(kb, emb, RetrieveSettings())
    yield retriever
    retriever.close()


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
def test_each_mode_finds_the_topic(retriever: Retriever, mode: str) -> None:
    result = retriever.search("when is __exit__ called by the with statement", mode=mode, k=2)
    assert result.hits[0].path == "/docs/with.rst"
    assert result.timings_ms["search"] >= 0


def test_hybrid_reports_both_channels(retriever: Retriever) -> None:
    hit = retriever.search("with statement __exit__", k=1).hits[0]
    assert hit.scores["vector"] is not None and hit.scores["keyword"] is not None
    data = hit.to_json()
    assert set(data) == {"chunk_id", "path", "heading", "text", "score", "scores"}


def test_filters(retriever: Retriever) -> None:
    hits = retriever.search("statement", k=5, collection="other").hits
    assert [h.path for h in hits] == ["/other/while.rst"]
    hits = retriever.search("statement", k=5, path_prefix="/docs/").hits
    assert {h.path for h in hits} == {"/docs/with.rst", "/docs/for.rst"}


def test_bad_queries(retriever: Retriever) -> None:
    with pytest.raises(InputError):
        retriever.search("   ")
    with pytest.raises(InputError):
        retriever.search("x", mode="fuzzy")
    assert retriever.search('"((( -*: NEAR', mode="keyword").hits == []


def test_score_fusion_uses_both_channels() -> None:
    fused = score_fuse({1: 0.9, 2: 0.5, 3: 0.1}, {2: 10.0, 3: 5.0}, {"vector": 1, "keyword": 1})
    assert [cid for cid, _ in fused] == [2, 1, 3]
    assert fused[0][1] == pytest.approx((0.5 + 1.0) / 2)
    vector_only = score_fuse({1: 0.9, 2: 0.5}, {2: 10.0}, {"vector": 1, "keyword": 0})
    assert [cid for cid, _ in vector_only] == [1, 2]


def test_rrf_fusion_setting(retriever: Retriever) -> None:
    retriever.settings = RetrieveSettings(fusion="rrf")
    hits = retriever.search("with statement __exit__", k=1).hits
    assert hits[0].path == "/docs/with.rst" and hits[0].score < 0.05


def test_proximity_counts_consecutive_query_pairs_near_each_other() -> None:
    text = "the oil crisis began when prices of oil rose sharply in the west".split()
    assert proximity(["oil", "crisis"], text, 1) == 1.0
    assert proximity(["crisis", "oil"], text, 1) == 1.0  # either order
    # (oil, prices): 2 apart at best; (prices, west): 7 apart
    assert proximity(["oil", "prices", "west"], text, 2) == 0.5
    assert proximity(["oil", "prices", "west"], text, 1) == 0.0
    assert proximity(["oil", "prices", "west"], text, 6) == 0.5
    assert proximity(["oil", "prices", "west"], text, 7) == 1.0
    assert proximity(["oil", "missing"], text, 10) == 0.0
    assert proximity(["oil"], text, 3) == 0.0  # no pair
    assert proximity(["oil", "oil", "crisis"], text, 1) == 1.0  # repeats make no pair
    assert proximity([], [], 3) == 0.0


def test_score_fusion_adds_proximity() -> None:
    cosine, bm25 = {1: 0.5, 2: 0.5}, {1: 4.0, 2: 4.0}
    weights = {"vector": 1.0, "keyword": 1.0, "proximity": 2.0}
    fused = score_fuse(cosine, bm25, weights, {2: 0.5})
    assert [cid for cid, _ in fused] == [2, 1]
    assert fused[0][1] == pytest.approx((0.5 + 1.0 + 2.0 * 0.5) / 4)
    assert fused[1][1] == pytest.approx((0.5 + 1.0) / 4)
    # without proximity scores the weight does not count
    assert score_fuse(cosine, bm25, weights)[0][1] == pytest.approx((0.5 + 1.0) / 2)


def test_proximity_setting_prefers_words_said_together(tmp_path: Path) -> None:
    emb = HashEmbedder()
    docs = {  # the same words, so the same cosine and nearly the same bm25
        "/apart.txt": "prices rose in the winter while the embargo hit oil supplies",
        "/together.txt": "oil prices rose in the winter while the embargo hit supplies",
    }
    kb = make_kb(tmp_path / "p.sqlite", docs, emb)
    with contextlib.closing(Retriever(kb, emb, RetrieveSettings(proximity_weight=1.0))) \
            as retriever:
        hits = retriever.search("Why did oil prices rise?", k=2).hits
        assert [h.path for h in hits] == ["/together.txt", "/apart.txt"]
        assert hits[0].score > hits[1].score
        assert set(hits[0].to_json()["scores"]) == {"vector", "keyword"}  # format unchanged
        only_prefix = retriever.search("Why did oil prices rise?", k=2, path_prefix="/apart.txt")
        assert [h.path for h in only_prefix.hits] == ["/apart.txt"]
        retriever.settings = RetrieveSettings(proximity_weight=0.0)
        off = retriever.search("Why did oil prices rise?", k=2).hits
        assert off[0].score == pytest.approx(off[1].score, abs=0.05)


def _keyword_threads() -> int:
    return sum(t.name.startswith("keyword-channel") for t in threading.enumerate())


def test_concurrent_channels_give_the_same_hits_and_close(tmp_path: Path) -> None:
    emb = HashEmbedder()
    kb = make_kb(tmp_path / "c.sqlite", {
        f"/d{i}.txt": f"document {i} about statement number {i % 4} and the loop of {i % 3}"
        for i in range(12)}, emb)
    before = _keyword_threads()
    together = Retriever(kb, emb, RetrieveSettings(concurrent_channels=True))
    in_turn = Retriever(kb, emb, RetrieveSettings(concurrent_channels=False))
    for query in ("statement number 2", "loop of 1", "document 7's loop", "zebra"):
        a, b = together.search(query, k=5), in_turn.search(query, k=5)
        assert [(h.chunk_id, h.score, h.scores) for h in a.hits] == \
            [(h.chunk_id, h.score, h.scores) for h in b.hits]
    assert _keyword_threads() == before + 1  # only the concurrent retriever has one
    together.close()
    assert _keyword_threads() == before
    with pytest.raises(apsw.ConnectionClosedError):
        in_turn.search("statement", k=1)  # the knowledge base itself is closed too
    in_turn.close()  # closing twice is harmless


def test_keyword_channel_falls_back_to_one_connection(
    retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> KnowledgeBase:
        raise KnowledgeBaseError("no second connection here")

    monkeypatch.setattr(hybrid_module, "KnowledgeBase", refuse)
    before = _keyword_threads()
    hits = retriever.search("with statement __exit__", k=1).hits
    assert hits[0].path == "/docs/with.rst" and hits[0].scores["keyword"] is not None
    assert _keyword_threads() == before


def test_keyword_channel_moves_back_when_the_second_connection_fails(
    retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert retriever.search("with statement", k=1).hits  # opens the second connection
    side = retriever._keyword_side()
    assert side is not None

    def broken(*args: object, **kwargs: object) -> list[tuple[int, float]]:
        raise apsw.IOError("disk I/O error")

    monkeypatch.setattr(side[0], "keyword_search", broken)
    before = _keyword_threads()
    hits = retriever.search("with statement __exit__", k=1).hits
    assert hits[0].path == "/docs/with.rst" and hits[0].scores["keyword"] is not None
    assert retriever._keyword_side() is None and _keyword_threads() == before - 1


def test_searches_from_several_threads_share_the_keyword_channel(retriever: Retriever) -> None:
    queries = ["with statement __exit__", "for loop items", "while condition", "statement"]
    expected = {q: [h.chunk_id for h in retriever.search(q, k=3).hits] for q in queries}
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                for q in queries:
                    assert [h.chunk_id for h in retriever.search(q, k=3).hits] == expected[q]
        except BaseException as exc:  # reported below: a thread's assertion is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_common_words_are_left_out_above_prefilter_from(retriever: Retriever) -> None:
    query = "which statement calls __exit__"  # "statement" is in every document
    assert len(retriever.search(query, mode="keyword", k=5).hits) == 3
    retriever.settings = RetrieveSettings(prefilter_from=2, keyword_max_share=0.5)
    hits = retriever.search(query, mode="keyword", k=5).hits
    assert [h.path for h in hits] == ["/docs/with.rst"]
    retriever.settings = RetrieveSettings(prefilter_from=3, keyword_max_share=0.5)
    assert len(retriever.search(query, mode="keyword", k=5).hits) == 3  # 3 chunks: not above


def test_a_passing_error_of_the_second_connection_keeps_it(
    retriever: Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert retriever.search("with statement", k=1).hits
    side = retriever._keyword_side()
    assert side is not None
    calls: list[str] = []

    def busy_once(*args: object, **kwargs: object) -> list[tuple[int, float]]:
        calls.append("busy")
        raise apsw.BusyError("database is locked")

    monkeypatch.setattr(side[0], "keyword_search", busy_once)
    hits = retriever.search("with statement __exit__", k=1).hits
    assert calls == ["busy"] and hits[0].path == "/docs/with.rst"
    assert hits[0].scores["keyword"] is not None  # answered on the main connection
    assert retriever._keyword_side() == side  # and the second one stays for the next query


def test_common_words_are_kept_under_a_path_prefix(retriever: Retriever) -> None:
    retriever.settings = RetrieveSettings(prefilter_from=2, keyword_max_share=0.5)
    # "statement" is in every document, "__exit__" only outside /other/: bounded, the query
    # would be "__exit__" alone and find nothing there
    hits = retriever.search("statement __exit__", mode="keyword", k=5,
                            path_prefix="/other/").hits
    assert [h.path for h in hits] == ["/other/while.rst"]
