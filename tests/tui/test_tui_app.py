"""Pilot-driven tests of the terminal UI (fake generator, real embedder, tiny knowledge base)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Button, DataTable, Input, Markdown, OptionList, Static, TextArea

from appliance.feedback import FeedbackStore
from appliance.tui.screens import (
    ErrorDialog,
    FeedbackScreen,
    HelpScreen,
    IngestScreen,
    PickerScreen,
    SourceScreen,
)
from appliance.tui.widgets import CitationLink, ExchangeView, QuestionInput, SourcesPanel
from tests.tui.conftest import QUESTION, SMALL_MODEL, Env, FakeGenerator, StablePipeline
from tests.tui.helpers import ask, open_ingest, settle

pytestmark = pytest.mark.anyio


async def test_question_is_focused_and_answer_cites_a_source(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert isinstance(app.focused, QuestionInput)
        assert "3 docs" in app.status.kb_text
        view = await ask(pilot, QUESTION)
        answer = view.data.answer
        assert answer is not None and not answer.abstained
        assert "80 degrees Celsius" in view.markdown.source
        assert "(cite:1)" in view.markdown.source  # [1] became a link
        links = list(view.query(CitationLink))
        assert [link.n for link in links] == [1]
        assert view.data.sources[0].path.endswith("tea.md")
        assert answer.citations[0].path.endswith("tea.md")
        panel = app.main.query_one(SourcesPanel)
        assert panel.query_one(OptionList).option_count >= 1
        assert "50.0 tok/s" in app.status.answer_text
        assert "gen 240 ms" in app.status.answer_text
        assert isinstance(app.focused, QuestionInput)  # ready for the next question


async def test_opening_a_citation_shows_the_chunk_with_the_passage_highlighted(
    env: Env,
) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        view = await ask(pilot, QUESTION)
        await pilot.click(CitationLink)
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SourceScreen)
        title = str(screen.query_one("#source-title", Static).render())
        assert "docs/tea.md" in title
        body = screen.query_one("#source-text", Static).render()
        text = getattr(body, "plain", str(body))
        assert "80 degrees Celsius" in text
        claim = str(screen.query_one("#source-claim", Static).render())
        assert "80 degrees Celsius" in claim
        await pilot.press("escape")
        assert not isinstance(app.screen, SourceScreen)
        # By keyboard: focus the citation and press Enter.
        view.query_one(CitationLink).focus()
        await pilot.press("enter")
        assert isinstance(app.screen, SourceScreen)
        await pilot.press("escape")
        # A click on the [1] link inside the answer's Markdown.
        await pilot.press("escape")
        view.markdown.post_message(Markdown.LinkClicked(view.markdown, "cite:1"))
        await pilot.pause()
        assert isinstance(app.screen, SourceScreen) and app.screen.n == 1
        await pilot.press("escape")
        # From the sources panel: Enter on a source.
        app.main.query_one("#source-list", OptionList).focus()
        await pilot.press("enter")
        assert isinstance(app.screen, SourceScreen)


async def test_highlighted_passage_is_the_cited_sentence(env: Env) -> None:
    from appliance.tui.sources import cited_passage

    chunk = (
        "Green tea leaves come from the Camellia sinensis plant. Green tea is brewed with "
        "water at 80 degrees Celsius for two minutes. Boiling water makes it bitter."
    )
    span = cited_passage(chunk, ["Brew green tea with water at 80 degrees Celsius [1]."])
    assert span is not None
    assert chunk[span[0]:span[1]].startswith("Green tea is brewed with water at 80")


async def test_history_up_and_down(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ask(pilot, "first question about tea")
        await ask(pilot, "second question about coffee")
        box = app.main.query_one(QuestionInput)
        box.focus()
        box.value = "draft"
        await pilot.press("up")
        assert box.value == "second question about coffee"
        await pilot.press("up")
        assert box.value == "first question about tea"
        await pilot.press("up")
        assert box.value == "first question about tea"
        await pilot.press("down", "down")
        assert box.value == "draft"

    # The history outlives the session (a torn last line from a crash is skipped).
    history = env.home / "tui" / "history.jsonl"
    with history.open("a", encoding="utf-8") as fh:
        fh.write('{"question": "torn')
    again = env.app()
    async with again.run_test(size=(100, 30)) as pilot:
        box = again.main.query_one(QuestionInput)
        assert box.history == ["first question about tea", "second question about coffee"]
        box.focus()
        await pilot.press("up")
        assert box.value == "second question about coffee"


async def test_ingest_a_folder_from_the_screen_while_chat_stays_usable(
    env: Env, tmp_path: Path,
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "kettle.md").write_text(
        "# Kettles\n\nA kettle boils one litre of water in about three minutes.\n")
    (notes / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = await open_ingest(pilot)
        assert isinstance(app.focused, Input) and app.focused.id == "ingest-path"
        await pilot.press(*str(notes))
        screen.query_one("#ingest-kb", Input).value = "notes"
        await pilot.click("#ingest-start")
        await pilot.press("escape")  # back to the chat while it runs
        assert not isinstance(app.screen, IngestScreen)
        view = await ask(pilot, QUESTION)  # the chat works meanwhile
        assert view.data.answer is not None
        await settle(pilot)
        report = app.last_ingest
        assert report is not None
        assert report.added == 1 and len(report.failed) == 1
        assert "notes" in app.appliance.list_kbs()
        await pilot.press("f5")
        assert app.screen is screen
        table = screen.query_one(DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert any(r[0] == "✓" and str(r[1]).endswith("kettle.md") for r in rows), rows
        assert any(r[0] == "✗" and str(r[1]).endswith("broken.pdf") for r in rows), rows
        summary = str(screen.query_one("#ingest-summary", Static).render())
        assert "1 added" in summary and "1 failed" in summary


async def test_ingest_of_a_missing_folder_shows_an_error_dialog(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        await pilot.press(*"no/such/folder", "enter")
        await settle(pilot)
        assert isinstance(app.screen, ErrorDialog)
        assert "does not exist" in app.screen.message


async def test_feedback_good_bad_corrected_then_export_validates(env: Env, tmp_path: Path) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        first = await ask(pilot, QUESTION)
        await pilot.click(first.query_one(".good", Button))
        await settle(pilot)
        assert first.data.rating == "good"

        second = await ask(pilot, "How long does sourdough proof?")
        await pilot.click(second.query_one(".bad", Button))
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, FeedbackScreen)
        assert isinstance(app.focused, TextArea)
        app.focused.insert("A sourdough loaf proofs for about twelve hours [1].")
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert second.data.rating == "bad"

        await ask(pilot, "What is an espresso?")
        await pilot.press("f7")  # feedback on the last answer: mark it bad, no correction
        await pilot.pause()
        assert isinstance(app.screen, FeedbackScreen)
        await pilot.click("#rate-bad")
        await pilot.click("#feedback-save")
        await settle(pilot)

    records = FeedbackStore(env.home).latest()
    assert [r.rating for r in records] == ["good", "bad", "bad"]
    assert records[1].correction.startswith("A sourdough loaf")
    assert records[0].sources and records[0].sources[0].path.endswith("tea.md")

    out = tmp_path / "export.jsonl"
    from click.testing import CliRunner

    from appliance.cli import cli

    result = CliRunner().invoke(cli, ["feedback", "export", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["written"] == 2 and report["skipped_bad"] == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert "80 degrees Celsius" in lines[0]["messages"][1]["content"]  # the numbered source
    assert lines[1]["messages"][-1]["content"].startswith("A sourdough loaf")
    from tests.tui.test_tui_feedback import validate_with_training_validator

    validate_with_training_validator(out)


async def test_switch_mode_model_and_knowledge_base(env: Env) -> None:
    env.appliance.ingest([env.work / "docs" / "bread.md"], kb="bakery")
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.mode == "rag"
        # mode: base
        await pilot.press("f2")
        assert isinstance(app.screen, PickerScreen)
        picker = app.screen.query_one(OptionList)
        picker.highlighted = [o.id for o in picker._options].index("base")
        await pilot.press("enter")
        await settle(pilot)
        assert app.mode == "base" and app.status.mode_text == "mode base"
        view = await ask(pilot, QUESTION)
        assert view.data.answer is not None and view.data.answer.mode == "base"
        assert view.data.sources == []
        # hybrid needs a fine-tuned model: an error dialog, the mode stays
        await pilot.press("f2")
        picker = app.screen.query_one(OptionList)
        picker.highlighted = [o.id for o in picker._options].index("hybrid")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, ErrorDialog)
        assert "fine-tuned" in app.screen.message
        await pilot.press("escape")
        assert app.mode == "base"
        # model
        await pilot.press("f3")
        picker = app.screen.query_one(OptionList)
        picker.highlighted = [o.id for o in picker._options].index(SMALL_MODEL)
        await pilot.press("enter")
        await settle(pilot)
        assert app.model == SMALL_MODEL and app.status.model_text == SMALL_MODEL
        view = await ask(pilot, QUESTION)
        assert view.data.answer is not None and view.data.answer.model == SMALL_MODEL
        # knowledge base
        await pilot.press("f4")
        picker = app.screen.query_one(OptionList)
        picker.highlighted = [o.id for o in picker._options].index("bakery")
        await pilot.press("enter")
        await settle(pilot)
        assert app.kb == "bakery" and "1 docs" in app.status.kb_text


async def test_missing_knowledge_base_is_an_error_dialog(env: Env) -> None:
    app = env.app(kb="nowhere")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert "missing" in app.status.kb_text
        await ask(pilot, QUESTION)
        assert isinstance(app.screen, ErrorDialog)
        assert "nowhere" in app.screen.message
        await pilot.press("enter")
        assert not isinstance(app.screen, ErrorDialog)
        view = list(app.main.query(ExchangeView))[-1]
        assert view.has_class("-failed")


async def test_help_and_narrow_terminal(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("escape")
        main = app.main
        assert main.has_class("-narrow")
        sources = main.query_one(SourcesPanel)
        assert not sources.display or sources.size.width == 0
        await ask(pilot, QUESTION)
        await pilot.press("f6")
        await pilot.pause()
        assert sources.size.width > 0
        assert main.query_one("#chat-column").size.width == 0
        await pilot.press("f6")
        await pilot.pause()
        assert main.query_one("#chat-column").size.width > 0


class SlowGenerator(FakeGenerator):
    def stream(self, messages: list[dict[str, str]], max_tokens: int,
               first_token_bias: Any = None) -> Iterator[str]:
        for piece in super().stream(messages, max_tokens, first_token_bias):
            time.sleep(0.05)
            yield piece


async def test_escape_stops_the_answer(env: Env) -> None:
    reply = " ".join(["word"] * 200)
    pipeline = StablePipeline(env.appliance, loader=lambda mid: SlowGenerator(reply, mid))
    from appliance.tui import create_app

    app = create_app(env.appliance, pipeline=pipeline, mode="rag")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        box = app.main.query_one(QuestionInput)
        box.value = QUESTION
        await pilot.press("enter")
        view = list(app.main.query(ExchangeView))[-1]
        for _ in range(200):  # until the first words arrived
            await pilot.pause(0.05)
            if "word" in view.markdown.source:
                break
        assert app.asking
        await pilot.press("escape")
        await settle(pilot)
        assert not app.asking
        assert view.data.answer is None and view.has_class("-failed")
        assert 0 < view.markdown.source.count("word") < 200


async def test_picking_a_folder_in_the_tree_fills_the_path(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f5")
        screen = app.screen
        tree = screen.query_one("#ingest-tree")
        tree.focus()
        for _ in range(20):  # the tree loads its folder in the background
            await pilot.pause(0.05)
            if tree.last_line >= 1:  # type: ignore[attr-defined]
                break
        await pilot.press("down", "enter")
        await pilot.pause()
        assert screen.query_one("#ingest-path", Input).value == "docs"
