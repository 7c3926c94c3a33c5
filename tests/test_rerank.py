"""Reranking: the fusion of reranker scores, the retriever's use of it, and the real
question-likelihood reranker on llama.cpp."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from appliance.api import Appliance
from appliance.config import RetrieveSettings, load_settings
from appliance.errors import InputError
from appliance.retrieve import QuestionLikelihoodReranker, Reranker, Retriever, rerank_hits
from appliance.types import Hit
from tests.conftest import _require_models, run_cli
from tests.fakes import HashEmbedder, make_kb


class KeywordReranker(Reranker):
    """Scores 1 for texts containing ``word``, 0 otherwise; counts its calls."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.calls: list[int] = []
        self.closed = False

    @property
    def id(self) -> str:
        return "keyword-fake"

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        self.calls.append(len(texts))
        return [1.0 if self.word in t else 0.0 for t in texts]

    def close(self) -> None:
        self.closed = True


def _hit(cid: int, score: float, text: str = "") -> Hit:
    return Hit(chunk_id=cid, path=f"/d/{cid}", title="", heading="", text=text, score=score,
               scores={"vector": 0.5, "keyword": 2.0})


def test_rerank_hits_adds_weighted_scores_and_keeps_channel_evidence() -> None:
    hits = [_hit(1, 0.9), _hit(2, 0.8), _hit(3, 0.7)]
    out = rerank_hits(hits, [-3.0, -1.0, -2.0], weight=0.2)
    assert [h.chunk_id for h in out] == [2, 1, 3]  # 0.6 > 0.5 > 0.3
    assert out[0].score == pytest.approx(0.8 - 0.2)
    assert out[0].scores == {"vector": 0.5, "keyword": 2.0, "rerank": -1.0}
    assert out[0].to_json()["scores"]["rerank"] == -1.0
    assert hits[1].score == 0.8 and "rerank" not in hits[1].scores  # inputs untouched
    assert [h.chunk_id for h in rerank_hits(hits, [-3.0, -1.0, -2.0], weight=0.0)] == [1, 2, 3]
    with pytest.raises(ValueError):
        rerank_hits(hits, [0.0], weight=1.0)


@pytest.fixture
def kb(tmp_path: Path):
    emb = HashEmbedder()
    docs = {f"/docs/{i}.txt": f"the statement number {i} repeats the statement words"
            for i in range(6)}
    docs["/docs/target.txt"] = "a statement about zebras"
    store = make_kb(tmp_path / "r.sqlite", docs, emb, dict.fromkeys(docs, "docs"))
    yield store, emb
    store.close()


def test_retriever_reranks_its_top_candidates_only_when_asked(kb) -> None:
    store, emb = kb
    fake = KeywordReranker("zebras")
    loads: list[int] = []

    def load() -> Reranker:
        loads.append(1)
        return fake

    settings = RetrieveSettings(rerank_depth=7, rerank_weight=10.0)
    retriever = Retriever(store, emb, settings, load_reranker=load)
    plain = retriever.search("statement words", k=2)
    assert not loads and "rerank" not in plain.timings_ms  # off by default: never loaded
    assert all(h.path != "/docs/target.txt" for h in plain.hits)
    ranked = retriever.search("statement words", k=2, rerank=True)
    assert loads == [1] and fake.calls == [7]  # scored rerank_depth candidates, not k
    assert ranked.hits[0].path == "/docs/target.txt" and len(ranked.hits) == 2
    assert ranked.hits[0].scores["rerank"] == 1.0 and ranked.timings_ms["rerank"] >= 0
    on = Retriever(store, emb, RetrieveSettings(rerank=True, rerank_depth=7,
                                                rerank_weight=10.0), load_reranker=load)
    assert on.search("statement words", k=1).hits[0].path == "/docs/target.txt"
    assert on.search("statement words", k=1, rerank=False).hits[0].path != "/docs/target.txt"


def test_rerank_without_a_reranker_is_a_clear_error(kb) -> None:
    store, emb = kb
    retriever = Retriever(store, emb, RetrieveSettings(rerank=True))
    with pytest.raises(InputError, match="no reranker"):
        retriever.search("statement words")


class PickyScorer:
    """Scores by text length; cannot score texts containing 'huge' (as a too-long one)."""

    id = "picky"

    def continuation_logprob(self, messages: list[dict[str, str]], continuation: str
                             ) -> float:
        text = messages[0]["content"]
        if "huge" in text:
            raise InputError("does not fit")
        assert continuation == continuation.strip() and len(continuation) <= 1000
        return -float(len(text))

    def close(self) -> None:
        pass


def test_question_likelihood_reranker_survives_a_passage_it_cannot_score() -> None:
    reranker = QuestionLikelihoodReranker(PickyScorer())
    scores = reranker.score("  q" * 600, ["short", "a huge one", "longer text"])
    assert scores[1] == min(scores[0], scores[2]) == scores[2]
    assert reranker.score("q", ["huge"]) == [0.0]
    with pytest.raises(InputError):
        reranker.score("   ", ["short"])


# -- the real reranker -----------------------------------------------------------------------


PASSAGES = [
    "The Huguenots were French Protestants who followed the teachings of John Calvin.",
    "The Seine flows through Paris, the capital of France, before reaching the sea at Le Havre.",
    "Packet switching groups data into packets that are transmitted over a shared network.",
]


def test_question_likelihood_reranker_prefers_the_passage_that_answers() -> None:
    _require_models()
    app = Appliance(load_settings())
    try:
        reranker = app.reranker()
        assert isinstance(reranker, QuestionLikelihoodReranker)
        assert reranker.id == app.settings.retrieve.rerank_model
        scores = reranker.score("What is the capital of France?", PASSAGES)
        assert len(scores) == 3 and all(s < 0 for s in scores)
        assert max(range(3), key=scores.__getitem__) == 1
        again = reranker.score("What is the capital of France?", PASSAGES[1:2])
        assert again[0] == pytest.approx(scores[1], abs=1e-4)  # the prefix cache changes nothing
        other = reranker.score("Who did the Huguenots follow?", PASSAGES)
        assert max(range(3), key=other.__getitem__) == 0
        with pytest.raises(InputError):
            reranker.score("   ", PASSAGES[:1])
    finally:
        app.close()
    assert app._reranker is None  # close() freed it


def test_cli_search_rerank_on_the_demo_kb_offline(demo_kb, shared_home: Path) -> None:
    import json

    proc = run_cli("search", "how does the with statement call __exit__", "--kb", "demo",
                   "--rerank", "--k", "3", "--json", home=shared_home, check=True,
                   prefix=("unshare", "-rn"))  # and with no network
    result = json.loads(proc.stdout)
    assert len(result["hits"]) == 3
    assert all("rerank" in h["scores"] for h in result["hits"])
    top = result["hits"][0]
    assert "with" in (top["path"] + top["heading"]).lower(), top  # still the with topic
    assert [h["score"] for h in result["hits"]] == sorted(
        (h["score"] for h in result["hits"]), reverse=True)


def test_continuation_logprobs_give_each_token_and_agree_with_the_mean() -> None:
    _require_models()
    app = Appliance(load_settings())
    try:
        gen = app.reranker().model  # SmolLM2, loaded once for the reranker
        messages = [{"role": "user", "content": "Which city is the capital of France?"}]
        likely = gen.continuation_logprobs(messages, "The capital of France is Paris.")
        assert "".join(piece for piece, _ in likely) == "The capital of France is Paris."
        assert all(lp <= 0 for _, lp in likely) and len(likely) >= 6
        mean = sum(lp for _, lp in likely) / len(likely)
        # the same tokens, decoded in other batch splits (the KV cache now holds the prompt)
        assert gen.continuation_logprob(messages, "The capital of France is Paris.") \
            == pytest.approx(mean, abs=0.02)
        unlikely = gen.continuation_logprobs(messages, "The capital of France is Tokyo.")
        assert unlikely[-2][1] < likely[-2][1] - 2  # "Tokyo" is the surprise, not "Paris"
        assert [p for p, _ in unlikely[:-2]] == [p for p, _ in likely[:-2]]
    finally:
        app.close()
