"""First-time-user UX of the terminal UI: the next step when the knowledge base is missing
or empty, streaming without freezing, stopping with Esc or Ctrl+C, quitting while a model
or an ingest is busy, and the CLI's wording for abstentions and cut-off answers."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Label, ProgressBar, Static
from textual.widgets.input import Selection
from textual.worker import WorkerCancelled

from appliance.errors import Interrupted
from appliance.generate.prompt import ABSTAIN_SENTENCE
from appliance.tui import ApplianceTUI, create_app
from appliance.tui.app import STREAM_INTERVAL
from appliance.tui.screens import ErrorDialog, HelpScreen, _help_table
from appliance.tui.sources import SourceView
from appliance.tui.widgets import (
    CitationLink,
    ExchangeView,
    QuestionInput,
)
from appliance.types import FLAG_NOTES, NOT_GENERATED, unique_sections
from tests.tui.conftest import QUESTION, SMALL_MODEL, Env, FakeGenerator, StablePipeline
from tests.tui.helpers import ask, open_ingest, settle, submit

pytestmark = pytest.mark.anyio


def _welcome(app: ApplianceTUI) -> str:
    return str(app.main.query_one("#welcome", Static).render())


def _notes(app: ApplianceTUI) -> list[str]:
    return [n.message for n in app._notifications]


class PacedGenerator(FakeGenerator):
    """The fake generator with a pause before the first token (a model reading a long
    prompt) and between tokens; ``finished`` is set once its stream has ended."""

    def __init__(self, reply: str, model_id: str, *, first: float = 0.0,
                 each: float = 0.0) -> None:
        super().__init__(reply, model_id)
        self.first = first
        self.each = each
        self.yielded = 0
        self.started = threading.Event()
        self.finished = threading.Event()

    def stream(self, messages: list[dict[str, str]], max_tokens: int,
               first_token_bias: Any = None) -> Iterator[str]:
        self.started.set()
        try:
            time.sleep(self.first)
            for piece in super().stream(messages, max_tokens, first_token_bias):
                time.sleep(self.each)
                self.yielded += 1
                yield piece
        finally:
            self.finished.set()


class InterruptibleGenerator(PacedGenerator):
    """A paced generator that, like ``LlamaGenerator``, can be interrupted while it still
    reads the prompt: :meth:`interrupt` ends the wait with Interrupted."""

    def __init__(self, reply: str, model_id: str, **pace: float) -> None:
        super().__init__(reply, model_id, **pace)
        self.abort = threading.Event()

    def interrupt(self) -> None:
        self.abort.set()

    def stream(self, messages: list[dict[str, str]], max_tokens: int,
               first_token_bias: Any = None) -> Iterator[str]:
        self.started.set()
        try:
            if self.abort.wait(self.first):
                raise Interrupted("stopped")
            yield from FakeGenerator.stream(self, messages, max_tokens, first_token_bias)
        finally:
            self.finished.set()


def _paced_app(env: Env, reply: str, interruptible: bool = False,
               **pace: float) -> tuple[ApplianceTUI, list[PacedGenerator]]:
    made: list[PacedGenerator] = []

    def load(mid: str) -> PacedGenerator:
        kind = InterruptibleGenerator if interruptible else PacedGenerator
        made.append(kind(reply, mid, **pace))
        return made[-1]

    pipeline = StablePipeline(env.appliance, loader=load)
    return create_app(env.appliance, pipeline=pipeline, mode="rag"), made


async def _until(pilot: Pilot[None], done: Callable[[], bool], seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.02)


# -- the next step when there is nothing to ask ------------------------------------------------


async def test_missing_knowledge_base_welcome_and_error_say_press_f5(env: Env) -> None:
    app = env.app(kb="nowhere")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        welcome = _welcome(app)
        assert "'nowhere' does not exist yet" in welcome and "press F5" in welcome
        assert "missing: F5 to ingest" in app.status.kb_text
        await ask(pilot, QUESTION)
        assert isinstance(app.screen, ErrorDialog)
        # The TUI's next step is a key, not the CLI command the core's message names.
        assert "press F5" in app.screen.message and "'nowhere'" in app.screen.message
        assert "appliance ingest" not in app.screen.message


async def test_empty_knowledge_base_says_so_until_a_folder_is_ingested(env: Env) -> None:
    with env.appliance.open_kb("fresh", create=True):
        pass
    app = env.app(kb="fresh")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        assert "'fresh' has no documents yet" in _welcome(app)
        assert app.status.kb_text == "KB fresh · empty: F5 to ingest"
        await pilot.press("ctrl+l")  # clearing the chat keeps the hint
        await pilot.pause()
        assert "has no documents yet" in _welcome(app)
        await pilot.press("f5")
        app.screen.query_one("#ingest-path", Input).value = str(env.work / "docs" / "tea.md")
        await pilot.click("#ingest-start")
        await settle(pilot)
        await pilot.press("escape")
        assert app.status.kb_text.startswith("KB fresh · 1 docs · ")
        assert "has no documents" not in _welcome(app) and "Type a question" in _welcome(app)


async def test_a_knowledge_base_with_documents_has_no_hint(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert _welcome(app).startswith("Type a question")
        assert app.kb_hint == ""


# -- streaming -------------------------------------------------------------------------------


async def test_stream_is_shown_in_batches_while_the_ui_keeps_running(
    env: Env, monkeypatch: pytest.MonkeyPatch,
) -> None:
    reply = " ".join(f"w{i}" for i in range(60)) + " [1]."
    app, made = _paced_app(env, reply, each=0.02)
    shown: list[str] = []
    original = ExchangeView.append

    async def spy(view: ExchangeView, piece: str) -> None:
        shown.append(piece)
        await original(view, piece)

    monkeypatch.setattr(ExchangeView, "append", spy)
    ticks: list[float] = []
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        app.set_interval(0.02, lambda: ticks.append(time.monotonic()))
        view = await submit(pilot, QUESTION)
        await _until(pilot, lambda: bool(shown))
        assert not view.has_class("-done")  # the first words are on screen mid-answer
        await settle(pilot)
        tokens = made[-1].yielded
        assert tokens >= 60
        # Several updates while it streamed, but far fewer than one per token.
        assert 2 <= len(shown) <= tokens // 2, (len(shown), tokens)
        assert "".join(shown).split()[:3] == ["w0", "w1", "w2"]
        assert "w59" in view.markdown.source  # the whole answer once done
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert gaps and max(gaps) < 1.0  # the event loop never stalled


async def test_stream_interval_is_short_enough_to_read_as_streaming() -> None:
    assert 0.02 <= STREAM_INTERVAL <= 0.25


# -- stopping and quitting ---------------------------------------------------------------------


async def test_ctrl_c_stops_the_answer_and_otherwise_says_how_to_quit(env: Env) -> None:
    app, made = _paced_app(env, " ".join(["word"] * 300), each=0.02)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        assert any("Ctrl+Q" in n for n in _notes(app))
        app.clear_notifications()
        view = await submit(pilot, QUESTION)
        await _until(pilot, lambda: "word" in view.markdown.source)
        await pilot.press("ctrl+c")
        await settle(pilot)
        assert view.has_class("-failed") and view.data.answer is None
        assert made[-1].yielded < 300
        assert any("Stopped the answer" in n for n in _notes(app))
        assert app.is_running  # Ctrl+C never quits
        # With text selected in the question box, Ctrl+C still copies it.
        box = app.main.query_one(QuestionInput)
        box.focus()
        box.value = "copy me"
        box.selection = Selection(0, 4)
        app.clear_notifications()
        await pilot.press("ctrl+c")
        assert app.clipboard == "copy"
        assert not _notes(app)


async def test_help_lists_ctrl_c_as_stop(env: Env) -> None:
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f1")
        assert isinstance(app.screen, HelpScreen)
        table = _help_table()
        rows = dict(zip(table.columns[0].cells, table.columns[2].cells, strict=True))
        assert rows["Esc / Ctrl+C"] == "stop the answer being written"


async def test_quit_while_the_model_reads_the_prompt_waits_for_it_then_exits(
    env: Env,
) -> None:
    """Quitting cannot kill the thread in llama.cpp: the app says it is quitting, stops the
    answer at its first token and exits after the thread let go (freeing a model a thread
    still uses would crash the process)."""
    app, made = _paced_app(env, "Green tea [1].", first=1.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        view = await submit(pilot, QUESTION)
        await _until(pilot, made[-1].started.is_set)
        await pilot.press("escape")
        label = view.query_one(".pending-label", Label)
        assert "Stopping" in str(label.render())
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert app.is_running and not made[-1].finished.is_set()
        assert any("Quitting once" in n for n in _notes(app))
        assert app.status.activity == "quitting…"
        await _until(pilot, lambda: not app.is_running)
        assert made[-1].finished.is_set()
        assert made[-1].yielded <= 1
    assert not [w for w in app.workers if w.group == "ask" and w.is_running]


async def test_a_worker_thread_that_starts_after_quitting_began_does_nothing(
    env: Env,
) -> None:
    """Quitting with no thread at work exits at once; a worker whose thread only starts
    then (a warm-up started a moment before) must not load a model into an app that is
    being torn down."""
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert app.busy_threads == 0
        await pilot.press("ctrl+q")
        await _until(pilot, lambda: not app.is_running)
    with pytest.raises(WorkerCancelled), app._in_thread():
        raise AssertionError("a thread ran its work after quitting began")
    assert app.busy_threads == 0


async def test_quit_during_an_ingest_stops_it_between_files(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(20):
        (folder / f"note{i:02}.md").write_text(f"# Note {i}\n\nKettle number {i} boils.\n")
    original = env.appliance.ingest

    def slow_ingest(paths: Any, **kwargs: Any) -> Any:
        progress = kwargs.pop("progress")

        def paced(done: int, total: int, item: str) -> None:
            progress(done, total, item)
            time.sleep(0.15)

        return original(paths, progress=paced, **kwargs)

    monkeypatch.setattr(env.appliance, "ingest", slow_ingest)
    app = env.app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        screen = await open_ingest(pilot)
        # An idle bar would pulse as if something ran: none until an ingest starts.
        assert not screen.query_one(ProgressBar).display
        screen.query_one("#ingest-path", Input).value = str(folder)
        screen.query_one("#ingest-kb", Input).value = "many"
        await pilot.click("#ingest-start")
        assert screen.query_one(ProgressBar).display
        await _until(pilot, lambda: "2/" in app.status.activity)
        started = time.monotonic()
        await pilot.press("ctrl+q")
        await _until(pilot, lambda: not app.is_running)
        assert time.monotonic() - started < 5
        assert "stopped" in str(screen.query_one("#ingest-current", Label).render())
    assert not [w for w in app.workers if w.group == "ingest" and w.is_running]
    stats = env.appliance.kb_stats("many")
    assert 1 <= stats["documents"] < 20  # the files read before the stop are kept


# -- the CLI's wording -------------------------------------------------------------------------


async def test_abstention_shows_the_sentence_the_reason_and_closest_sources(env: Env) -> None:
    app = env.app(reply=ABSTAIN_SENTENCE)
    async with app.run_test(size=(100, 30)) as pilot:
        view = await ask(pilot, "What is the capital of Australia?")
        answer = view.data.answer
        assert answer is not None and answer.abstained
        assert ABSTAIN_SENTENCE in view.markdown.source
        assert str(view.query_one(".closest-label", Label).render()) == "Closest sources:"
        links = list(view.query(CitationLink))
        assert links
        keys = [(s.path, s.page, s.heading) for s in view.data.sources if s.n in
                {link.n for link in links}]
        assert len(keys) == len(set(keys))  # one line per section, as `appliance ask`
        meta = str(view.query_one(".meta", Label).render())
        before_model = [FLAG_NOTES[f] for f in NOT_GENERATED if f in answer.flags]
        assert meta.startswith(before_model[0] if before_model else "abstained"), meta
        assert meta.endswith(f"{answer.mode} · {answer.model}")


def test_closest_sources_are_one_per_section() -> None:
    def src(n: int, heading: str, page: int | None = None) -> SourceView:
        return SourceView(n=n, chunk_id=n, path="/d/a.pdf", heading=heading, text="",
                          score=0.1, page=page)

    got = unique_sections([src(1, "Intro", 2), src(2, "Intro", 2), src(3, "Intro", 3),
                           src(4, "Usage")])
    assert [s.n for s in got] == [1, 3, 4]


async def test_an_answer_cut_off_by_a_loop_says_so(env: Env) -> None:
    loop = "Green tea is brewed with water at 80 degrees Celsius for two minutes [1]. "
    app = env.app(reply=loop * 6)
    async with app.run_test(size=(120, 40)) as pilot:
        view = await ask(pilot, QUESTION)
        answer = view.data.answer
        assert answer is not None and "stopped:loop" in answer.flags
        meta = str(view.query_one(".meta", Label).render())
        assert "stopped: the model began repeating itself" in meta
        assert meta.endswith(f" · rag · {answer.model}")


# -- with the real model -----------------------------------------------------------------------


@pytest.mark.integration
async def test_real_model_quit_right_after_asking_exits_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tui_base: Path,
) -> None:
    """Ctrl+Q while llama.cpp reads the prompt: the app exits once it let go, and closing
    the pipeline afterwards (as `appliance tui` does) does not crash."""
    import shutil

    from appliance.api import Appliance
    from appliance.config import load_settings

    home = tmp_path / "home"
    shutil.copytree(tui_base / "home", home)
    monkeypatch.chdir(tui_base / "work")
    appliance = Appliance(load_settings(home=home))
    app = create_app(appliance, model=SMALL_MODEL, mode="rag")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)  # the model is loaded
        await submit(pilot, QUESTION)
        await pilot.press("ctrl+q")
        await _until(pilot, lambda: not app.is_running, seconds=120)
    assert not [w for w in app.workers if w.group in ("ask", "warmup") and w.is_running]
    app.pipeline.close()
    appliance.close()


async def test_esc_stops_a_model_still_reading_the_prompt(env: Env) -> None:
    """Esc interrupts llama.cpp itself (its abort callback), so an answer stops at once,
    not after the prompt's evaluation (60 s here) and its first token."""
    app, made = _paced_app(env, "Green tea [1].", interruptible=True, first=60.0)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        view = await submit(pilot, QUESTION)
        await _until(pilot, made[-1].started.is_set)
        await pilot.press("escape")
        await _until(pilot, made[-1].finished.is_set)  # long before 60 s
        await settle(pilot)
        assert made[-1].yielded == 0 and isinstance(made[-1], InterruptibleGenerator)
        assert made[-1].abort.is_set()
        assert "stopped" in str(view.query_one(".meta", Label).render())
        assert not app.query(ErrorDialog)


@pytest.mark.parametrize("width", [60, 100])
async def test_the_footer_shows_how_to_quit_on_a_narrow_terminal(env: Env, width: int) -> None:
    """A narrow terminal cuts the footer's end off: Help and Quit come first."""
    from textual.widgets._footer import FooterKey

    app = env.app()
    async with app.run_test(size=(width, 24)) as pilot:
        await settle(pilot)
        keys = {k.description: k.region for k in app.screen.query(FooterKey)}
        assert list(keys)[:2] == ["Help", "Quit"]
        assert 0 < keys["Quit"].right <= width
