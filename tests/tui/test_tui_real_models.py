"""End to end with the real models: the ONNX embedder and SmolLM2 through llama.cpp, loaded
by the default loader (hash-checked), over a knowledge base made in tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.api import Appliance
from appliance.config import load_settings
from appliance.feedback import FeedbackStore
from appliance.tui import create_app
from appliance.tui.widgets import ExchangeView
from tests.tui.conftest import CORPUS, QUESTION, SMALL_MODEL
from tests.tui.helpers import ask, settle
from tests.tui.test_tui_feedback import validate_with_training_validator

pytestmark = [pytest.mark.anyio, pytest.mark.integration]


async def test_real_models_answer_stream_and_feedback_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    for rel, text in CORPUS.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APPLIANCE_GENERATE__MAX_TOKENS", "64")  # a short answer is enough
    appliance = Appliance(load_settings(home=tmp_path / "home"))
    app = create_app(appliance, model=SMALL_MODEL, mode="rag")  # real llama.cpp
    streamed: list[str] = []
    async with app.run_test(size=(100, 30)) as pilot:
        # Ingest from the screen into a new knowledge base, then ask it.
        await settle(pilot)
        await pilot.press("f5")
        screen = pilot.app.screen
        screen.query_one("#ingest-path").value = "docs"  # type: ignore[attr-defined]
        await pilot.click("#ingest-start")
        await pilot.pause(0.2)
        await settle(pilot)
        assert app.last_ingest is not None and app.last_ingest.added == 3
        await pilot.press("escape")
        await settle(pilot)
        assert "3 docs" in app.status.kb_text
        original = ExchangeView.append

        async def spy(view: ExchangeView, piece: str) -> None:
            streamed.append(piece)
            await original(view, piece)

        monkeypatch.setattr(ExchangeView, "append", spy)
        view = await ask(pilot, QUESTION)
        answer = view.data.answer
        assert answer is not None, "no answer"
        assert answer.model == SMALL_MODEL and answer.mode == "rag"
        assert answer.answer.strip()
        if not answer.abstained:
            assert len(streamed) > 1  # tokens arrived one by one
            assert view.markdown.source.strip()
        assert answer.timings_ms["total"] > 0
        assert "tok/s" in app.status.answer_text or answer.abstained
        assert app.status.model_text == SMALL_MODEL
        await pilot.click(view.query_one(".good"))
        await settle(pilot)
    app.pipeline.close()
    appliance.close()
    out = tmp_path / "feedback.jsonl"
    report = FeedbackStore(tmp_path / "home").export_chat_jsonl(out)
    assert report.written == 1
    validate_with_training_validator(out)
    example = json.loads(out.read_text())
    assert example["messages"][-1]["content"] == answer.answer
