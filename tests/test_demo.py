"""The demo command and the answer footer it shares with ``ask``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.cli.answer import timing_line
from appliance.demo import SAMPLE_QUESTIONS
from appliance.types import FLAG_NOTES, Answer, Citation, unique_sections
from tests.conftest import run_cli, unwrapped

SMOL = "smollm2-135m-instruct-q4_1"


def _answer(**kw: Any) -> Answer:
    base: dict[str, Any] = dict(
        id="q1", question="q?", answer="x [1]", abstained=False, citations=[], closest=[],
        mode="hybrid", model="m", timings_ms={"embed": 2.0, "search": 3.0, "generate": 1500.0,
                                               "total": 1510.0},
        tokens={"prompt": 10, "completion": 30}, tokens_per_s=20.0, flags=[])
    base.update(kw)
    return Answer(**base)


def _cite(n: int, path: str, heading: str, page: int | None = None) -> Citation:
    return Citation(n=n, path=path, heading=heading, chunk_id=n, score=0.5, page=page)


def test_timing_line_says_why_nothing_was_generated() -> None:
    line = timing_line(_answer())
    assert line.replace("\u00a0", " ").endswith("(search 5 ms, generate 1.5 s) · 20.0 tokens/s")
    assert "20.0\u00a0tokens/s" in line  # a narrow terminal never wraps inside a measurement
    skipped = _answer(abstained=True, flags=["abstained:retrieval"],
                      tokens={"prompt": 0, "completion": 0}, tokens_per_s=0.0)
    line = timing_line(skipped)
    assert "tokens/s" not in line and "no passage scored close enough" in line
    empty = _answer(abstained=True, flags=["abstained:no_hits"],
                    tokens={"prompt": 0, "completion": 0}, tokens_per_s=0.0)
    assert "returned no passage" in timing_line(empty)


def test_answer_meta_puts_the_reason_first_as_the_cli_words_it() -> None:
    from appliance.tui.widgets import answer_meta

    skipped = _answer(abstained=True, flags=["abstained:retrieval"])
    assert answer_meta(skipped) == ("not generated: no passage scored close enough to the "
                                    "question · hybrid · m")
    assert FLAG_NOTES["abstained:retrieval"] in timing_line(skipped)  # the same words
    by_model = _answer(abstained=True, flags=["abstained:model"])
    assert answer_meta(by_model) == "abstained · hybrid · m"
    looped = _answer(flags=["stopped:loop", "max_tokens"])
    assert answer_meta(looped) == ("stopped: the model began repeating itself · cut off at "
                                   "the token limit · hybrid · m")


def test_closest_sources_list_each_section_once() -> None:
    answer = _answer(abstained=True, closest=[
        _cite(1, "/d/a.rst", "A > B"), _cite(2, "/d/a.rst", "A > B"),
        _cite(3, "/d/m.pdf", "Intro", page=3), _cite(4, "/d/m.pdf", "Intro", page=4),
        _cite(5, "/d/a.rst", "A > C")])
    assert [c.n for c in unique_sections(answer.closest)] == [1, 3, 4, 5]


def test_demo_answers_with_citations_and_admits_what_the_corpus_lacks(
        demo_kb: tuple[Any, Path], shared_home: Path) -> None:
    _, corpus = demo_kb
    proc = run_cli("demo", "--kb", "demo", "--corpus", str(corpus), "--answers", "4",
                   "--model", SMOL, home=shared_home, check=True, prefix=("unshare", "-rn"))
    text = unwrapped(proc.stdout)
    assert "0 added, 0 updated, 79 unchanged" in text  # the shared KB, nothing re-embedded
    for q in SAMPLE_QUESTIONS[:4]:
        assert f"? {q}" in text
    assert SAMPLE_QUESTIONS[4] not in text
    assert "[1] " in text or "[2] " in text  # a cited source, listed under its answer
    after = text.split(f"? {SAMPLE_QUESTIONS[3]}", 1)[1]
    assert "I could not find this in the documents." in after
    assert "Closest sources:" in after and "not generated" in after
