"""The TUI against hostile input: control characters, markup, odd links, tiny terminals.

Nothing typed, pasted, answered or read from a document may crash the app, drive the
terminal (escape sequences, bells, NUL) or be read as markup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual import events
from textual.widgets import DataTable, Input, Markdown, TextArea

from appliance.tui import ApplianceTUI, create_app
from appliance.tui.screens import FeedbackScreen, IngestScreen, PickerScreen, SourceScreen
from appliance.tui.sources import printable
from appliance.tui.widgets import CitationLink, QuestionInput
from appliance.types import Answer, Citation, Hit
from tests.tui.conftest import Env, FakeGenerator, StablePipeline
from tests.tui.helpers import ask, open_ingest, settle

pytestmark = pytest.mark.anyio

HOSTILE = "x\x1b[2J\x07\x00\x9b31m[bold]b[/] [@click=app.quit]q[/]"
"""Escape sequences, a bell, NUL, a C1 code and markup (with a stray closing tag)."""


class ScriptedPipeline(StablePipeline):
    """Answers every question with ``reply`` (streamed as one piece) over ``hits``."""

    def __init__(self, *args: Any, reply: str, hits: list[Hit], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reply = reply
        self.hits = hits

    def ask(self, question: str, **kwargs: Any) -> Answer:
        on_token = kwargs.get("on_token")
        if on_token is not None:
            on_token(self.reply)
        self.last_hits = list(self.hits)
        citations = [Citation(n=i, path=h.path, heading=h.heading, chunk_id=h.chunk_id,
                              score=h.score, page=h.page)
                     for i, h in enumerate(self.hits, start=1)]
        return Answer(id="hostile", question=question, answer=self.reply, abstained=False,
                      citations=citations, closest=[], mode=kwargs.get("mode") or "rag",
                      model="fake-gen", timings_ms={"total": 1.0}, tokens={},
                      tokens_per_s=1.0)


def scripted_app(env: Env, reply: str, hits: list[Hit]) -> ApplianceTUI:
    """The app answering ``reply`` with ``hits`` as its sources."""
    pipeline = ScriptedPipeline(env.appliance, loader=lambda mid: FakeGenerator("x", mid),
                                reply=reply, hits=hits)
    return create_app(env.appliance, pipeline=pipeline, mode="rag")


def hostile_hit(chunk_id: int = 1) -> Hit:
    """A source whose path, heading and text are all hostile."""
    return Hit(chunk_id=chunk_id, path=f"docs/{HOSTILE}.md", title="", heading=HOSTILE,
               text=f"{HOSTILE}\n" * 3, score=0.5, page=3)


def terminal_controls(app: ApplianceTUI) -> set[str]:
    """The control characters in what the app would write to the terminal now."""
    update = app.screen._compositor.render_full_update()
    return {
        char
        for strip in update.strips
        for segment in strip
        for char in segment.text
        if ord(char) < 32 or 0x7F <= ord(char) < 0xA0
    }


def test_printable_keeps_text_and_drops_what_drives_the_terminal() -> None:
    assert printable("tab\there\nrtl مرحبا 漢字 😀 [bold]") == "tab\there\nrtl مرحبا 漢字 😀 [bold]"
    assert printable("a\x1b[2J\x07\x00\x9bb\u202ec") == "a\ufffd[2J\ufffd\ufffd\ufffdb\ufffdc"
    assert printable("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert printable("a\nb\tc", one_line=True) == "a b c"


async def test_control_characters_in_question_answer_and_sources_never_reach_the_terminal(
    env: Env,
) -> None:
    app = scripted_app(env, reply=f"{HOSTILE} [1]", hits=[hostile_hit()])
    async with app.run_test(size=(120, 40)) as pilot:
        view = await ask(pilot, HOSTILE)
        assert view.data.answer is not None and view.data.sources
        assert terminal_controls(app) == set()
        text = str(view.query_one(".question").render())
        assert "[bold]b[/] [@click=app.quit]q[/]" in text  # markup shown as it is
        view.query_one(CitationLink).focus()
        await pilot.press("enter")
        assert isinstance(app.screen, SourceScreen)
        assert terminal_controls(app) == set()
        await pilot.press("escape")
        assert app.is_running and not isinstance(app.screen, SourceScreen)


async def test_pasted_control_characters_and_line_breaks_are_cleaned(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        box = app.main.query_one(QuestionInput)
        box.post_message(events.Paste("red\x1b[31m\x00 alert\x07"))
        await pilot.pause()
        assert box.value == "red\ufffd[31m\ufffd alert\ufffd"
        assert box.cursor_position == len(box.value)
        box.value = "tab\tand\x1b[2J"  # as the history would set it
        assert box.value == "tab and\ufffd[2J"
        assert terminal_controls(app) == set()


async def test_answer_links_to_bad_citation_targets_do_nothing(env: Env) -> None:
    reply = "See [a](cite:abc), [b](cite:), [c](cite:-1) and [d](cite:1e9) [1]."
    hit = Hit(chunk_id=1, path="docs/a.md", title="", heading="A", text="a", score=0.5)
    app = scripted_app(env, reply=reply, hits=[hit])
    async with app.run_test(size=(100, 30)) as pilot:
        view = await ask(pilot, "links?")
        for href in ["cite:abc", "cite:", "cite:-1", "cite:1e9", "cite:" + "9" * 5000,
                     "cite:١", "app.quit"]:
            view.markdown.post_message(Markdown.LinkClicked(view.markdown, href))
            await pilot.pause()
            assert app.is_running, href
            assert not isinstance(app.screen, SourceScreen), href
        view.markdown.post_message(Markdown.LinkClicked(view.markdown, "cite:99"))
        await pilot.pause()
        assert isinstance(app.screen, SourceScreen)  # says [99] is not among the sources


async def test_ingest_report_shows_markup_in_file_paths_literally(
    env: Env, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    folder = corpus / "a["  # with its file: "a[/x].md", a stray closing tag
    folder.mkdir(parents=True)
    (folder / "x].md").write_text("# X\n\nSome text about x.\n", encoding="utf-8")
    (corpus / "[@click=app.quit]q.md").write_text("# Q\n\nQuit.\n", encoding="utf-8")
    app = env.app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = await open_ingest(pilot)
        screen.query_one("#ingest-path", Input).value = str(corpus)
        await pilot.press("enter")
        await settle(pilot)
        assert app.is_running
        report = app.last_ingest
        assert report is not None and report.added == 2 and not report.failed
        table: DataTable[Any] = screen.query_one(DataTable)
        cells = [table.get_row_at(i)[1] for i in range(table.row_count)]
        plain = [c.plain if isinstance(c, Text) else c for c in cells]
        assert any(p.endswith("a[/x].md") for p in plain)
        assert any(p.endswith("[@click=app.quit]q.md") for p in plain)


@pytest.mark.parametrize("size", [(1, 1), (5, 40), (20, 5)])
async def test_every_key_in_a_tiny_terminal(env: Env, size: tuple[int, int]) -> None:
    app = env.app()
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press("f2")
        assert isinstance(app.screen, PickerScreen)
        for key in ["escape", "f3", "escape", "f4", "escape", "f1", "escape", "f5", "escape",
                    "f6", "f6", "f7", "ctrl+l"]:
            await pilot.press(key)
            await pilot.pause()
            assert app.is_running, key
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        view = await ask(pilot, "How hot should the water be for green tea?")
        assert view.data.answer is not None
        await pilot.resize_terminal(*size)
        for key in ["f2", "enter", "f7", "escape", "f6", "escape"]:
            await pilot.press(key)
            await pilot.pause()
            assert app.is_running, key


async def test_ingest_from_a_dialog_over_the_ingest_screen_does_not_stack_it_twice(
    env: Env,
) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("f5")
        app.action_pick_mode()  # as the command palette does from the ingest screen
        await pilot.pause()
        assert isinstance(app.screen, PickerScreen)
        app.action_ingest()
        await pilot.pause()
        assert isinstance(app.screen, IngestScreen)
        assert sum(isinstance(s, IngestScreen) for s in app.screen_stack) == 1
        await pilot.press("escape")
        assert app.screen is app.main


async def test_control_characters_pasted_in_a_correction_are_cleaned(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await ask(pilot, "How hot should the water be for green tea?")
        await pilot.press("f7")
        assert isinstance(app.screen, FeedbackScreen)
        area = app.screen.query_one(TextArea)
        area.focus()
        area.post_message(events.Paste("Use\x1b[2J 80\x00 degrees.\x07\nSecond line."))
        await pilot.pause()
        assert "Use\ufffd[2J 80\ufffd degrees.\ufffd\nSecond line." in area.text
        assert terminal_controls(app) == set()
