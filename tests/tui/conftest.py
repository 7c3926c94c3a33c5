"""Fixtures of the TUI tests: a tiny knowledge base built once with the real embedder, a
deterministic generator, and a pipeline whose timings are fixed (stable snapshots)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.api import Appliance
from appliance.config import load_settings
from appliance.pipeline import Pipeline
from appliance.tui import ApplianceTUI, create_app
from appliance.types import Answer, IngestReport
from tests.conftest import packaged_without_built_models
from tests.fakes import FakeGenerator

CORPUS = {
    "docs/tea.md": (
        "# Tea\n\n## Brewing green tea\n\n"
        "Green tea leaves come from the Camellia sinensis plant. Green tea is brewed with "
        "water at 80 degrees Celsius for two minutes. Boiling water makes green tea taste "
        "bitter.\n\n"
        "## Black tea\n\nBlack tea needs boiling water and four minutes of steeping.\n"
    ),
    "docs/coffee.md": (
        "# Coffee\n\n## Espresso\n\n"
        "An espresso is made by forcing hot water at nine bars of pressure through finely "
        "ground coffee for about 25 seconds.\n"
    ),
    "docs/bread.md": (
        "# Bread\n\n## Sourdough\n\n"
        "Sourdough bread rises with a starter of wild yeast and lactic acid bacteria. A loaf "
        "proofs for about twelve hours before baking.\n"
    ),
}

QUESTION = "How hot should the water be for green tea?"
REPLY = "Brew green tea with water at **80 degrees Celsius** for two minutes [1]."
SMALL_MODEL = "smollm2-135m-instruct-q4_1"


class StablePipeline(Pipeline):
    """The real pipeline with the record's timings fixed, so snapshots do not vary."""

    def ask(self, question: str, **kwargs: Any) -> Answer:
        answer = super().ask(question, **kwargs)
        answer.timings_ms = {"embed": 6.0, "search": 2.0, "prompt": 1.0, "generate": 240.0,
                             "total": 250.0}
        answer.tokens_per_s = 50.0
        return answer


class StableAppliance(Appliance):
    """The real appliance with an ingest report's seconds fixed, for the same reason."""

    def ingest(self, *args: Any, **kwargs: Any) -> IngestReport:
        report = super().ingest(*args, **kwargs)
        report.seconds = 1.5
        return report


@dataclass
class Env:
    """One test's data directory (a copy of the shared one) and working directory."""

    home: Path
    work: Path
    appliance: Appliance

    def app(self, reply: str = REPLY, **kwargs: Any) -> ApplianceTUI:
        """The app over this environment, answering with the fake generator.

        The mode is ``rag`` unless given: the default mode depends on whether setup has
        built the packaged fine-tuned model, and snapshots must not."""
        pipeline = StablePipeline(self.appliance, loader=lambda mid: FakeGenerator(reply, mid))
        kwargs.setdefault("mode", "rag")
        return create_app(self.appliance, pipeline=pipeline, **kwargs)


@pytest.fixture(scope="session")
def tui_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``work/docs`` (the corpus) and ``home`` (knowledge base 'default')."""
    base = tmp_path_factory.mktemp("tui")
    for rel, text in CORPUS.items():
        path = base / "work" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    app = Appliance(load_settings(home=base / "home"))
    report = app.ingest([base / "work" / "docs"], kb="default")
    assert report.added == 3 and not report.failed, report.to_json()
    app.close()
    return base


@pytest.fixture
def env(tui_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A private copy of the data directory; the corpus folder is the working directory,
    so the app shows paths like ``docs/tea.md`` (no temporary paths on screen)."""
    home = tmp_path / "home"
    shutil.copytree(tui_base / "home", home, dirs_exist_ok=True)
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    # No fine-tuned model, whether or not setup built one: the tests register their own.
    monkeypatch.setenv("APPLIANCE_MODELS_DIR",
                       str(packaged_without_built_models(tmp_path / "models")))
    monkeypatch.chdir(tui_base / "work")
    appliance = StableAppliance(load_settings(home=home))
    yield Env(home=home, work=tui_base / "work", appliance=appliance)
    appliance.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
