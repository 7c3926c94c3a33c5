"""Snapshots of the main screens at a fixed terminal size (fake generator, fixed timings;
paths are shown relative to the working directory, so no temporary path appears).

Update after an intended change with ``pytest tests/tui --snapshot-update`` and review the
SVG files under ``__snapshots__``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot
from textual.widgets import Input

from appliance.tui.widgets import CitationLink
from tests.tui.conftest import QUESTION, Env
from tests.tui.helpers import ask, settle

SIZE = (100, 30)
Snap = Callable[..., bool]


async def _answered(pilot: Pilot[None]) -> None:
    await settle(pilot)
    await ask(pilot, QUESTION)


def test_start(env: Env, snap_compare: Snap) -> None:
    """The chat as it opens: question box focused, status bar, footer."""
    assert snap_compare(env.app(), terminal_size=SIZE, run_before=settle)


def test_answer_with_sources(env: Env, snap_compare: Snap) -> None:
    """An answer with its citation, the sources panel and the status bar's time split."""
    assert snap_compare(env.app(), terminal_size=SIZE, run_before=_answered)


def test_citation_opened(env: Env, snap_compare: Snap) -> None:
    """A cited source in full, the passage the answer cites highlighted."""

    async def run(pilot: Pilot[None]) -> None:
        await _answered(pilot)
        await pilot.click(CitationLink)
        await pilot.pause()

    assert snap_compare(env.app(), terminal_size=SIZE, run_before=run)


def test_help(env: Env, snap_compare: Snap) -> None:
    assert snap_compare(env.app(), terminal_size=SIZE, press=["f1"], run_before=settle)


def test_feedback_dialog(env: Env, snap_compare: Snap) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await _answered(pilot)
        await pilot.press("f7")
        await pilot.pause()

    assert snap_compare(env.app(), terminal_size=SIZE, run_before=run)


def test_ingest_done(env: Env, snap_compare: Snap) -> None:
    """The ingest screen after ingesting the corpus folder into a new knowledge base."""

    async def run(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("f5")
        screen = pilot.app.screen
        screen.query_one("#ingest-path", Input).value = "docs"
        screen.query_one("#ingest-kb", Input).value = "snapshot"
        await pilot.click("#ingest-start")
        await pilot.pause(0.2)
        await settle(pilot)
        pilot.app.clear_notifications()
        screen.query_one("#ingest-path", Input).focus()
        await pilot.pause()

    assert snap_compare(env.app(), terminal_size=SIZE, run_before=run)


def test_narrow_terminal(env: Env, snap_compare: Snap) -> None:
    """80x24: the chat alone (F6 swaps in the sources)."""
    assert snap_compare(env.app(), terminal_size=(80, 24), run_before=_answered)


def test_error_dialog(env: Env, snap_compare: Snap, tmp_path: Path) -> None:
    async def run(pilot: Pilot[None]) -> None:
        await settle(pilot)
        await pilot.press("f2")
        await pilot.pause()
        await pilot.press("end", "enter")  # hybrid: no fine-tuned model registered
        await pilot.pause()

    assert snap_compare(env.app(), terminal_size=SIZE, run_before=run)
