"""The feedback store: durable appends, latest rating wins, chat JSONL export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.feedback import FeedbackRecord, FeedbackSource, FeedbackStore, feedback_path
from appliance.generate import BASE_SYSTEM_PROMPT, RAG_SYSTEM_PROMPT
from appliance.types import Answer, Hit


def validate_with_training_validator(path: Path) -> None:
    """The file passes the training-data validator (``appliance.train.data``) with at least
    one example, each ``[system?, user, assistant]``."""
    from appliance.train.data import validate_chat_jsonl

    report = validate_chat_jsonl(path)
    assert report.ok, [str(issue) for issue in report.issues]
    for example in report.examples:
        roles = [m["role"] for m in example.messages]
        assert roles in (["system", "user", "assistant"], ["user", "assistant"]), roles


def _answer(question: str, text: str, mode: str = "rag", abstained: bool = False) -> Answer:
    return Answer(id="q-1", question=question, answer=text, abstained=abstained, citations=[],
                  closest=[], mode=mode, model="fake", timings_ms={}, tokens={},
                  tokens_per_s=0.0)


def _hit(i: int, text: str) -> Hit:
    return Hit(chunk_id=i, path=f"/docs/{i}.md", title="", heading=f"Part {i}", text=text,
               score=0.01)


def test_add_is_durable_and_latest_rating_wins(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    a = _answer("Q?", "A [1].")
    store.add(FeedbackRecord.from_answer(a, rating="good", kb="kb", answer_key="k1",
                                         sources=[_hit(1, "fact one")]))
    store.add(FeedbackRecord.from_answer(a, rating="bad", kb="kb", answer_key="k1",
                                         correction="Better [1]."))
    store.add(FeedbackRecord.from_answer(a, rating="good", kb="other", answer_key="k2"))
    # a line torn by a crash mid-write is skipped
    with open(feedback_path(tmp_path), "a", encoding="utf-8") as fh:
        fh.write('{"answer_key": "k3", "rating": "go')
    latest = FeedbackStore(tmp_path).latest()
    assert [(r.answer_key, r.rating) for r in latest] == [("k1", "bad"), ("k2", "good")]
    assert latest[0].correction == "Better [1]."
    assert [r.answer_key for r in store.latest(kb="other")] == ["k2"]
    assert all(r.created for r in latest)


def test_export_uses_the_pipeline_prompts(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    hits = [_hit(1, "The sky is blue."), _hit(2, "Grass is green.")]
    store.add(FeedbackRecord.from_answer(_answer("Sky colour?", "Blue [1]."), rating="good",
                                         kb="kb", sources=hits))
    store.add(FeedbackRecord.from_answer(_answer("Grass?", "Red [2]."), rating="bad", kb="kb",
                                         sources=hits, correction="Green [2]."))
    store.add(FeedbackRecord.from_answer(_answer("Sun?", "Cold."), rating="bad", kb="kb"))
    store.add(FeedbackRecord.from_answer(_answer("2+2?", "4", mode="base"), rating="good",
                                         kb="kb"))
    # numbered sources that cannot be rebuilt (a gap) are not exported
    store.add(FeedbackRecord.from_answer(
        _answer("Gap?", "Yes [2]."), rating="good", kb="kb",
        sources=[FeedbackSource(2, 9, "/docs/9.md", "", "text")]))
    out = tmp_path / "out" / "train.jsonl"
    report = store.export_chat_jsonl(out)
    assert (report.written, report.skipped_bad, report.skipped_sources) == (3, 1, 1)
    examples = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    first, second, third = examples
    assert first[0] == {"role": "system", "content": RAG_SYSTEM_PROMPT}
    assert '<source id="1" path="/docs/1.md" heading="Part 1">' in first[1]["content"]
    assert '<source id="2"' in first[1]["content"]
    assert "Question: Sky colour?" in first[1]["content"]
    assert first[2] == {"role": "assistant", "content": "Blue [1]."}
    assert second[2]["content"] == "Green [2]."
    assert third == [{"role": "system", "content": BASE_SYSTEM_PROMPT},
                     {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "4"}]
    validate_with_training_validator(out)


def test_export_of_nothing_writes_an_empty_file(tmp_path: Path) -> None:
    out = tmp_path / "empty.jsonl"
    report = FeedbackStore(tmp_path).export_chat_jsonl(out)
    assert report.written == 0 and out.read_text() == ""


def test_cli_export_and_unwritable_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    FeedbackStore(home).add(FeedbackRecord.from_answer(
        _answer("2+2?", "4", mode="base"), rating="good", kb="default"))
    out = tmp_path / "data.jsonl"
    result = CliRunner().invoke(cli, ["feedback", "export", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 1 example to" in result.output
    validate_with_training_validator(out)
    blocked = tmp_path / "file"
    blocked.write_text("")
    from appliance.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["feedback", "export", "-o", str(blocked / "x.jsonl")])
    assert exc.value.code == 2


def test_cli_without_subcommand_prints_help_when_not_a_terminal() -> None:
    result = CliRunner().invoke(cli, [])
    assert result.exit_code == 0
    assert "tui" in result.output and "feedback" in result.output
