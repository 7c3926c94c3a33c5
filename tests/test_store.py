"""Unit tests of the SQLite store with a deterministic fake embedder."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import apsw
import numpy as np
import pytest

from appliance.errors import EmbedderMismatchError, KnowledgeBaseNotFoundError, StoreBusyError
from appliance.store import KnowledgeBase, fts_query, query_words
from appliance.store.schema import SCHEMA_VERSION
from appliance.types import Chunk
from tests.fakes import HashEmbedder, make_kb


def _chunks(texts: list[str]) -> list[Chunk]:
    return [
        Chunk(i, t, ("Doc", f"S{i}"), None, 0, len(t), len(t.split()))
        for i, t in enumerate(texts)
    ]


def _add(kb: KnowledgeBase, emb: HashEmbedder, path: str, texts: list[str], sha: str = "x",
         collection: str = "default") -> int:
    return kb.replace_document(
        path=path, sha256=sha, size=1, mtime=1.0, title="Doc", kind="text",
        collection=collection, chunks=_chunks(texts), vectors=emb.embed(texts),
    )


@pytest.fixture
def kb(tmp_path: Path):
    store = make_kb(tmp_path / "t.sqlite", {})
    yield store
    store.close()


def test_schema_version_and_wal(kb: KnowledgeBase) -> None:
    assert kb.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert kb.conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"


def test_missing_kb_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseNotFoundError, match="appliance ingest"):
        KnowledgeBase(tmp_path / "nope.sqlite")


def test_replace_is_atomic_and_keeps_indexes_in_step(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    _add(kb, emb, "/a.txt", ["alpha beta", "gamma delta"])
    _add(kb, emb, "/b.txt", ["epsilon zeta"])
    assert kb.count("chunks") == 3 and kb.count("chunks_vec") == 3
    _add(kb, emb, "/a.txt", ["alpha only"], sha="y")
    assert kb.count("chunks") == 2 and kb.count("chunks_vec") == 2
    assert kb.document("/a.txt").sha256 == "y"  # type: ignore[union-attr]
    assert kb.check() == []
    assert [cid for cid, _ in kb.keyword_search("gamma", 5)] == []
    assert kb.remove_document("/a.txt") and not kb.remove_document("/a.txt")
    assert kb.count("chunks") == 1 and kb.check() == []


def test_failed_write_rolls_back(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    with pytest.raises(ValueError):
        kb.replace_document(path="/c.txt", sha256="s", size=1, mtime=1, title="t", kind="text",
                            collection="default", chunks=_chunks(["a", "b"]),
                            vectors=emb.embed(["a"]))
    bad_vectors = np.zeros((2, 3), dtype=np.float32)  # wrong dimension: sqlite-vec refuses
    with pytest.raises(apsw.Error):
        kb.replace_document(path="/c.txt", sha256="s", size=1, mtime=1, title="t", kind="text",
                            collection="default", chunks=_chunks(["a", "b"]), vectors=bad_vectors)
    assert kb.document("/c.txt") is None and kb.count("chunks") == 0 and kb.check() == []


def test_check_finds_missing_vectors(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    _add(kb, emb, "/a.txt", ["alpha beta", "gamma"])
    kb.conn.execute("DELETE FROM chunks_vec WHERE rowid = (SELECT min(id) FROM chunks)")
    problems = kb.check()
    assert any("vectors" in p for p in problems)


def test_embedder_mismatch_is_refused(kb: KnowledgeBase) -> None:
    with pytest.raises(EmbedderMismatchError, match="kb reembed"):
        kb.check_embedder(HashEmbedder(dim=32, model_id="other"))


def test_reembed_switches_embedder(kb: KnowledgeBase) -> None:
    _add(kb, HashEmbedder(), "/a.txt", ["alpha beta", "gamma"])
    other = HashEmbedder(dim=32, model_id="other")
    assert kb.reembed(other, lambda r: r.text) == 2
    kb.check_embedder(other)
    assert kb.check() == []
    hits = kb.vector_search(other.embed(["gamma"])[0], 1)
    assert hits and hits[0][1] > 0.99


def test_vector_search_uses_knn_and_collection_filter(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    _add(kb, emb, "/a.txt", ["red apples and pears"], collection="fruit")
    _add(kb, emb, "/b.txt", ["red cars and trucks"], collection="cars")
    q = emb.embed(["red apples"])[0]
    top = kb.vector_search(q, 2)
    assert len(top) == 2 and top[0][1] >= top[1][1]
    only = kb.vector_search(q, 5, collection="cars")
    assert len(only) == 1 and kb.chunks([only[0][0]])[only[0][0]].path == "/b.txt"


HOSTILE_QUERIES = [
    '"', '""', "'", "a AND", "OR", "NOT x", "NEAR(a b)", "-x", "*", "col:val", "text:foo",
    "(((", ")", "a* b*", "^x", "{a b}", "[x]", "a + b", "\\", "\x00", "  ", "über—straße",
    "__exit__", "x" * 5000, "emoji 🙂 ok", '"unbalanced', "a:b:c", "heading: x",
]


@pytest.mark.parametrize("query", HOSTILE_QUERIES)
def test_keyword_search_never_raises(kb: KnowledgeBase, query: str) -> None:
    _add(kb, HashEmbedder(), "/a.txt", ["the with statement calls __exit__ on the manager"])
    kb.keyword_search(query, 5)


def test_fts_query_quotes_every_word() -> None:
    assert fts_query('how does "with" call __exit__?') == '"call" OR "__exit__"'
    assert fts_query("the and of") == '"the" OR "and" OR "of"'
    assert fts_query("*** ---") is None


def test_fts_query_drops_possessive_and_contraction_endings() -> None:
    # "s" and "t" as terms match a third of English chunks: slow to score, worth nothing
    assert fts_query("When was Lenin's birth?") == '"lenin" OR "birth"'
    assert fts_query("Why don’t the Normans' ships sail?") == \
        '"don" OR "normans" OR "ships" OR "sail"'
    assert fts_query("vitamin D and plan B") == '"vitamin" OR "d" OR "plan" OR "b"'
    assert fts_query("'s") == '"s"'  # not an ending: nothing before the apostrophe


def test_keyword_search_leaves_out_common_words_on_large_bases(kb: KnowledgeBase) -> None:
    texts = [f"the common harbour wall, part {i}" for i in range(30)]
    texts[7] += " with a lighthouse"
    _add(kb, HashEmbedder(), "/a.txt", texts)
    every = kb.keyword_search("common lighthouse", 50)
    assert len(every) == 30 and "lighthouse" in kb.chunks([every[0][0]])[every[0][0]].text
    bounded = kb.keyword_search("common lighthouse", 50, max_share=0.1, bound_from=0)
    assert len(bounded) == 1 and bounded[0][0] == every[0][0]  # "common" is in every chunk
    # at or below bound_from chunks every word is searched
    assert kb.keyword_search("common lighthouse", 50, max_share=0.1, bound_from=30) == every
    # when every word is that common, all are kept rather than none
    assert len(kb.keyword_search("common harbour", 50, max_share=0.1, bound_from=0)) == 30
    # a word found nowhere (a typo) is not a rarer word that the query could stand on
    assert len(kb.keyword_search("common harbourz", 50, max_share=0.1, bound_from=0)) == 30
    assert kb.keyword_search("common harbourz lighthouse", 50, max_share=0.1,
                             bound_from=0) == bounded
    # within a collection a word common elsewhere may be rare: every word is searched
    _add(kb, HashEmbedder(), "/b.txt", ["a common wall"], collection="other")
    assert len(kb.keyword_search("common lighthouse", 50, "other", max_share=0.1,
                                 bound_from=0)) == 1
    assert kb.chunk_count() == 31
    for query in HOSTILE_QUERIES:
        kb.keyword_search(query, 5, max_share=0.1, bound_from=0)  # never raises


def test_query_words_keep_order_and_repeats() -> None:
    assert query_words("Which cars were the cars of the crisis?") == ["cars", "cars", "crisis"]
    assert query_words("the and of") == ["the", "and", "of"]
    assert query_words("*** ---") == []


def test_terms_match_the_keyword_index(kb: KnowledgeBase) -> None:
    assert kb.terms("Running DOGS, naïvely") == ["run", "dog", "naiv"]
    assert kb.terms("") == []
    _add(kb, HashEmbedder(), "/a.txt", ["The dogs were running."])
    # every term of a stored text finds that text through the index
    for term in kb.terms("The dogs were running."):
        assert kb.keyword_search(term, 5), term


def test_keyword_search_finds_dunder_names(kb: KnowledgeBase) -> None:
    _add(kb, HashEmbedder(), "/a.txt", ["the manager's __exit__ method is invoked", "unrelated"])
    hits = kb.keyword_search("when is __exit__ called", 5)
    assert len(hits) == 1


def test_second_writer_waits_then_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "busy.sqlite"
    first = make_kb(path, {})
    second = KnowledgeBase(path, busy_timeout_ms=200)
    released = threading.Event()

    def hold() -> None:
        with first.write():
            released.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.1)
    try:
        with pytest.raises(StoreBusyError, match="busy"):
            second.remove_document("/x")
        # readers are not blocked by the writer (WAL)
        assert second.count("documents") == 0
    finally:
        released.set()
        t.join()
    assert second.remove_document("/x") is False
    first.close()
    second.close()


def test_binary_prefilter_rescores_exactly(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    texts = [f"document number {i} about topic {i % 7} and item {i * 3}" for i in range(60)]
    _add(kb, emb, "/many.txt", texts)
    q = emb.embed(["topic 3 and item 9"])[0]
    exact = kb.vector_search(q, 5)
    approx = kb.vector_search(q, 5, prefilter_from=0, oversample=12)
    assert approx[0] == pytest.approx(exact[0])
    assert [s for _, s in approx] == sorted((s for _, s in approx), reverse=True)
    assert kb.count("chunks_bin") == 60 and kb.check() == []


_ADDED_BY = {  # what each migration after the first created, newest first
    3: ("DROP TRIGGER chunks_cjk_delete", "DROP TABLE chunks_cjk"),
    2: ("DROP TABLE chunks_bin",),
}


def _old_file(path: Path, version: int, texts: list[str]) -> Path:
    """A knowledge base holding ``texts``, taken back to what schema ``version`` wrote."""
    kb = KnowledgeBase(path, create=True)
    emb = HashEmbedder()
    kb.bind_embedder(emb)
    _add(kb, emb, "/a.txt", texts)
    for number in range(SCHEMA_VERSION, version, -1):
        for sql in _ADDED_BY[number]:
            kb.conn.execute(sql)
    kb.conn.execute(f"PRAGMA user_version = {version}")
    kb.close()
    return path


def test_migration_adds_binary_codes_to_a_version_1_file(tmp_path: Path) -> None:
    reopened = KnowledgeBase(_old_file(tmp_path / "old.sqlite", 1, ["alpha beta", "gamma"]))
    assert reopened.meta()["schema_version"] == str(SCHEMA_VERSION)
    assert reopened.count("chunks_bin") == 2 and reopened.check() == []
    reopened.close()


def test_fts_table_uses_the_tokenizer_that_terms_match_with(tmp_path: Path) -> None:
    from appliance.store.schema import FTS_TOKENIZE

    kb = KnowledgeBase(tmp_path / "t.sqlite", create=True)
    try:
        sql = kb.conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'chunks_fts'").fetchone()[0]
        assert f"tokenize='{FTS_TOKENIZE}'" in sql
        assert kb.terms("Running Cafés") == ["run", "cafe"]
    finally:
        kb.close()


# -- Chinese, Japanese, Korean --------------------------------------------------------------


def test_cjk_terms_are_characters_and_pairs() -> None:
    from appliance.store.segment import has_cjk, index_text, query_terms

    assert has_cjk("澳大利亚的首都") and has_cjk("カタカナ") and has_cjk("서울은")
    assert not has_cjk("Café naïve — 123")
    assert index_text("Capital: 首都。") == "Capital:  首 都 首都 。"
    assert index_text("水") == " 水 "
    assert query_terms("首都是哪里? 首都") == ["首都", "都是", "是哪", "哪里"]
    assert query_terms("水 and 火") == ["水", "火"] and query_terms("English only") == []


def test_keyword_search_finds_words_inside_cjk_text(kb: KnowledgeBase) -> None:
    emb = HashEmbedder()
    _add(kb, emb, "/zh.txt", ["堪培拉是澳大利亚的首都，位于首都领地。", "悉尼是最大的城市。"])
    _add(kb, emb, "/ja.txt", ["東京は日本の首都です。"])
    _add(kb, emb, "/en.txt", ["Canberra is the capital of Australia."])
    hits = [cid for cid, _ in kb.keyword_search("澳大利亚的首都是哪里？", 5)]
    assert hits[0] == 1 and 3 in hits and 2 not in hits  # 首都 is in both capitals
    assert [cid for cid, _ in kb.keyword_search("東京", 5)] == [3]
    assert [cid for cid, _ in kb.keyword_search("capital Australia", 5)] == [4]
    assert {1, 3, 4} <= {cid for cid, _ in kb.keyword_search("首都 Canberra", 5)}
    assert kb.keyword_search("首都", 5, collection="other") == []
    assert kb.check() == []
    kb.remove_document("/zh.txt")  # the delete trigger keeps the pairs index in step
    assert kb.count("chunks_cjk") == 1 and kb.check() == []
    assert [cid for cid, _ in kb.keyword_search("首都", 5)] == [3]


def test_check_finds_stale_cjk_terms(kb: KnowledgeBase) -> None:
    _add(kb, HashEmbedder(), "/zh.txt", ["北京是中国的首都。"])
    kb.conn.execute("UPDATE chunks_cjk SET terms = 'x' WHERE rowid = 1")
    assert kb.check() == ["1 chunks whose CJK keyword terms are missing or stale"]


def test_migration_indexes_the_cjk_text_of_a_version_2_file(tmp_path: Path) -> None:
    reopened = KnowledgeBase(_old_file(tmp_path / "old.sqlite", 2,
                                       ["北京是中国的首都。", "plain English"]))
    try:
        assert reopened.meta()["schema_version"] == str(SCHEMA_VERSION)
        assert reopened.count("chunks_cjk") == 1 and reopened.check() == []
        assert [cid for cid, _ in reopened.keyword_search("首都", 5)] == [1]
    finally:
        reopened.close()
