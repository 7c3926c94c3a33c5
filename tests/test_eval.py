"""Evaluation: metrics, eval-set reading, the decision, the report, the runner (with fakes)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.api import Appliance
from appliance.config import AnswerSettings, load_settings
from appliance.errors import InputError, ModelNotFoundError
from appliance.evaluate.metrics import (
    EvalItem,
    aggregate,
    bootstrap_interval,
    content_words,
    faithfulness,
    format_ok,
    is_gold_source,
    ndcg_at_k,
    paired_difference,
    rank_metrics,
    recall_at_k,
    reciprocal_rank,
    schema_errors,
    score_answer,
    wilson_interval,
)
from appliance.evaluate.report import (
    bar_chart,
    compare_modes,
    decide,
    mode_table,
    render_html,
    render_markdown,
)
from appliance.evaluate.retrieval import load_beir, score_ranking
from appliance.evaluate.runner import (
    load_eval_set,
    parse_modes,
    resolve_models,
    run_eval,
    select_articles,
)
from appliance.evaluate.squad import Article, Paragraph, Question, answer_in_text
from appliance.pipeline import Pipeline
from tests.fakes import FakeGenerator, HashEmbedder

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "eval" / "pydoc-eval.jsonl"
SMOL = "smollm2-135m-instruct-q4_1"


# -- metrics ---------------------------------------------------------------------------------


def record(answer: str, *, abstained: bool = False, mode: str = "rag",
           citations: list[dict[str, Any]] | None = None,
           context: dict[str, str] | None = None, total: float = 100.0,
           completion: int = 10, tps: float = 20.0) -> dict[str, Any]:
    return {"id": "x", "question": "q", "answer": answer, "abstained": abstained,
            "citations": citations or [], "mode": mode, "model": "m",
            "timings_ms": {"total": total}, "tokens": {"prompt": 5, "completion": completion},
            "tokens_per_s": tps, "context": context or {}}


def cite(chunk_id: int, path: str) -> dict[str, Any]:
    return {"n": 1, "path": path, "heading": "", "chunk_id": chunk_id, "score": 0.5}


def test_content_words_and_faithfulness() -> None:
    assert content_words("The with statement calls __exit__ [1].") == [
        "statement", "calls", "exit"]
    cited = ["The context manager's __exit__ method is called by the with statement."]
    assert faithfulness("The with statement calls __exit__ [1].", cited) == pytest.approx(2 / 3)
    assert faithfulness("Anything at all.", []) == 0.0
    assert faithfulness("It is [1].", cited) == 1.0


def test_format_regex_and_json_schema() -> None:
    assert format_ok("PEP 343 [1].", r"^PEP \d+\.?$")
    assert not format_ok("It is PEP 343, see [1].", r"^PEP \d+\.?$")
    assert not format_ok("x", "([unclosed")
    schema = {"type": "object", "properties": {"exception": {"type": "string",
                                                             "pattern": "Error$"}},
              "required": ["exception"], "additionalProperties": False}
    assert format_ok('{"exception": "AssertionError"} [1]', schema)
    assert format_ok('```json\n{"exception": "NameError"}\n```', schema)
    assert not format_ok('{"exception": "Assertion"}', schema)
    assert not format_ok('{"exception": "NameError", "why": 1}', schema)
    assert not format_ok("AssertionError", schema)
    assert format_ok("anything", None)


def test_schema_subset() -> None:
    schema = {"type": "array", "minItems": 1, "maxItems": 2,
              "items": {"type": "integer", "minimum": 0, "maximum": 9}}
    assert schema_errors([1, 2], schema) == []
    assert schema_errors([], schema) and schema_errors([1, 2, 3], schema)
    assert schema_errors([1.5], schema) and schema_errors([True], schema)
    assert schema_errors([10], schema)
    assert schema_errors(1.0, {"type": "integer"}) == []
    assert schema_errors("b", {"enum": ["a"]}) and schema_errors("a", {"const": "a"}) == []
    assert schema_errors("ab", {"type": "string", "minLength": 3})
    assert schema_errors(None, {"type": ["string", "null"]}) == []
    assert schema_errors(1, {"anyOf": [{"type": "string"}, {"type": "integer"}]}) == []
    assert schema_errors(1, {"oneOf": [{"type": "number"}, {"type": "integer"}]})
    assert schema_errors(1, {"not": {"type": "integer"}})
    assert schema_errors({"a": "x"}, {"additionalProperties": {"type": "integer"}})


def test_gold_sources_match_by_file_name_or_suffix() -> None:
    assert is_gold_source("/data/corpus/with.rst", ["with.rst"])
    assert is_gold_source("/data/corpus/ref/with.rst", ["ref/with.rst"])
    assert not is_gold_source("/data/corpus/without.rst", ["with.rst"])
    assert not is_gold_source("/data/corpus/with.rst", [])


def test_ranking_metrics() -> None:
    assert reciprocal_rank([False, False, True]) == pytest.approx(1 / 3)
    assert reciprocal_rank([False, True], k=1) == 0.0
    assert ndcg_at_k([1.0, 0.0], [1.0]) == 1.0
    assert ndcg_at_k([0.0, 1.0], [1.0]) == pytest.approx(1 / 1.5849625)
    assert ndcg_at_k([0.0], []) == 0.0
    assert ndcg_at_k([1.0, 2.0], [2.0, 1.0]) < 1.0
    assert recall_at_k(["a", "b", "c"], ["c", "d"], 2) == 0.0
    assert recall_at_k(["a", "b", "c"], ["c", "d"], 3) == 0.5
    m = rank_metrics(["/x/a.rst", "/x/a.rst", "/x/b.rst"], ["b.rst"])
    assert m["hit@1"] == 0.0 and m["hit@5"] == 1.0 and m["mrr"] == 0.5  # a counts once
    s = score_ranking(["d1", "d2", "d3"], {"d3": 2, "d9": 1}, 100)
    assert s["recall@10"] == 0.5 and s["recall@100"] == 0.5 and s["mrr@10"] == pytest.approx(1 / 3)


def test_score_answer_answerable_with_citations() -> None:
    item = EvalItem("a", "Which exception?", ["AssertionError"], True, ["assert.rst"])
    rec = record("AssertionError [1][2].",
                 citations=[cite(1, "/c/assert.rst"), cite(2, "/c/other.rst")],
                 context={"1": "...", "2": "raises AssertionError"})
    s = score_answer(item, rec)
    assert s.em == 1.0 and s.f1 == 1.0 and s.contained and s.correct
    assert s.citations == 2 and s.citations_ok == 2  # one by gold source, one by content
    assert s.faithfulness == 1.0 and s.format_ok is None
    wrong = score_answer(item, record("ValueError [1].", citations=[cite(2, "/c/other.rst")],
                                      context={"2": "nothing"}))
    assert wrong.em == 0.0 and not wrong.contained and wrong.citations_ok == 0
    assert wrong.faithfulness == 0.0


def test_score_answer_abstentions_and_formats() -> None:
    unans = EvalItem("u", "Unknown?", [], False, format=r"^\d+$")
    s = score_answer(unans, record("x", abstained=True))
    assert s.em == 1.0 and s.correct and s.format_ok is True and s.faithfulness is None
    s = score_answer(unans, record("42", mode="base"))
    assert s.em == 0.0 and not s.correct and s.format_ok is True
    ans = EvalItem("a", "Q?", ["x"], True, format=r"^\d+$")
    s = score_answer(ans, record("", abstained=True))
    assert not s.correct and s.format_ok is False and s.citations == 0


def test_aggregate() -> None:
    items = [EvalItem("a", "q", ["blue"], True, ["a.md"]), EvalItem("b", "q", ["red"], True),
             EvalItem("u", "q", [], False)]
    recs = [record("It is blue [1].", citations=[cite(1, "/a.md")], context={"1": "blue"},
                   total=100),
            record("", abstained=True, total=300, completion=0, tps=0.0),
            record("Green.", total=200, completion=30, tps=30.0)]
    m = aggregate([score_answer(i, r) for i, r in zip(items, recs, strict=True)], "rag")
    assert m["questions"] == 3 and m["answerable"] == 2 and m["unanswerable"] == 1
    assert m["accuracy"] == pytest.approx(1 / 3) and m["contained"] == 0.5
    assert m["false_abstention"] == 0.5 and m["abstention_accuracy"] == 0.0
    assert m["citation_precision"] == 1.0 and m["citation_coverage"] == 0.5
    assert m["em_answerable"] == 0.0 and m["f1_answerable"] == pytest.approx(0.25)
    assert m["p50_ms"] == 200.0 and m["tokens_per_s"] == pytest.approx(40 / 1.5, abs=0.01)
    assert m["format_compliance"] is None
    base = aggregate([score_answer(i, r) for i, r in zip(items, recs, strict=True)], "base")
    assert base["citation_coverage"] is None and base["faithfulness"] is None


def test_wilson_interval_matches_published_values() -> None:
    assert wilson_interval(5, 10) == (pytest.approx(0.2366, abs=1e-4),
                                      pytest.approx(0.7634, abs=1e-4))
    # not a point at 0 % or 100 %
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson_interval(51, 51) == (pytest.approx(0.9300, abs=1e-4), 1.0)
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_bootstrap_interval_is_seeded_and_narrows_with_more_questions() -> None:
    few = [1.0, 0.0, 0.5, 1.0, 0.0] * 8
    many = few * 10
    a, b = bootstrap_interval(few), bootstrap_interval(few)
    assert a == b and a is not None  # the same answers give the same report
    assert a[0] < sum(few) / len(few) < a[1]
    wide, narrow = a[1] - a[0], bootstrap_interval(many)
    assert narrow is not None and narrow[1] - narrow[0] < wide / 2
    assert bootstrap_interval([0.7]) == (pytest.approx(0.7), pytest.approx(0.7))
    assert bootstrap_interval([]) is None


def test_paired_difference_separates_real_changes_from_noise() -> None:
    before = [0.0] * 30 + [1.0] * 10
    real = paired_difference(before, [1.0] * 40)
    assert real is not None and real.delta == pytest.approx(0.75)
    assert real.significant and real.low > 0.5
    noise = paired_difference(before, [1.0] * 2 + [0.0] * 28 + [0.0] * 2 + [1.0] * 8)
    assert noise is not None and noise.delta == 0.0 and not noise.significant
    assert noise.low < 0 < noise.high
    assert real.to_json()["significant"] is True and paired_difference([], []) is None
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0], [1.0, 0.0])


def test_aggregate_reports_intervals() -> None:
    items = [EvalItem(f"a{i}", "q", ["blue"], True) for i in range(20)]
    items += [EvalItem(f"u{i}", "q", [], False) for i in range(20)]
    recs = [record("blue [1]" if i < 15 else "", abstained=i >= 15,
                   citations=[cite(1, "/a.md")] if i < 15 else None) for i in range(20)]
    recs += [record("", abstained=i < 6) if i < 6 else record("red [1]",
             citations=[cite(1, "/a.md")]) for i in range(20)]
    m = aggregate([score_answer(i, r) for i, r in zip(items, recs, strict=True)], "rag")
    iv = m["intervals"]
    assert m["false_abstention"] == 0.25 and iv["false_abstention"][0] < 0.25
    assert iv["false_abstention"][1] > 0.25 and iv["abstention_accuracy"][0] > 0.1
    assert iv["f1_answerable"][0] <= m["f1_answerable"] <= iv["f1_answerable"][1]
    assert "citation_coverage" in iv and "format_compliance" not in iv
    base = aggregate([score_answer(i, r) for i, r in zip(items, recs, strict=True)], "base")
    assert "citation_coverage" not in base["intervals"]


# -- eval sets -------------------------------------------------------------------------------


def test_example_set_is_grounded_in_the_pydoc_corpus() -> None:
    from pydoc_data.topics import topics

    data = load_eval_set(EXAMPLE)
    assert not data.bad_rows and len(data.items) >= 60
    unanswerable = [i for i in data.items if not i.answerable]
    assert len(unanswerable) >= 15 and all(not i.answers for i in unanswerable)
    assert sum(i.format is not None for i in data.items) >= 5
    for item in data.items:
        if not item.answerable:
            continue
        assert item.gold_sources and item.answers, item.id
        texts = [topics[g.removesuffix(".rst")] for g in item.gold_sources]
        for answer in item.answers:
            assert any(answer_in_text([answer], t) for t in texts), (item.id, answer)
        assert all(answer_in_text(item.answers[:1], t) for t in texts), item.id


def test_jsonl_set_rows_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    rows = [
        {"id": "ok", "question": "Q1?", "answers": ["a"], "gold_sources": ["x.md"]},
        {"question": "Q2?", "answers": [], "answerable": False},
        {"question": "Q3?", "answers": "single", "format": {"type": "string"}},
        {"question": "Q4?", "answers": [1]},
        {"question": "Q5?", "answers": ["a"], "answerable": False},
        {"question": "Q6?", "answerable": True},
        {"question": "Q6b?"},
        {"question": "Q7?", "answers": ["a"], "format": "([bad"},
        {"question": "Q8?", "answers": ["a"], "format": 3},
        {"question": "Q9?", "answers": ["a"], "gold_sources": [2]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n", encoding="utf-8")
    data = load_eval_set(path)
    assert [i.id for i in data.items] == ["ok", "q2", "q3", "q7"]
    assert data.items[1].answerable is False and data.items[2].answers == ["single"]
    assert data.items[3].answerable is False  # no answers: unanswerable
    assert [b.line for b in data.bad_rows] == [4, 5, 6, 8, 9, 10, 11]
    assert "needs at least one" in data.bad_rows[2].reason
    assert len(load_eval_set(path, limit=2).items) == 2
    with pytest.raises(InputError, match="SQuAD"):
        load_eval_set(path, articles="dev")
    with pytest.raises(InputError, match="does not exist"):
        load_eval_set(tmp_path / "none.jsonl")
    (tmp_path / "set.csv").write_text("question\nq\n", encoding="utf-8")
    with pytest.raises(InputError, match="jsonl"):
        load_eval_set(tmp_path / "set.csv")


def squad_fixture(path: Path) -> Path:
    def article(title: str, facts: list[tuple[str, str, str]]) -> dict[str, Any]:
        paragraphs = []
        for p, (context, question, answer) in enumerate(facts):
            paragraphs.append({"context": context, "qas": [
                {"id": f"{title}-{p}", "question": question,
                 "answers": [{"text": answer, "answer_start": context.find(answer)}],
                 "is_impossible": False},
                {"id": f"{title}-{p}-x", "question": question.replace("?", " in 1900?"),
                 "answers": [], "is_impossible": True, "plausible_answers": []},
            ]})
        return {"title": title, "paragraphs": paragraphs}

    data = {"version": "v2.0", "data": [
        article("Ferries", [("The Kelby ferry leaves every 40 minutes from pier 7.",
                             "How often does the Kelby ferry leave?", "every 40 minutes")]),
        article("Library", [("The town library opens at 9 in the morning.",
                             "When does the town library open?", "9 in the morning"),
                            ("The library holds 12,000 maps.",
                             "How many maps does the library hold?", "12,000")]),
    ]}
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_squad_layout_and_article_selection(tmp_path: Path) -> None:
    path = squad_fixture(tmp_path / "squad.json")
    data = load_eval_set(path, articles="Library")
    assert data.kind == "squad" and [a.title for a in data.articles] == ["Library"]
    assert len(data.items) == 4 and data.items[0].gold_sources == ["Library_000.txt"]
    assert sum(not i.answerable for i in data.items) == 2
    assert len(load_eval_set(path, articles="all").items) == 6
    dev, test = (load_eval_set(path, articles=s) for s in ("dev", "test"))
    assert {a.title for a in dev.articles} | {a.title for a in test.articles} == {
        "Ferries", "Library"}
    sample = load_eval_set(path, articles="all", limit=3)
    assert len(sample.items) == 3 and sample.total == 6
    assert [i.id for i in sample.items] == [i.id for i in load_eval_set(
        path, articles="all", limit=3).items]
    with pytest.raises(InputError, match=r"Unknown article 'Nope'.*Ferries, Library"):
        load_eval_set(path, articles="Nope")
    bad = tmp_path / "bad.json"
    bad.write_text('{"data": 3}', encoding="utf-8")
    with pytest.raises(InputError, match="not a SQuAD"):
        load_eval_set(bad)


def test_select_articles_keeps_given_order() -> None:
    arts = [Article("A", [Paragraph("x", [Question("1", "q", ["x"], True, "A", 0)])]),
            Article("B", [])]
    assert [a.title for a in select_articles(arts, "B,A,B")] == ["B", "A"]


def test_parse_modes() -> None:
    assert parse_modes("rag, base,rag") == ["rag", "base"]
    with pytest.raises(InputError, match="Unknown mode 'magic'"):
        parse_modes("base,magic")
    with pytest.raises(InputError, match="No mode"):
        parse_modes(" , ")
    with pytest.raises(InputError, match="No mode"):
        parse_modes("")


# -- the decision and the report ---------------------------------------------------------------


def metrics(**values: float | None) -> dict[str, Any]:
    m: dict[str, Any] = {k: None for k in (
        "accuracy", "em", "f1", "em_answerable", "f1_answerable", "contained",
        "citation_precision", "citation_coverage", "abstention_accuracy", "false_abstention",
        "format_compliance", "faithfulness", "p50_ms", "p95_ms", "tokens_per_s")}
    m.update(questions=10, format_questions=4, p50_ms=900.0, p95_ms=1500.0, tokens_per_s=20.0)
    m.update(values)
    return m


def report_with(modes: dict[str, dict[str, Any]], retrieval: dict[str, Any] | None = None,
                questions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A report from per-mode metrics; its one question row carries no per-mode results
    (so the decision reads the metrics alone) unless ``questions`` are given."""
    report: dict[str, Any] = {
        "created": "2025-01-01T00:00:00+00:00", "command": "appliance eval set.jsonl",
        "set": {"source": "set.jsonl", "kind": "jsonl", "articles": [], "questions": 10,
                "total_in_set": 10, "answerable": 7, "unanswerable": 3, "with_format": 4,
                "with_gold_sources": 7, "bad_rows": ["line 3: broken JSON"]},
        "kb": "demo", "seconds": 12.0, "notes": ["a <note>"],
        "modes": {m: {"model": f"model-{m}", "metrics": v} for m, v in modes.items()},
        "skipped": {}, "retrieval": retrieval,
        "questions": questions if questions is not None else [
            {"id": "q1", "question": "What <b>?", "answerable": True, "answers": ["x"],
             "results": {}}],
    }
    report["comparisons"] = compare_modes(report)
    report["decision"] = decide(report)
    return report


GOOD_RAG = dict(accuracy=0.8, contained=0.8, citation_coverage=0.95, citation_precision=0.9,
                abstention_accuracy=0.8, false_abstention=0.1, format_compliance=0.95,
                faithfulness=0.8)


def test_decision_knowledge_failures_call_for_rag() -> None:
    r = report_with({"base": metrics(accuracy=0.2, contained=0.3, abstention_accuracy=0.0),
                     "rag": metrics(**GOOD_RAG)})
    d = r["decision"]
    assert d["verdict"] == "rag" and d["knowledge_failures"] and not d["behaviour_failures"]
    assert any("from 30% to 80%" in f for f in d["evidence_for_fixes"])


def test_decision_behaviour_failures_call_for_fine_tuning() -> None:
    r = report_with({"base": metrics(accuracy=0.7, contained=0.8, abstention_accuracy=0.7),
                     "rag": metrics(**{**GOOD_RAG, "format_compliance": 0.25,
                                       "citation_coverage": 0.4})})
    d = r["decision"]
    assert d["verdict"] == "ft" and not d["knowledge_failures"]
    assert any("format compliance" in b for b in d["behaviour_failures"])
    assert any("citation coverage" in b for b in d["behaviour_failures"])
    assert any("not measured" in c for c in d["caveats"])


def test_decision_both_call_for_hybrid_and_cite_fine_tuning_gains() -> None:
    r = report_with({
        "base": metrics(accuracy=0.2, contained=0.2, abstention_accuracy=0.1,
                        format_compliance=0.2),
        "rag": metrics(**{**GOOD_RAG, "format_compliance": 0.3}),
        "ft": metrics(accuracy=0.3, contained=0.2, abstention_accuracy=0.3,
                      format_compliance=0.9),
        "hybrid": metrics(**{**GOOD_RAG, "accuracy": 0.9, "format_compliance": 1.0}),
    }, retrieval={"questions": 7, "k": 10, "hit@1": 0.4, "hit@5": 0.5, "hit@10": 0.6,
                  "mrr": 0.45, "ndcg@10": 0.5, "answer_hit@5": 0.5})
    d = r["decision"]
    assert d["verdict"] == "hybrid" and d["best_measured"]["mode"] == "hybrid"
    assert any("rag -> hybrid" in f and "format compliance" in f
               for f in d["evidence_for_fixes"])
    assert any("hit@5" in c for c in d["caveats"])


def test_decision_without_failures() -> None:
    d = report_with({"base": metrics(accuracy=0.9, contained=0.9, abstention_accuracy=0.9),
                     "rag": metrics(**GOOD_RAG)})["decision"]
    assert d["verdict"] == "rag" and "No failure" in d["headline"]


def _rows(n: int, base_right: int, rag_right: int) -> list[dict[str, Any]]:
    """``n`` answerable questions, the first ``base_right`` right in base and the first
    ``rag_right`` right in rag."""
    def res(ok: bool) -> dict[str, Any]:
        return {"answer": "x", "correct": ok, "abstained": False, "f1": float(ok)}

    return [{"id": f"q{i}", "question": "q", "answerable": True, "answers": ["x"],
             "results": {"base": res(i < base_right), "rag": res(i < rag_right)}}
            for i in range(n)]


def test_decision_counts_a_change_only_beyond_chance() -> None:
    small = report_with({"base": metrics(accuracy=0.2, contained=0.2),
                         "rag": metrics(**{**GOOD_RAG, "contained": 0.4, "accuracy": 0.4})},
                        questions=_rows(10, 2, 4))
    d = small["decision"]
    assert not any("answer contained" in f for f in d["evidence_for_fixes"])
    assert any("within chance" in c and "over 10 questions" in c for c in d["caveats"])
    large = report_with({"base": metrics(accuracy=0.2, contained=0.2),
                         "rag": metrics(**{**GOOD_RAG, "contained": 0.4, "accuracy": 0.4})},
                        questions=_rows(200, 40, 80))
    d = large["decision"]
    assert any("answer contained" in f and "95 % CI" in f for f in d["evidence_for_fixes"])
    assert not any("within chance" in c for c in d["caveats"])
    rows = {(c["before_mode"], c["after_mode"], c["metric"]): c for c in large["comparisons"]}
    contained = rows[("base", "rag", "contained")]
    assert contained["delta"] == pytest.approx(0.2) and contained["significant"]
    assert contained["n"] == 200 and contained["low"] > 0.1
    assert ("base", "rag", "abstention_accuracy") not in rows  # no unanswerable question
    md = render_markdown(large)
    assert "## Paired comparisons" in md and "| base -> rag | answer contained |" in md


def test_mode_table_shows_intervals() -> None:
    m = metrics(**GOOD_RAG)
    m["intervals"] = {"contained": [0.6543, 0.9012]}
    _, rows = mode_table(report_with({"rag": m}))
    assert ["answer contained", "80% (65–90)"] in rows
    assert ["citation coverage", "95%"] in rows  # no interval recorded: the value alone


def test_markdown_and_html_reports() -> None:
    r = report_with({"base": metrics(accuracy=0.2, contained=0.3),
                     "rag": metrics(**GOOD_RAG)},
                    retrieval={"questions": 7, "k": 10, "hit@1": 0.4, "hit@5": 0.9,
                               "hit@10": 1.0, "mrr": 0.6, "ndcg@10": 0.7,
                               "answer_hit@5": None})
    md = render_markdown(r)
    assert "| metric | base | rag |" in md and "| answer contained | 30% | 80% |" in md
    assert "## Decision" in md and "**Knowledge failures" in md and "line 3" in md
    page = render_html(r)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert not re.search(r"(?:src|href)=\"?(?:https?:)?//", page)  # nothing fetched
    for chart in ("chart-quality", "chart-latency", "chart-retrieval"):
        assert f'<svg id="{chart}"' in page
    assert page.count('class="bar"') >= 9 * 2 - 4
    assert "What &lt;b&gt;?" in page and "a &lt;note&gt;" in page


def test_bar_chart_handles_missing_values() -> None:
    svg = bar_chart("c", "T", ["a", "b"], [("s", [0.5, None], "#000")], vmax=1.0)
    assert svg.count('class="bar"') == 1 and ">n/a<" in svg and 'data-value="0.5000"' in svg
    assert 'class="whisker"' not in svg
    svg = bar_chart("c", "T", ["a", "b"], [("s", [0.5, 0.2], "#000")], vmax=1.0,
                    intervals=[[(0.25, 0.75), None]])
    assert svg.count('class="whisker"') == 1 and "95 % interval 25% to 75%" in svg


# -- the runner, with fakes ----------------------------------------------------------------------


def _eval_reply(messages: list[dict[str, str]]) -> str:
    """Without sources it guesses; with sources it answers from them with a citation."""
    prompt = messages[-1]["content"]
    question = prompt.split("Question:")[-1].lower()
    if "<source" not in prompt:
        return "I am not sure, maybe hourly."
    if "moon" in question:
        return "I could not find this in the documents."
    if "ferry" in question:
        return "The ferry leaves every 40 minutes [1]."
    return "The library opens at 9 in the morning [1]."


@pytest.fixture
def fake_app(tmp_path: Path) -> Iterator[Appliance]:
    app = Appliance(load_settings(home=tmp_path / "home"))
    app._embedder = HashEmbedder()  # type: ignore[assignment]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ferry.md").write_text("# Ferry\n\nThe Kelby ferry leaves every 40 minutes from "
                                   "pier 7.\n", encoding="utf-8")
    (docs / "library.md").write_text("# Library\n\nThe town library opens at 9 in the "
                                     "morning.\n", encoding="utf-8")
    app.ingest([docs], kb="tiny")
    yield app
    app.close()


def eval_set(tmp_path: Path) -> Path:
    rows = [
        {"id": "ferry", "question": "How often does the Kelby ferry leave?",
         "answers": ["every 40 minutes"], "gold_sources": ["ferry.md"]},
        {"id": "library", "question": "When does the town library open?",
         "answers": ["9 in the morning"], "gold_sources": ["library.md"],
         "format": r"^The library opens at \d+"},
        {"id": "moon", "question": "Who painted the moon purple?", "answers": [],
         "answerable": False},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


LOOSE = AnswerSettings(abstain_min_vector=0.2, abstain_min_keyword=1.0)


def test_run_eval_all_modes_resumes_and_refuses_mixing(fake_app: Appliance,
                                                       tmp_path: Path) -> None:
    gens: dict[str, FakeGenerator] = {}

    def loader(model_id: str) -> FakeGenerator:
        return gens.setdefault(model_id, FakeGenerator(_eval_reply, model_id))

    pipe = Pipeline(fake_app, config=LOOSE, loader=loader)  # type: ignore[arg-type]
    data = load_eval_set(eval_set(tmp_path))
    out = tmp_path / "report"
    seen: list[str] = []
    report = run_eval(pipe, data, out, modes=["base", "rag", "ft", "hybrid"], kb="tiny",
                      model=SMOL, ft_model=SMOL, progress=lambda m, d, t: seen.append(m))
    assert set(report["modes"]) == {"base", "rag", "ft", "hybrid"} and "rag" in seen
    for mode in ("base", "rag", "ft", "hybrid"):
        lines = (out / f"answers-{mode}.jsonl").read_text().splitlines()
        assert len(lines) == 3
        first = json.loads(lines[0])
        assert first["mode"] == mode and first["model"] == SMOL
        assert first["extra"]["answers"] == ["every 40 minutes"]
    rag = report["modes"]["rag"]["metrics"]
    base = report["modes"]["base"]["metrics"]
    assert rag["contained"] == 1.0 and base["contained"] == 0.0
    assert rag["citation_precision"] == 1.0 and rag["citation_coverage"] == 1.0
    assert rag["format_compliance"] == 1.0 and base["format_compliance"] == 0.0
    assert report["retrieval"]["hit@1"] == 1.0 and report["retrieval"]["questions"] == 2
    assert report["decision"]["verdict"] in ("rag", "hybrid")
    ctx = json.loads((out / "answers-rag.jsonl").read_text().splitlines()[0])["context"]
    assert any("40 minutes" in t for t in ctx.values())
    assert list(gens) == [SMOL] and len(gens[SMOL].calls) > 0  # one model serves all four modes

    # a killed run: the last record of rag is lost (and the line torn); a rerun redoes only it
    journal = out / "answers-rag.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20], encoding="utf-8")
    again = run_eval(pipe, data, out, modes=["base", "rag", "ft", "hybrid"], kb="tiny",
                     model=SMOL, ft_model=SMOL)
    assert again["modes"]["rag"]["answered_this_run"] == 1
    assert again["modes"]["base"]["answered_this_run"] == 0
    timing = {"p50_ms", "p95_ms", "tokens_per_s"}
    assert {k: v for k, v in again["modes"]["rag"]["metrics"].items() if k not in timing} == {
        k: v for k, v in rag.items() if k not in timing}

    with pytest.raises(InputError, match="holds answers by"):
        run_eval(pipe, data, out, modes=["rag"], kb="tiny",
                 model="qwen2.5-coder-0.5b-instruct-q4_k_m")


def test_run_eval_base_only_without_kb(fake_app: Appliance, tmp_path: Path) -> None:
    pipe = Pipeline(fake_app, config=LOOSE,
                    loader=lambda i: FakeGenerator(_eval_reply, i))  # type: ignore[arg-type,return-value]
    data = load_eval_set(eval_set(tmp_path))
    report = run_eval(pipe, data, tmp_path / "r", modes=["base"], kb="missing", model=SMOL)
    assert report["retrieval"] is None and "Retrieval metrics skipped" in report["notes"][0]
    with pytest.raises(Exception, match="does not exist"):
        run_eval(pipe, data, tmp_path / "r2", modes=["rag"], kb="missing", model=SMOL)


class NoTunedPipeline:
    def model_id(self, mode: str, model: str | None = None) -> str:
        if mode in ("ft", "hybrid") and not model:
            raise ModelNotFoundError("none")
        return model or "plain"


def test_fine_tuned_modes_fail_or_are_skipped_without_a_tuned_model() -> None:
    pipe: Any = NoTunedPipeline()
    with pytest.raises(ModelNotFoundError, match=r"^Mode 'ft' needs a fine-tuned model.*"
                                                 r"--ft-model ID"):
        resolve_models(pipe, ["base", "ft"])
    ids, skipped = resolve_models(pipe, ["base", "rag", "ft", "hybrid"], skip_unavailable=True)
    assert ids == {"base": "plain", "rag": "plain"} and set(skipped) == {"ft", "hybrid"}
    ids, skipped = resolve_models(pipe, ["ft"], ft_model=SMOL)
    assert ids == {"ft": SMOL} and not skipped


# -- BEIR ------------------------------------------------------------------------------------


def beir_fixture(folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    docs = {"d1": ("Ferries", "The Kelby ferry leaves every 40 minutes from pier 7."),
            "d2": ("Library", "The town library opens at 9 in the morning."),
            "d3": ("Bakery", "The bakery on Mill Street sells rye bread and cinnamon buns."),
            "d/4": ("Museum", "The maritime museum shows ship models and old harbour maps.")}
    (folder / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": k, "title": t, "text": x}) + "\n" for k, (t, x) in docs.items()),
        encoding="utf-8")
    queries = {"q1": "how often does the ferry leave", "q2": "when does the library open",
               "q3": "where can I buy cinnamon buns", "q4": "ship models exhibition",
               "q5": "unjudged query"}
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()), encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\nq3\td3\t1\nq4\td/4\t1\nq4\td3\t0\n",
        encoding="utf-8")
    return folder


def test_load_beir(tmp_path: Path) -> None:
    data = load_beir(beir_fixture(tmp_path / "beir"))
    assert len(data.corpus) == 4 and set(data.qrels) == {"q1", "q2", "q3", "q4"}
    assert data.qrels["q2"] == {"d2": 2} and data.qrels["q4"] == {"d/4": 1}
    (tmp_path / "beir" / "qrels" / "test.tsv").write_text("q1\td1\tx\nq1\td1\n")
    with pytest.raises(InputError, match="3 tab-separated"):
        load_beir(tmp_path / "beir")
    with pytest.raises(InputError, match=r"corpus\.jsonl is missing"):
        load_beir(tmp_path)
    qrels = tmp_path / "beir" / "qrels" / "test.tsv"
    qrels.write_text("q1\td1\tinf\n", encoding="utf-8")  # the header rule, then no judgement
    with pytest.raises(InputError, match="judges no query"):
        load_beir(tmp_path / "beir")
    qrels.write_text("q1\td1\t1\nq2\td2\tinf\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2: score 'inf' is not a number"):
        load_beir(tmp_path / "beir")
    qrels.write_text("q1\tnot-in-corpus\t1\n", encoding="utf-8")
    with pytest.raises(InputError, match="only documents missing from corpus"):
        load_beir(tmp_path / "beir")
    corpus = tmp_path / "beir" / "corpus.jsonl"
    original = corpus.read_text(encoding="utf-8")
    corpus.write_text(original + '{"_id": "d1", "text": "again"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="repeats _id 'd1'"):
        load_beir(tmp_path / "beir")
    corpus.write_text(original, encoding="utf-8")
    qrels.write_bytes(b"q1\td1\t1\nq2\td\xff2\t1\n")
    with pytest.raises(InputError, match=r"not UTF-8 text \(line 2\)"):
        load_beir(tmp_path / "beir")


def test_an_eval_set_without_questions_says_why_in_cli_and_api_alike() -> None:
    from appliance.batch import BadRow
    from appliance.evaluate.runner import EvalSet, require_questions

    require_questions(EvalSet(items=[EvalItem(id="q", question="Q?", answers=["a"],
                                              answerable=True)], source="s.jsonl",
                              kind="jsonl"))  # one question: fine
    with pytest.raises(InputError, match="none of its 2 rows can be used"):
        require_questions(EvalSet(items=[], source="s.jsonl", kind="jsonl",
                                  bad_rows=[BadRow(1, "x"), BadRow(2, "y")]))
    with pytest.raises(InputError, match=r"chosen articles \(none\) hold none.*--articles"):
        require_questions(EvalSet(items=[], source="squad.json", kind="squad"))
