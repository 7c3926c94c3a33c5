"""Pilot helpers shared by the TUI tests."""

from __future__ import annotations

from textual.pilot import Pilot

from appliance.tui import ApplianceTUI
from appliance.tui.screens import IngestScreen
from appliance.tui.widgets import ExchangeView, QuestionInput


async def settle(pilot: Pilot[None]) -> None:
    """Wait until the app's own workers finished and the screen caught up (Textual's
    internal workers, such as the directory tree's loader, run for ever)."""
    for _ in range(3):
        mine = [w for w in pilot.app.workers if not w.group.startswith("_")]
        if mine:
            await pilot.app.workers.wait_for_complete(mine)
        await pilot.pause()


async def submit(pilot: Pilot[None], question: str) -> ExchangeView:
    """Type ``question`` and press Enter, without waiting for the answer; returns its view."""
    app = pilot.app
    assert isinstance(app, ApplianceTUI)
    box = app.main.query_one(QuestionInput)
    box.focus()
    box.value = question
    await pilot.press("enter")
    await pilot.pause()
    return list(app.main.query(ExchangeView))[-1]


async def ask(pilot: Pilot[None], question: str) -> ExchangeView:
    """Type ``question``, press Enter, wait for the answer; returns its view."""
    view = await submit(pilot, question)
    await settle(pilot)
    return view


async def open_ingest(pilot: Pilot[None]) -> IngestScreen:
    """Press F5 and return the ingest screen it opens."""
    await pilot.press("f5")
    screen = pilot.app.screen
    assert isinstance(screen, IngestScreen)
    return screen
