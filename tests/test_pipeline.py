"""The answer pipeline: record fields, abstention, citations, modes; one real-model test."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from appliance.config import AnswerSettings, Settings, load_settings
from appliance.errors import InputError, ModelNotFoundError
from appliance.generate import (
    ABSTAIN_SENTENCE,
    ANSWER_REMINDER,
    RAG_SYSTEM_PROMPT,
    generator_id,
)
from appliance.pipeline import Pipeline, answer, retrieval_abstains
from appliance.retrieve import SearchResult
from appliance.types import Generator, Hit
from tests.fakes import FakeGenerator

ANSWER_KEYS = {"id", "question", "answer", "abstained", "citations", "closest", "mode", "model",
               "timings_ms", "tokens", "tokens_per_s", "flags"}
TIMING_KEYS = {"embed", "search", "prompt", "generate", "total"}
CONFIG = AnswerSettings(k=5, abstain_min_vector=0.3, abstain_min_keyword=8.0, closest=2)


class FakeSearcher:
    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits
        self.queries: list[str] = []
        self.reranks: list[bool | None] = []

    def search(self, query: str, *, k: int | None = None, rerank: bool | None = None
               ) -> SearchResult:
        self.queries.append(query)
        self.reranks.append(rerank)
        timings = {"embed": 1.5, "search": 0.5} | ({"rerank": 2.0} if rerank else {})
        return SearchResult(query, self.hits[: k or 5], timings)


def hit(i: int, vector: float | None = 0.6, keyword: float | None = 5.0, text: str = "") -> Hit:
    return Hit(chunk_id=i, path=f"/docs/{i}.md", title="", heading=f"Part {i}",
               text=text or f"Fact number {i}.", score=1 / (60 + i),
               scores={"vector": vector, "keyword": keyword})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(home=tmp_path)


def test_fake_generator_implements_the_protocol() -> None:
    assert isinstance(FakeGenerator(), Generator)


def test_rag_answer_record(settings: Settings) -> None:
    gen = FakeGenerator("The sky is blue [2] and wide [1][2].")
    searcher = FakeSearcher([hit(1), hit(2), hit(3)])
    tokens: list[str] = []
    rec = answer("  Why is the sky blue?  ", generator=gen, settings=settings,
                 retriever=searcher, mode="rag", id="x1", on_token=tokens.append, config=CONFIG)
    data = rec.to_json()
    assert set(data) == ANSWER_KEYS and set(data["timings_ms"]) == TIMING_KEYS
    assert data["id"] == "x1" and data["question"] == "Why is the sky blue?"
    assert data["answer"] == "The sky is blue [2] and wide [1][2]."
    assert "".join(tokens).strip() == data["answer"]
    assert data["abstained"] is False and data["closest"] == []
    assert [(c["n"], c["chunk_id"], c["path"], c["heading"]) for c in data["citations"]] == [
        (2, 2, "/docs/2.md", "Part 2"), (1, 1, "/docs/1.md", "Part 1")]
    assert data["mode"] == "rag" and data["model"] == "fake-gen"
    assert data["timings_ms"]["embed"] == 1.5 and data["timings_ms"]["search"] == 0.5
    assert data["timings_ms"]["total"] >= data["timings_ms"]["generate"] >= 0
    assert data["tokens"]["prompt"] > 0 and data["tokens"]["completion"] == 8
    assert data["flags"] == []
    json.dumps(data)  # JSON-ready
    user = gen.calls[0][-1]["content"]
    assert '<source id="3"' in user and "Question: Why is the sky blue?" in user


def test_answer_reranks_only_when_the_answer_setting_says_so(settings: Settings) -> None:
    searcher = FakeSearcher([hit(1), hit(2)])
    answer("Why?", generator=FakeGenerator("Blue [1]."), settings=settings, retriever=searcher,
           mode="rag", config=CONFIG)
    rec = answer("Why?", generator=FakeGenerator("Blue [1]."), settings=settings,
                 retriever=searcher, mode="rag", config=CONFIG.model_copy(update={"rerank": True}))
    assert searcher.reranks == [False, True]
    assert rec.timings_ms["search"] == 2.5  # reranking is search time in the record


def test_prompt_variants_override_system_prompt_and_reminder(settings: Settings) -> None:
    gen = FakeGenerator("Blue [1].")
    searcher = FakeSearcher([hit(1)])
    answer("Why?", generator=gen, settings=settings, retriever=searcher, mode="rag",
           config=CONFIG)
    answer("Why?", generator=gen, settings=settings, retriever=searcher, mode="rag",
           config=CONFIG, system_prompt="Be terse.", reminder="One word.")
    default, variant = gen.calls
    assert default[0]["content"] == RAG_SYSTEM_PROMPT
    assert default[-1]["content"].endswith(f"Question: Why?\n\n{ANSWER_REMINDER}")
    assert variant[0]["content"] == "Be terse."
    assert variant[-1]["content"].endswith("Question: Why?\n\nOne word.")


def test_citations_and_closest_sources_carry_the_pdf_page(settings: Settings) -> None:
    from dataclasses import replace

    hits = [replace(hit(1), path="/docs/manual.pdf", page=4), hit(2)]
    rec = answer("q?", generator=FakeGenerator("It is so [1] and [2]."), settings=settings,
                 retriever=FakeSearcher(hits), config=CONFIG)
    assert [(c.path, c.page) for c in rec.citations] == [("/docs/manual.pdf", 4),
                                                         ("/docs/2.md", None)]
    cites = rec.to_json()["citations"]
    assert cites[0]["page"] == 4 and "page" not in cites[1]  # DESIGN.md's fields otherwise
    low = [replace(h, scores={"vector": 0.1, "keyword": 1.0}) for h in hits]
    rec = answer("q?", generator=FakeGenerator("x"), settings=settings,
                 retriever=FakeSearcher(low), config=CONFIG)
    assert rec.abstained and rec.closest[0].page == 4


def _repeats(text: str, window: int = 100) -> bool:
    return any(text.find(text[i:i + window], 0, i + window - 1) != -1
               for i in range(1, len(text) - window + 1))


def test_repetition_guard_cuts_a_loop_and_leaves_other_text_alone() -> None:
    from appliance.generate.repetition import RepetitionGuard

    sentence = "The operators in the box are not defined by the operators themselves, but " \
               "rather by the syntax of the operators. "
    looping = "Precedence is syntax. " + sentence * 5
    guard = RepetitionGuard(100)
    stopped_at = next(i for i in range(0, len(looping), 3) if guard.feed(looping[i:i + 3]))
    assert stopped_at < len("Precedence is syntax. ") + 2 * len(sentence)
    assert guard.text().startswith("Precedence is syntax. " + sentence.strip(" ."))
    assert not _repeats(guard.text()) and guard.text().count("not defined") == 1
    guard = RepetitionGuard(10)
    assert not any(guard.feed(c) for c in "abcdefghij") and guard.feed("abcdefghijk")
    assert guard.text() == "abcdefghij"
    prose = ("Ferries leave every forty minutes from pier 7 [1]; tickets cost 4 euros [2]. "
             "A return ticket costs 7 euros and a bicycle travels free [2].")
    guard = RepetitionGuard(100)
    assert not any(guard.feed(w + " ") for w in prose.split(" ")) and guard.cut is None
    off = RepetitionGuard(0)
    assert not any(off.feed("loop ") for _ in range(500))


def test_a_looping_answer_is_cut_and_flagged(settings: Settings) -> None:
    loop = "Fact number 1 is that the fact is a fact of the facts, as the facts state. " * 8
    gen = FakeGenerator(loop + "[1]")
    tokens: list[str] = []
    rec = answer("What is fact 1?", generator=gen, settings=settings,
                 retriever=FakeSearcher([hit(1)]), config=CONFIG, on_token=tokens.append)
    assert "stopped:loop" in rec.flags and not rec.abstained
    assert rec.answer.count("as the facts state") == 1 and not _repeats(rec.answer)
    assert len(tokens) < len(loop.split())  # generation stopped, not run to the end
    plain = load_settings(home=settings.home, generate={"loop_chars": 0})
    rec = answer("What is fact 1?", generator=FakeGenerator(loop), settings=plain,
                 retriever=FakeSearcher([hit(1)]), config=CONFIG)
    assert "stopped:loop" not in rec.flags and rec.answer.count("as the facts state") == 8


def test_unknown_citation_is_dropped_and_flagged(settings: Settings) -> None:
    rec = answer("q?", generator=FakeGenerator("It is so [1] [9]."), settings=settings,
                 retriever=FakeSearcher([hit(1)]), config=CONFIG)
    assert [c.n for c in rec.citations] == [1] and "unknown_citation:9" in rec.flags


def test_answer_without_citation_is_flagged(settings: Settings) -> None:
    rec = answer("q?", generator=FakeGenerator("It is so."), settings=settings,
                 retriever=FakeSearcher([hit(1)]), config=CONFIG)
    assert rec.citations == [] and "no_citation" in rec.flags and not rec.abstained


class CitingGenerator(FakeGenerator):
    """A fake whose model, asked to continue its answer with " [", picks source 2."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.asked: list[int] = []

    def complete_citation(self, n_sources: int) -> int | None:
        self.asked.append(n_sources)
        return 2


def test_missing_citation_is_completed_by_the_model(settings: Settings) -> None:
    gen = CitingGenerator("In 1066.")
    tokens: list[str] = []
    rec = answer("q?", generator=gen, settings=settings, on_token=tokens.append,
                 retriever=FakeSearcher([hit(1), hit(2), hit(3)]), config=CONFIG)
    assert gen.asked == [3] and rec.answer == "In 1066. [2]"
    assert "".join(tokens).strip() == rec.answer
    assert [c.n for c in rec.citations] == [2] and rec.flags == ["citation:completed"]


@pytest.mark.parametrize("reply", ["In 1066 [1].", "I could not find this in the documents."])
def test_citation_completion_only_when_needed(settings: Settings, reply: str) -> None:
    gen = CitingGenerator(reply)
    answer("q?", generator=gen, settings=settings, retriever=FakeSearcher([hit(1), hit(2)]),
           config=CONFIG)
    assert gen.asked == []


def test_citation_completion_can_be_turned_off(settings: Settings) -> None:
    gen = CitingGenerator("In 1066.")
    rec = answer("q?", generator=gen, settings=settings, retriever=FakeSearcher([hit(1)]),
                 config=CONFIG.model_copy(update={"complete_citations": False}))
    assert gen.asked == [] and "no_citation" in rec.flags


def test_weak_retrieval_abstains_without_calling_the_model(settings: Settings) -> None:
    gen = FakeGenerator()
    tokens: list[str] = []
    hits = [hit(1, vector=0.12, keyword=None), hit(2, vector=0.05, keyword=1.0), hit(3, 0.01)]
    rec = answer("What is the capital of Australia?", generator=gen, settings=settings,
                 retriever=FakeSearcher(hits), on_token=tokens.append, config=CONFIG)
    assert gen.calls == [] and tokens == []
    assert rec.abstained and rec.answer == ABSTAIN_SENTENCE and rec.citations == []
    assert [c.n for c in rec.closest] == [1, 2] and rec.closest[0].path == "/docs/1.md"
    assert rec.flags == ["abstained:retrieval"]
    assert rec.tokens == {"prompt": 0, "completion": 0} and rec.tokens_per_s == 0.0
    assert rec.model == "fake-gen"


def test_no_hits_abstains(settings: Settings) -> None:
    rec = answer("q?", generator=FakeGenerator(), settings=settings,
                 retriever=FakeSearcher([]), config=CONFIG)
    assert rec.abstained and rec.closest == [] and rec.flags == ["abstained:no_hits"]


@pytest.mark.parametrize(
    ("vector", "keyword", "abstains"),
    [(0.31, None, False), (0.29, None, True), (0.1, 8.0, False), (0.1, 7.9, True),
     (None, None, False), (None, 2.0, True), (0.5, 0.0, False)],
)
def test_retrieval_thresholds(vector: float | None, keyword: float | None,
                              abstains: bool) -> None:
    assert retrieval_abstains([hit(1, vector, keyword)], CONFIG, "pump?") is abstains


def test_keyword_matches_on_common_words_alone_are_no_evidence() -> None:
    strong_keyword = [hit(1, 0.1, 19.0)]
    assert retrieval_abstains(strong_keyword, CONFIG, "the of and")
    assert not retrieval_abstains(strong_keyword, CONFIG, "the pump of the boiler")
    assert not retrieval_abstains([hit(1, 0.5, 19.0)], CONFIG, "the of and")  # vector evidence


def test_control_characters_are_not_a_question(settings: Settings) -> None:
    gen = FakeGenerator()
    with pytest.raises(InputError, match="empty"):
        answer("\x00\x07 \x1b\x9b\u202e", generator=gen, settings=settings, mode="base")
    rec = answer("Why\x9b[2J is\u202e it?", generator=gen, settings=settings, mode="base")
    assert rec.question == "Why[2J is it?"  # C1 codes and bidi overrides dropped too


def test_best_hit_of_each_channel_counts(settings: Settings) -> None:
    # the fused top hit is weak on both channels, but the third hit has strong keyword evidence
    hits = [hit(1, 0.1, 1.0), hit(2, 0.2, None), hit(3, None, 12.0)]
    assert not retrieval_abstains(hits, CONFIG, "pump?")


def test_model_verdict_abstains(settings: Settings) -> None:
    gen = FakeGenerator("I couldn't find that in the documents.")
    rec = answer("Who was the 5th king?", generator=gen, settings=settings,
                 retriever=FakeSearcher([hit(1), hit(2), hit(3)]), config=CONFIG)
    assert rec.abstained and rec.answer == ABSTAIN_SENTENCE and rec.citations == []
    assert [c.n for c in rec.closest] == [1, 2] and rec.flags == ["abstained:model"]
    assert rec.tokens["completion"] > 0


@pytest.mark.parametrize("reply", ["[1]", "  [2]. ", ""])
def test_an_answer_without_words_is_an_abstention(settings: Settings, reply: str) -> None:
    rec = answer("q?", generator=FakeGenerator(reply), settings=settings,
                 retriever=FakeSearcher([hit(1), hit(2)]), config=CONFIG)
    assert rec.abstained and rec.answer == ABSTAIN_SENTENCE and rec.citations == []
    assert rec.flags == ["abstained:empty"] and [c.n for c in rec.closest] == [1, 2]


def test_base_mode_uses_no_retrieval(settings: Settings) -> None:
    gen = FakeGenerator("Shakespeare.")
    searcher = FakeSearcher([hit(1)])
    rec = answer("Who wrote Hamlet?", generator=gen, settings=settings, retriever=searcher,
                 mode="base", config=CONFIG)
    assert searcher.queries == [] and rec.mode == "base" and rec.answer == "Shakespeare."
    assert rec.timings_ms["embed"] == 0 and rec.timings_ms["search"] == 0
    assert "<source" not in json.dumps(gen.calls[0]) and "no_citation" not in rec.flags


def test_bad_questions_and_modes(settings: Settings) -> None:
    gen = FakeGenerator()
    with pytest.raises(InputError, match="empty"):
        answer("   ", generator=gen, settings=settings, retriever=FakeSearcher([]))
    with pytest.raises(InputError, match="Unknown mode"):
        answer("q?", generator=gen, settings=settings, mode="magic")
    with pytest.raises(InputError, match="knowledge base"):
        answer("q?", generator=gen, settings=settings, mode="rag", retriever=None)
    limit = settings.answer.max_question_chars
    with pytest.raises(InputError, match=f"over the limit of {limit:,}"):
        answer("why " * limit, generator=gen, settings=settings, mode="base")
    assert gen.calls == []  # refused before any generation


def test_default_id_is_stable(settings: Settings) -> None:
    gen = FakeGenerator()
    a = answer("Same question?", generator=gen, settings=settings, mode="base")
    b = answer(" Same question? ", generator=gen, settings=settings, mode="base")
    assert a.id == b.id and a.id.startswith("q-")


def test_generator_stats_are_used_when_present(settings: Settings) -> None:
    class Stats:
        prompt_tokens = 321
        completion_tokens = 11
        tokens_per_s = 42.5
        finish_reason = "length"

    gen = FakeGenerator("Blue [1].")
    gen.last_stats = Stats()  # type: ignore[attr-defined]
    rec = answer("q?", generator=gen, settings=settings, retriever=FakeSearcher([hit(1)]),
                 config=CONFIG)
    assert rec.tokens == {"prompt": 321, "completion": 11} and rec.tokens_per_s == 42.5
    assert "max_tokens" in rec.flags


# -- Pipeline ----------------------------------------------------------------------------------


class FakeApp:
    def __init__(self, settings: Settings, registry: Any, searcher: FakeSearcher) -> None:
        self.settings = settings
        self.registry = registry
        self._searcher = searcher
        self.opened: list[str] = []

    def retriever(self, kb: str = "default") -> FakeSearcher:
        self.opened.append(kb)
        return self._searcher


def _registry(*entries: dict[str, Any]) -> Any:
    from appliance.models.registry import ModelEntry, Registry

    return Registry([
        ModelEntry(id=e["id"], role=e.get("role", "generator"), format="gguf",
                   path=Path("/nonexistent") / e["id"], sha256="0" * 64, origin="packaged",
                   default=e.get("default", False), lineage=e.get("lineage"),
                   extra=e.get("extra", {}))
        for e in entries
    ])


def test_pipeline_loads_each_model_once(settings: Settings) -> None:
    registry = _registry({"id": "small"}, {"id": "big", "default": True})
    loaded: list[str] = []

    def loader(model_id: str) -> FakeGenerator:
        loaded.append(model_id)
        return FakeGenerator("Yes [1].", model_id=model_id)

    app = FakeApp(settings, registry, FakeSearcher([hit(1)]))
    pipe = Pipeline(app, config=CONFIG, loader=loader)  # type: ignore[arg-type]
    assert pipe.default_mode == "rag"
    records = [pipe.ask(f"question {i}?", kb="docs") for i in range(3)]
    records.append(pipe.ask("other?", model="small"))
    assert loaded == ["big", "small"] and pipe.loads == 2
    assert [r.model for r in records] == ["big", "big", "big", "small"]
    assert app.opened[0] == "docs"
    assert pipe.last_hits is not None and [h.chunk_id for h in pipe.last_hits] == [1]
    assert pipe.last_hits[0].scores  # per-channel evidence for the sources panel
    pipe.ask("q?", mode="base")
    assert pipe.last_hits is None
    with pytest.raises(ModelNotFoundError, match="fine-tuned"):
        pipe.ask("q?", mode="hybrid")


def test_fine_tuned_modes_pick_the_fine_tuned_model(settings: Settings) -> None:
    registry = _registry({"id": "base-gen", "default": True},
                         {"id": "tuned", "lineage": {"base": "base-gen"}})
    assert generator_id(registry, settings, "rag") == "base-gen"
    assert generator_id(registry, settings, "ft") == "tuned"
    assert generator_id(registry, settings, "hybrid") == "tuned"
    assert generator_id(registry, settings, "hybrid", "base-gen") == "base-gen"
    pipe = Pipeline(FakeApp(settings, registry, FakeSearcher([hit(1)])),  # type: ignore[arg-type]
                    config=CONFIG, loader=lambda i: FakeGenerator("ok [1]", model_id=i))
    assert pipe.default_mode == "hybrid"  # a packaged fine-tuned model has shipped
    rec = pipe.ask("q?")
    assert rec.mode == "hybrid" and rec.model == "tuned" and rec.citations


def test_the_models_calibrated_abstention_margin_nudges_its_first_token(
    settings: Settings,
) -> None:
    registry = _registry({"id": "base-gen", "default": True},
                         {"id": "tuned", "lineage": {"base": "base-gen"},
                          "extra": {"abstain_margin": 2.5}})
    gens: dict[str, FakeGenerator] = {}

    def loader(i: str) -> FakeGenerator:
        return gens.setdefault(i, FakeGenerator("ok [1]", model_id=i))

    pipe = Pipeline(FakeApp(settings, registry, FakeSearcher([hit(1)])),  # type: ignore[arg-type]
                    config=CONFIG, loader=loader)
    pipe.ask("q?", mode="hybrid")
    pipe.ask("q?", mode="rag")
    assert gens["tuned"].biases == [{ABSTAIN_SENTENCE: -2.5}]
    assert gens["base-gen"].biases == [{}]  # a model without a calibrated margin: untouched
    assert pipe.model_margin("tuned") == 2.5 and pipe.model_margin("nope") == 0.0
    fixed = Pipeline(FakeApp(settings, registry, FakeSearcher([hit(1)])),  # type: ignore[arg-type]
                     config=CONFIG.model_copy(update={"abstain_margin": 0.0}), loader=loader)
    fixed.ask("q?", mode="hybrid")
    assert gens["tuned"].biases[-1] == {}  # the setting overrides the registry


# -- the real models ---------------------------------------------------------------------------

SMOL = "smollm2-135m-instruct-q4_1"


def _tiny_app(tmp_path: Path) -> Any:
    """The real appliance with knowledge base 'tiny': a ferry and a library note."""
    from appliance.api import Appliance

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ferries.md").write_text(
        "# Ferries\n\nThe harbour ferry to Kelby Island leaves every 40 minutes from pier 7. "
        "A single ticket costs 4 euros.\n", encoding="utf-8")
    (docs / "library.md").write_text(
        "# Library\n\nThe town library opens at 9 in the morning and closes at 6 in the "
        "evening, except on Sundays.\n", encoding="utf-8")
    app = Appliance(load_settings(home=tmp_path / "home", generate={"max_tokens": 48}))
    app.ingest([docs], kb="tiny")
    return app


@pytest.mark.integration
def test_real_model_answers_with_record_fields(tmp_path: Path) -> None:
    app = _tiny_app(tmp_path)
    pipe = Pipeline(app)
    try:
        streamed: list[str] = []
        first = pipe.ask("How often does the ferry to Kelby Island leave?", kb="tiny",
                         mode="rag", model=SMOL, id="f1", on_token=streamed.append)
        data = first.to_json()
        assert set(data) == ANSWER_KEYS and set(data["timings_ms"]) == TIMING_KEYS
        assert data["id"] == "f1" and data["mode"] == "rag" and data["model"] == SMOL
        assert data["timings_ms"]["embed"] > 0 and data["timings_ms"]["generate"] > 0
        if not first.abstained:
            assert "".join(streamed).strip() == first.answer
            assert data["tokens"]["completion"] > 0 and data["tokens_per_s"] > 0
            for c in data["citations"]:
                assert c["path"].endswith(".md") and c["chunk_id"] > 0
        assert data["tokens"]["prompt"] > 50 or first.abstained
        gen = pipe.generator("rag", SMOL)
        cached_before = gen.last_stats.cached_tokens  # type: ignore[attr-defined]
        second = pipe.ask("When does the library open?", kb="tiny", mode="rag", model=SMOL)
        off_topic = pipe.ask("What is the capital of Australia?", kb="tiny", mode="rag",
                             model=SMOL)
        assert pipe.loads == 1 and pipe.generator("rag", SMOL) is gen
        assert second.model == SMOL and off_topic.model == SMOL
        # the system prompt's KV cache is reused by the next question
        assert gen.last_stats.cached_tokens > 0 or cached_before > 0  # type: ignore[attr-defined]
        assert off_topic.abstained and off_topic.answer == ABSTAIN_SENTENCE
        assert off_topic.citations == []
    finally:
        pipe.close()
        app.close()


@pytest.mark.integration
def test_default_hybrid_mode_uses_the_built_grounded_model(tmp_path: Path) -> None:
    """Setup builds the committed grounded adapter: hybrid is the default mode, and the
    fine-tuned model answers briefly with a citation and abstains off-topic."""
    from appliance.generate import is_fine_tuned

    app = _tiny_app(tmp_path)
    pipe = Pipeline(app)
    try:
        tuned = [e for e in app.registry if is_fine_tuned(e) and e.origin == "packaged"]
        assert tuned, "setup did not build models/adapters (run scripts/setup.sh)"
        assert pipe.default_mode == "hybrid"
        rec = pipe.ask("How much does a single ferry ticket cost?", kb="tiny")
        assert rec.mode == "hybrid" and rec.model == tuned[0].id
        assert not rec.abstained and "4 euros" in rec.answer, rec.answer
        assert [c.n for c in rec.citations] == [1] and "citation:completed" not in rec.flags
        assert rec.tokens["completion"] < 16  # the adapter answers with the span, not prose
        off = pipe.ask("What is the capital of Australia?", kb="tiny")
        assert off.abstained and off.citations == []
    finally:
        pipe.close()
        app.close()


@pytest.mark.integration
def test_next_token_logits_agree_with_greedy_generation(tmp_path: Path) -> None:
    from appliance.generate import load_generator

    app = _tiny_app(tmp_path)
    gen: Any = load_generator(app.settings, app.registry, SMOL)
    try:
        messages = [{"role": "user", "content": "Name a colour of the sky."}]
        logits = gen.next_token_logits(messages)
        assert logits.shape == (gen.llm.n_vocab(),)
        text = "".join(gen.stream(messages, 4))
        first = gen.llm.detokenize([int(logits.argmax())]).decode("utf-8", "replace")
        assert text.startswith(first.lstrip()) or text.startswith(first), (first, text)
        biased = "".join(gen.stream(messages, 4, first_token_bias={"Banana": 50.0}))
        assert biased.startswith("Ban"), biased  # the bias moves the first token only
        assert gen.complete_citation(3) in (1, 2, 3)  # reads the same logits after a stream
    finally:
        gen.close()
        app.close()


@pytest.mark.integration
def test_flash_attention_setting_reaches_llama_cpp(tmp_path: Path) -> None:
    """generate.flash_attn turns llama.cpp's flash attention on; the model still answers
    with the same first token as without it."""
    from appliance.generate.llama import LlamaGenerator
    from appliance.models import Registry

    entry = Registry.load(load_settings()).resolve(SMOL)
    messages = [{"role": "user", "content": "Name a colour of the sky."}]
    firsts = []
    for on in (False, True):
        settings = load_settings(home=tmp_path / "home", generate={"flash_attn": on})
        gen = LlamaGenerator(SMOL, entry.path, settings.generate)
        try:
            assert gen.llm.context_params.flash_attn_type == int(on)  # 0 off, 1 on
            firsts.append(int(gen.next_token_logits(messages).argmax()))
            assert "".join(gen.stream(messages, 6)).strip()
        finally:
            gen.close()
    assert firsts[0] == firsts[1]


@pytest.mark.integration
def test_a_small_model_caught_in_a_loop_is_stopped(demo_kb: tuple[Any, Path]) -> None:
    """SmolLM2-135M repeats one sentence over and over on this question (greedy); the
    answer keeps one copy and generation stops before max_tokens."""
    app, _ = demo_kb
    pipe = Pipeline(app)
    try:
        rec = pipe.ask("Explain operator precedence in Python", kb="demo", mode="rag",
                       model=SMOL)
        assert not _repeats(rec.answer), rec.answer
        if "stopped:loop" in rec.flags:
            assert rec.tokens["completion"] < app.settings.generate.max_tokens
    finally:
        pipe.close()


@pytest.mark.integration
def test_interrupt_stops_prompt_evaluation_and_keeps_the_cache_sound(tmp_path: Path) -> None:
    import threading

    from appliance.errors import Interrupted
    from appliance.generate import load_generator

    app = _tiny_app(tmp_path)
    gen: Any = load_generator(app.settings, app.registry, SMOL)
    try:
        long_text = " ".join(f"Fact {i}: the valve number {i} is painted blue." for i in range(150))
        messages = [{"role": "user", "content": long_text + "\nWhat colour are the valves?"}]
        assert len(gen.render(messages)) > 1500  # a prompt that takes a while to read
        got: list[str] = []
        raised: list[BaseException] = []

        def run() -> None:
            try:
                got.extend(gen.stream(messages, 8))
            except BaseException as exc:  # handed to the test thread
                raised.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        while worker.is_alive() and not gen._in_call:
            pass
        gen.interrupt()
        worker.join(timeout=120)
        assert not worker.is_alive()
        assert len(raised) == 1 and isinstance(raised[0], Interrupted), raised
        assert got == [] and gen.last_stats.completion_tokens == 0  # stopped while reading
        gen.interrupt()  # nothing in progress: a no-op, and the next call is not stopped
        again = "".join(gen.stream(messages, 8))  # reuses what was read before the stop
        fresh: Any = load_generator(app.settings, app.registry, SMOL)
        try:
            assert again == "".join(fresh.stream(messages, 8))  # the cache was sound
        finally:
            fresh.close()
    finally:
        gen.close()
        app.close()


@pytest.mark.integration
def test_an_interrupt_as_a_call_ends_leaves_nothing_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """interrupt() from another thread while a call is ending (here: inside its cleanup)
    finds no call; it never leaves the abort flag set or llama.cpp's log silenced for the
    calls after (before the fix it did: it saw the call's lock still held). This pins the
    cleanup's order; the lock that orders interrupt()'s check against its setting of the
    flag closes a window too narrow to hit on purpose."""
    import threading

    from llama_cpp._logger import logger

    from appliance.generate import llama as llama_module
    from appliance.generate import load_generator

    app = _tiny_app(tmp_path)
    gen: Any = load_generator(app.settings, app.registry, SMOL)
    original = llama_module._llama_logs
    racers: list[threading.Thread] = []

    def logs(*, quiet: bool) -> None:
        if not quiet and not racers:  # the call's cleanup: interrupt from another thread now
            racers.append(threading.Thread(target=gen.interrupt))
            racers[0].start()
            racers[0].join(0.2)
        original(quiet=quiet)

    monkeypatch.setattr(llama_module, "_llama_logs", logs)
    try:
        text = "".join(gen.stream([{"role": "user", "content": "Say hello."}], 4))
        racers[0].join(10)
        assert not racers[0].is_alive()
        assert logger.level == logging.ERROR and gen._abort_flag[0] == b"\x00", text
        assert "".join(gen.stream([{"role": "user", "content": "Say hello."}], 4)) == text
    finally:
        gen.close()
        app.close()


_CTRL_C_SCRIPT = """
import os, signal, sys, threading, time
from appliance.api import Appliance
from appliance.pipeline import Pipeline
pipe = Pipeline(Appliance())
text = " ".join(f"Fact {i}: the valve number {i} is painted blue." for i in range(150))
def press_ctrl_c():
    gens = pipe._generators
    while not gens or not next(iter(gens.values())).last_stats.prompt_tokens:
        time.sleep(0.001)
    time.sleep(0.15)  # inside the first batch of the prompt's evaluation
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=press_ctrl_c, daemon=True).start()
pieces = []
try:
    pipe.ask("What colour are the valves?", mode="base", model=sys.argv[1],
             on_token=pieces.append, system_prompt=text)  # a long prompt
    print("not interrupted")
except KeyboardInterrupt:
    import llama_cpp
    gen = next(iter(pipe._generators.values()))
    memory = llama_cpp.llama_get_memory(gen.llm._ctx.ctx)
    read = llama_cpp.llama_memory_seq_pos_max(memory, 0) + 1  # positions in the KV cache
    print(f"KeyboardInterrupt after {len(pieces)} pieces, {read} tokens read "
          f"of batches of {gen.llm.n_batch}")
pipe.close()
print("closed")
"""


@pytest.mark.integration
def test_ctrl_c_stops_llama_cpp_inside_a_batch_and_frees_the_model_after(tmp_path: Path) -> None:
    """Ctrl+C while llama.cpp reads a long prompt: the answer runs in a worker thread, so
    the main thread gets KeyboardInterrupt at once and interrupts the decode (it does not
    wait for the current batch of 512 tokens), and the model is freed only after."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO

    env = {**os.environ, "APPLIANCE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_SCRIPT, SMOL], capture_output=True, text=True,
        env=env, cwd=REPO, timeout=300,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    said = proc.stdout + proc.stderr
    found = re.search(r"KeyboardInterrupt after 0 pieces, (\d+) tokens read of batches of "
                      r"(\d+)", proc.stdout)
    assert found and "closed" in proc.stdout and proc.returncode == 0, said
    assert int(found[1]) < int(found[2]), said  # stopped inside the first batch
    assert "Exception ignored" not in proc.stderr, proc.stderr
    assert "memory module" not in proc.stderr, proc.stderr  # llama.cpp's rollback note
