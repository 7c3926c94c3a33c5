"""The Textual app: ask questions, read the sources, ingest folders, give feedback.

Everything slow (loading models, retrieval and generation, ingest, reading knowledge-base
statistics, saving feedback) runs in thread workers; tokens reach the screen through
``call_from_thread``, so the interface never freezes. The pipeline is used by one worker
at a time (a lock): a question asked while the model loads waits for it. Ingest does not
take that lock, so the chat stays usable while documents are read.

Build the app with :func:`create_app` (the CLI and the tests do).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, OptionList, Static
from textual.worker import WorkerCancelled, get_current_worker

from appliance.api import Appliance
from appliance.config import Settings
from appliance.errors import (
    ApplianceError,
    InputError,
    Interrupted,
    KnowledgeBaseNotFoundError,
)
from appliance.feedback import FeedbackRecord, FeedbackSource, FeedbackStore
from appliance.generate import MODES, RETRIEVAL_MODES, is_fine_tuned
from appliance.pipeline import Pipeline
from appliance.tui.screens import (
    Choice,
    ErrorDialog,
    FeedbackScreen,
    HelpScreen,
    IngestScreen,
    PickerScreen,
    SourceScreen,
)
from appliance.tui.sources import sources_for
from appliance.tui.widgets import (
    CitationLink,
    ExchangeData,
    ExchangeView,
    QuestionInput,
    SourcesPanel,
    StatusBar,
    answer_summary,
)
from appliance.types import Generator, Hit, IngestReport

__all__ = ["ApplianceTUI", "MainScreen", "create_app", "run_tui"]

NARROW = 100
"""Below this many columns the sources panel is shown instead of the chat (F6)."""

MODE_NOTES = {
    "rag": "retrieve from the knowledge base, answer with citations",
    "base": "the model alone, no documents",
    "ft": "a fine-tuned model alone (train one with `appliance train`)",
    "hybrid": "a fine-tuned model over retrieved sources",
}

WELCOME = (
    "Type a question about your documents and press Enter. Answers cite their sources as "
    "[n]: click one, or Tab to it and press Enter, to read it. F1 lists every key."
)

STREAM_INTERVAL = 0.1
"""Seconds between screen updates while an answer streams: tokens that arrive meanwhile
are shown together, so rendering the growing answer does not take the CPU the model needs
(on a small machine, redrawing at every token slowed generation by about a third)."""

BUSY_GROUPS = ("ask", "ingest", "warmup")
"""Workers that hold a model or the knowledge base: quitting waits for them to let go."""


def kb_missing_hint(kb: str) -> str:
    """What to do when knowledge base ``kb`` does not exist (the TUI's next step)."""
    return (f"Knowledge base '{kb}' does not exist yet: press F5 to ingest a folder of "
            "documents into it, or F4 to choose another knowledge base.")


def kb_empty_hint(kb: str) -> str:
    """What to do when knowledge base ``kb`` holds no document."""
    return f"Knowledge base '{kb}' has no documents yet: press F5 to ingest a folder into it."


class _Stopped(Exception):
    """The user stopped the answer (Esc, Ctrl+C) or quit."""


def welcome_text(hint: str) -> Text:
    """The chat's opening text, with the next step first when there is one to take."""
    if not hint:
        return Text(WELCOME)
    return Text.assemble((hint, "bold"), "\n\n", WELCOME)


class MainScreen(Screen[None]):
    """The chat: exchanges on the left, the sources panel on the right, status below."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f1", "app.help", "Help"),
        # Quit second, not last: a narrow terminal cuts the footer's end off.
        Binding("ctrl+q", "app.quit", "Quit"),
        Binding("f2", "app.pick_mode", "Mode"),
        Binding("f3", "app.pick_model", "Model"),
        Binding("f4", "app.pick_kb", "KB"),
        Binding("f5", "app.ingest", "Ingest"),
        Binding("f6", "app.toggle_sources", "Sources"),
        Binding("f7", "app.feedback", "Feedback"),
        Binding("escape", "app.stop", "Stop", show=False),
        Binding("ctrl+l", "app.clear", "Clear", show=False),
    ]

    def compose(self) -> ComposeResult:
        with Horizontal(id="main"):
            with Vertical(id="chat-column"):
                with VerticalScroll(id="chat"):
                    yield Static(welcome_text(""), id="welcome")
                app = self.app
                home = app.appliance.settings.home if isinstance(app, ApplianceTUI) else None
                yield QuestionInput(history_file=home / "tui" / "history.jsonl" if home else None,
                                    placeholder="Ask a question…  (Enter to ask, ↑↓ history)",
                                    id="question")
            yield SourcesPanel(id="sources")
        yield StatusBar(id="status")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#chat", VerticalScroll).anchor()
        self.query_one(QuestionInput).focus()

    def on_resize(self, event: Resize) -> None:
        self.set_class(event.size.width < NARROW, "-narrow")


class ApplianceTUI(App[None]):
    """The appliance's terminal interface."""

    CSS_PATH: ClassVar[list[str | PurePath]] = ["app.tcss", "screens.tcss"]
    TITLE = "appliance"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]
    # Ctrl+C copies a selection, as Textual binds it; otherwise it stops an answer being
    # written, or says how to quit (action_help_quit).

    def __init__(
        self,
        appliance: Appliance,
        pipeline: Pipeline,
        *,
        kb: str,
        mode: str,
        model: str | None = None,
        feedback: FeedbackStore | None = None,
    ) -> None:
        super().__init__()
        self.appliance = appliance
        self.pipeline = pipeline
        self.kb = kb
        self.mode = mode
        self.model = model
        self.feedback = feedback or FeedbackStore(appliance.settings.home)
        self.exchanges: list[ExchangeData] = []
        self.asking = False
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._ingest_screen: IngestScreen | None = None
        self.last_ingest: IngestReport | None = None
        self.kb_hint = ""
        """The next step the chat's welcome shows (the knowledge base is missing or empty)."""
        self.quitting = False
        # Threads using a model or a knowledge base. Not the workers' state: a cancelled
        # thread worker reads as finished at once, while its thread runs to its next check.
        self._threads = 0
        self._threads_lock = threading.Lock()
        self._quit_started = False  # set (under _threads_lock) once quitting has begun

    @contextlib.contextmanager
    def _in_thread(self) -> Iterator[None]:
        """Count a worker thread as busy while it runs (quitting waits for it). A thread
        that starts after quitting has begun does nothing: quitting may already have seen
        no thread at work and be tearing the app down."""
        with self._threads_lock:
            if self._quit_started:
                raise WorkerCancelled()
            self._threads += 1
        try:
            yield
        finally:
            with self._threads_lock:
                self._threads -= 1

    @property
    def busy_threads(self) -> int:
        """How many worker threads still use a model or a knowledge base."""
        return self._threads

    # -- layout ------------------------------------------------------------------------------

    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        """The chat screen (the bottom of the screen stack)."""
        screen = self.screen_stack[0]
        assert isinstance(screen, MainScreen)
        return screen

    @property
    def status(self) -> StatusBar:
        """The status bar."""
        return self.main.query_one(StatusBar)

    def on_ready(self) -> None:
        self.status.mode_text = f"mode {self.mode}"
        self._show_model()
        self.refresh_kb()
        self.warm_up()

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Switch mode", "rag, base, ft or hybrid", self.action_pick_mode)
        yield SystemCommand("Switch model", "a generator from the registry",
                            self.action_pick_model)
        yield SystemCommand("Switch knowledge base", "ask another knowledge base",
                            self.action_pick_kb)
        yield SystemCommand("Ingest a folder", "add documents to a knowledge base",
                            self.action_ingest)
        yield SystemCommand("Feedback on the last answer", "good, bad, corrected answer",
                            self.action_feedback)
        yield SystemCommand("Clear the conversation", "remove every exchange",
                            self.action_clear)

    # -- status ------------------------------------------------------------------------------

    def _ui(self, fn: Callable[..., Awaitable[None] | None], *args: Any) -> None:
        """From a worker thread: run ``fn(*args)`` on the UI thread and wait for it."""
        self.call_from_thread(fn, *args)

    def _model_id(self) -> str:
        try:
            return self.pipeline.model_id(self.mode, self.model)
        except ApplianceError:
            return self.model or "?"

    def _show_model(self, loading: bool = False) -> None:
        text = self._model_id()
        self.status.model_text = f"{text} (loading…)" if loading else text

    def show_error(self, title: str, message: str) -> None:
        """An error dialog: a title and one clear sentence."""
        self.push_screen(ErrorDialog(title, message))

    def _error(self, exc: BaseException) -> None:
        if isinstance(exc, ApplianceError):
            self.show_error(exc.title, exc.message)
        else:
            self.show_error("Unexpected error",
                            f"{type(exc).__name__}: {exc}. Run `appliance --debug tui` to see "
                            "the traceback and report it.")

    @work(thread=True, group="kb", exit_on_error=False)
    def refresh_kb(self) -> None:
        """Read the current knowledge base's document and chunk counts."""
        kb = self.kb
        hint = ""
        try:
            stats = self.appliance.kb_stats(kb)
            if stats["documents"]:
                text = f"KB {kb} · {stats['documents']} docs · {stats['chunks']} chunks"
            else:
                text = f"KB {kb} · empty: F5 to ingest"
                hint = kb_empty_hint(kb)
        except KnowledgeBaseNotFoundError:
            text = f"KB {kb} · missing: F5 to ingest"
            hint = kb_missing_hint(kb)
        except ApplianceError as exc:
            text = f"KB {kb} · {exc.title.lower()}"
        self._ui(self._show_kb, kb, text, hint)

    def _show_kb(self, kb: str, text: str, hint: str) -> None:
        if kb != self.kb:
            return  # the user switched again meanwhile; a newer refresh follows
        self.status.kb_text = text
        self.kb_hint = hint
        for welcome in self.main.query("#welcome").results(Static):
            welcome.update(welcome_text(hint))

    @work(thread=True, group="warmup", exit_on_error=False)
    def warm_up(self) -> None:
        """Load the model (and the embedder and retriever) before the first question."""
        with self._in_thread():
            self._warm_up()

    def _warm_up(self) -> None:
        mode, model, kb = self.mode, self.model, self.kb
        try:
            model_id = self.pipeline.model_id(mode, model)
        except ApplianceError as exc:
            self._ui(self._error, exc)
            return
        if model_id in self._loaded:
            return
        self._ui(self._show_model, True)
        try:
            with self._lock:
                self.pipeline.generator(mode, model)
                self._loaded.add(model_id)
                if mode in RETRIEVAL_MODES:
                    with contextlib.suppress(KnowledgeBaseNotFoundError):
                        self.appliance.retriever(kb)
        except Exception as exc:
            self._ui(self._error, exc)
        finally:
            self._ui(self._show_model, False)

    # -- asking ------------------------------------------------------------------------------

    @on(QuestionInput.Submitted, "#question")
    async def ask(self, event: QuestionInput.Submitted) -> None:
        """Ask the question typed in the input."""
        question = event.value.strip()
        if not question:
            return
        if self.asking:
            self.notify("Still answering the last question; Esc stops it.",
                        severity="warning", markup=False)
            return
        box = event.input
        assert isinstance(box, QuestionInput)
        box.remember(question)
        box.value = ""
        data = ExchangeData(question=question, mode=self.mode, model=self._model_id(),
                            kb=self.kb)
        self.exchanges.append(data)
        view = ExchangeView(data)
        chat = self.main.query_one("#chat", VerticalScroll)
        welcome = self.main.query("#welcome")
        if welcome:
            await welcome.remove()
        await chat.mount(view)
        chat.anchor()
        self.asking = True
        self._answer(view, data, self.model)

    @work(thread=True, group="ask", exit_on_error=False)
    def _answer(self, view: ExchangeView, data: ExchangeData, model: str | None) -> None:
        with self._in_thread():
            self._answer_in_thread(view, data, model)

    def _answer_in_thread(self, view: ExchangeView, data: ExchangeData,
                          model: str | None) -> None:
        worker = get_current_worker()
        pending: list[str] = []
        shown_at = 0.0

        def flush() -> None:
            nonlocal shown_at
            if pending:
                text = "".join(pending)
                pending.clear()
                self._ui(view.append, text)
            shown_at = time.monotonic()

        def on_token(piece: str) -> None:
            if worker.is_cancelled:
                flush()  # what was written before the stop stays on screen
                raise _Stopped
            pending.append(piece)
            if time.monotonic() - shown_at >= STREAM_INTERVAL:
                flush()

        model_id = data.model
        if model_id not in self._loaded:
            self._ui(view.set_pending, f"Loading {model_id}…")
        try:
            with self._lock:
                if worker.is_cancelled:
                    raise _Stopped
                self._ui(view.set_pending, "Searching and thinking…")
                answer = self.pipeline.ask(data.question, kb=data.kb, mode=data.mode,
                                           model=model, on_token=on_token)
                self._loaded.add(answer.model)
                raw: Any = getattr(self.pipeline, "last_hits", None)
                hits: list[Hit] | None = list(raw) if raw is not None else None
            data.answer = answer
            data.model = answer.model
            data.hits = hits
            data.sources = sources_for(answer, hits, self._lookup(data.kb))
        except (_Stopped, Interrupted):
            self._ui(self._answer_failed, view, "stopped", None)
        except KnowledgeBaseNotFoundError as exc:
            # The core's message names the CLI command; here the next step is a key.
            missing = KnowledgeBaseNotFoundError(kb_missing_hint(data.kb))
            missing.__cause__ = exc
            self._ui(self._answer_failed, view, "no answer", missing)
        except Exception as exc:
            self._ui(self._answer_failed, view, "no answer", exc)
        else:
            self._ui(self._answer_done, view, data)  # shows the whole answer

    def _lookup(self, kb: str) -> Callable[[Sequence[int]], dict[int, tuple[str, str, str]]]:
        def lookup(ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
            try:
                with self.appliance.open_kb(kb) as store:
                    rows = store.chunks(ids)
            except ApplianceError:
                return {}
            return {i: (r.path, r.heading, r.text) for i, r in rows.items()}

        return lookup

    async def _answer_done(self, view: ExchangeView, data: ExchangeData) -> None:
        self.asking = False
        await view.finish(data)
        self.main.query_one(SourcesPanel).show(data)
        if data.answer is not None:
            self.status.answer_text = answer_summary(data.answer)

    async def _answer_failed(self, view: ExchangeView, text: str,
                             exc: BaseException | None) -> None:
        self.asking = False
        await view.fail(text)
        if exc is not None:
            self._error(exc)

    def _answering(self) -> bool:
        return any(w.group == "ask" and w.is_running and not w.is_cancelled
                   for w in self.workers)

    def action_stop(self) -> None:
        """Stop the answer being written, even while the model still reads the sources."""
        if not self._answering():
            return
        for worker in self.workers:
            if worker.group == "ask" and worker.is_running:
                worker.cancel()
        self.pipeline.interrupt()
        views = self.main.query(ExchangeView)
        if views:
            views.last().set_pending("Stopping…")

    def action_help_quit(self) -> None:
        """Ctrl+C: stop the answer being written; otherwise say how to quit."""
        if self._answering():
            self.action_stop()
            self.notify("Stopped the answer. Ctrl+Q quits.", markup=False)
            return
        self.notify("Press Ctrl+Q to quit (Esc or Ctrl+C stops an answer).",
                    title="Do you want to quit?", markup=False)

    async def action_clear(self) -> None:
        """Remove every exchange from the chat."""
        if self.asking:
            self.notify("Wait for the answer, or stop it with Esc.", severity="warning",
                        markup=False)
            return
        chat = self.main.query_one("#chat", VerticalScroll)
        await chat.remove_children()
        await chat.mount(Static(welcome_text(self.kb_hint), id="welcome"))
        self.exchanges.clear()

    # -- sources -------------------------------------------------------------------------------

    @on(CitationLink.Opened)
    @on(SourcesPanel.Opened)
    def open_source(self, event: CitationLink.Opened | SourcesPanel.Opened) -> None:
        """Show one source of an answer in full."""
        panel = self.main.query_one(SourcesPanel)
        if panel.exchange is not event.exchange:
            panel.show(event.exchange)
        self.push_screen(SourceScreen(event.exchange, event.n))

    def action_toggle_sources(self) -> None:
        """Show or hide the sources panel (at narrow widths: swap it with the chat)."""
        main = self.main
        if main.has_class("-narrow"):
            main.toggle_class("-sources-open")
            if main.has_class("-sources-open"):
                main.query_one("#source-list", OptionList).focus()
            else:
                main.query_one(QuestionInput).focus()
        else:
            main.toggle_class("-sources-hidden")

    # -- switching mode, model, knowledge base -------------------------------------------------

    def action_pick_mode(self) -> None:
        """Choose the answer mode."""
        choices = [Choice(m, m, MODE_NOTES.get(m, "")) for m in MODES]
        self.push_screen(PickerScreen("Mode", choices, self.mode), self._set_mode)

    def _set_mode(self, mode: str | None) -> None:
        if not mode or mode == self.mode:
            return
        try:
            self.pipeline.model_id(mode, self.model)
        except ApplianceError as exc:
            self._error(exc)
            return
        self.mode = mode
        self.status.mode_text = f"mode {mode}"
        self._show_model()
        self.warm_up()

    def action_pick_model(self) -> None:
        """Choose the generator model."""
        current = self._model_id()
        choices = []
        for e in self.appliance.registry:
            if e.role != "generator":
                continue
            notes = []
            if e.default:
                notes.append("default")
            if is_fine_tuned(e):
                notes.append("fine-tuned")
            if e.size:
                notes.append(f"{e.size / 1e6:.0f} MB")
            if not e.path.is_file():
                notes.append("file missing")
            choices.append(Choice(e.id, e.id, " · ".join(notes)))
        self.push_screen(PickerScreen("Model", choices, current), self._set_model)

    def _set_model(self, model: str | None) -> None:
        if not model or model == self._model_id():
            return
        try:
            self.pipeline.model_id(self.mode, model)
        except ApplianceError as exc:
            self._error(exc)
            return
        self.model = model
        self._show_model()
        self.warm_up()

    def action_pick_kb(self) -> None:
        """Choose the knowledge base."""
        names = self.appliance.list_kbs()
        if not names:
            self.show_error("No knowledge base",
                            "There is no knowledge base yet; press F5 to ingest a folder.")
            return
        choices = [Choice(n, n) for n in names]
        self.push_screen(PickerScreen("Knowledge base", choices, self.kb), self._set_kb)

    def _set_kb(self, kb: str | None) -> None:
        if not kb or kb == self.kb:
            return
        self.kb = kb
        self.refresh_kb()
        if self._ingest_screen is not None and not self._ingest_screen.running:
            self._ingest_screen.kb = kb

    # -- ingest --------------------------------------------------------------------------------

    def _ingest(self) -> IngestScreen:
        if self._ingest_screen is None:
            # Installed, so it keeps its progress and report while the user is in the chat.
            self._ingest_screen = IngestScreen(self.kb, self.appliance.settings.ingest.extensions)
            self.install_screen(self._ingest_screen, "ingest")
        return self._ingest_screen

    def action_ingest(self) -> None:
        """Open the ingest screen."""
        screen = self._ingest()
        if screen in self.screen_stack:
            # Open under a dialog (the command palette works there): close the dialogs
            # above it rather than put the same screen on the stack twice.
            while self.screen is not screen:
                self.pop_screen()
        else:
            self.push_screen("ingest")

    def start_ingest(self, path: Path, kb: str) -> None:
        """Ingest ``path`` into ``kb`` in the background."""
        screen = self._ingest()
        screen.begin(path, kb)
        self.status.activity = "ingesting…"
        self._run_ingest(path, kb)

    @work(thread=True, group="ingest", exit_on_error=False)
    def _run_ingest(self, path: Path, kb: str) -> None:
        with self._in_thread():
            self._ingest_in_thread(path, kb)

    def _ingest_in_thread(self, path: Path, kb: str) -> None:
        screen = self._ingest()
        worker = get_current_worker()

        def progress(done: int, total: int, item: str) -> None:
            if worker.is_cancelled:
                # Quitting: stop between two files (each file is its own transaction, so
                # the files read so far stay in the knowledge base; a rerun goes on).
                raise _Stopped
            self._ui(self._ingest_progress, screen, done, total, item)

        try:
            report = self.appliance.ingest([path], kb=kb, progress=progress)
        except _Stopped:
            self._ui(self._ingest_done, screen, kb, None, None,
                     "Stopped; the files read so far are kept. Ingest again to go on.")
        except Exception as exc:
            message = exc.message if isinstance(exc, ApplianceError) else str(exc)
            self._ui(self._ingest_done, screen, kb, None, exc, message)
        else:
            self._ui(self._ingest_done, screen, kb, report, None, "")

    def _ingest_progress(self, screen: IngestScreen, done: int, total: int, item: str) -> None:
        screen.progress(done, total, item)
        self.status.activity = f"ingesting {done}/{total}"

    def _ingest_done(self, screen: IngestScreen, kb: str, report: IngestReport | None,
                     exc: BaseException | None, message: str) -> None:
        self.last_ingest = report
        screen.finish(report, message, stopped=report is None and exc is None)
        self.status.activity = "quitting…" if self.quitting else ""
        if exc is not None:
            self._error(exc)
            return
        if report is None:
            return  # stopped (quitting)
        self.notify(f"Ingested into '{kb}': {report.added} added, {report.updated} updated, "
                    f"{len(report.failed)} failed.", markup=False)
        if kb == self.kb:
            self.refresh_kb()

    # -- feedback ------------------------------------------------------------------------------

    def _last_answered(self) -> ExchangeData | None:
        return next((e for e in reversed(self.exchanges) if e.answer is not None), None)

    def action_feedback(self) -> None:
        """Rate the last answer."""
        data = self._last_answered()
        if data is None:
            self.notify("Ask a question first; then rate its answer.", severity="warning",
                        markup=False)
            return
        self._open_feedback(data, data.rating or "good")

    def _open_feedback(self, data: ExchangeData, rating: str) -> None:
        def done(result: tuple[str, str] | None) -> None:
            if result is not None:
                self.save_feedback(data, result[0], result[1])

        self.push_screen(FeedbackScreen(data, rating), done)

    @on(ExchangeView.FeedbackChosen)
    def _feedback_chosen(self, event: ExchangeView.FeedbackChosen) -> None:
        if event.rating == "good":
            self.save_feedback(event.exchange, "good", "")
        else:
            self._open_feedback(event.exchange, "bad")

    @work(thread=True, group="feedback", exit_on_error=False)
    def save_feedback(self, data: ExchangeData, rating: str, correction: str) -> None:
        """Store a rating durably (fsync'd) next to the knowledge bases."""
        answer = data.answer
        if answer is None:
            return
        sources: Sequence[Hit] | Sequence[FeedbackSource]
        if data.hits is not None:
            # The sources the model saw: the hits that fitted the prompt.
            dropped = sum(int(f.split(":", 1)[1]) for f in answer.flags
                          if f.startswith("sources_dropped:") and f[16:].isdigit())
            sources = data.hits[: len(data.hits) - dropped]
        else:
            sources = [FeedbackSource(s.n, s.chunk_id, s.path, s.heading, s.text)
                       for s in data.sources]
        try:
            record = FeedbackRecord.from_answer(
                answer, rating="bad" if rating == "bad" else "good", kb=data.kb,
                answer_key=data.key, correction=correction, sources=sources,
            )
            self.feedback.add(record)
        except Exception as exc:
            self._ui(self._error, exc)
            return
        self._ui(self._feedback_saved, data, record.rating)

    def _feedback_saved(self, data: ExchangeData, rating: str) -> None:
        for view in self.main.query(ExchangeView):
            if view.data.key == data.key:
                view.show_rating(rating)
        self.notify(f"Feedback saved: {rating}.", markup=False)

    # -- help ----------------------------------------------------------------------------------

    def action_help(self) -> None:
        """Show every key."""
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Stop any answer or ingest, and quit once they let go of the model and the
        knowledge base (a thread cannot be killed: freeing a model a thread still uses
        would crash, and the process could not end before the thread anyway)."""
        busy = [w for w in self.workers if w.group in BUSY_GROUPS and w.is_running]
        with self._threads_lock:
            self._quit_started = True
            threads = self._threads
        if not threads:
            for worker in busy:
                worker.cancel()
            self.exit()
            return
        self.notify("Quitting once the model or the ingest stops…", markup=False, timeout=30)
        if self.quitting:
            return
        self.quitting = True
        self.status.activity = "quitting…"
        for worker in busy:
            worker.cancel()
        self.pipeline.interrupt()
        self._quit_when_idle()

    @work(group="quit", exit_on_error=False)
    async def _quit_when_idle(self) -> None:
        while self.busy_threads:
            await asyncio.sleep(0.05)
        self.exit()


def _pick_kb(appliance: Appliance, kb: str | None) -> str:
    if kb:
        return kb
    names = appliance.list_kbs()
    if "default" in names or not names:
        return "default"
    return names[0]


def create_app(
    appliance: Appliance | None = None,
    *,
    settings: Settings | None = None,
    pipeline: Pipeline | None = None,
    loader: Callable[[str], Generator] | None = None,
    kb: str | None = None,
    mode: str | None = None,
    model: str | None = None,
    feedback: FeedbackStore | None = None,
) -> ApplianceTUI:
    """Build the app.

    ``appliance`` (else one from ``settings``, else the default settings) supplies the data
    directory, registry and knowledge bases; ``pipeline`` answers (else one is made, with
    ``loader`` to turn a model id into a generator: tests pass a fake). ``kb`` defaults to
    ``default``, else the first knowledge base; ``mode`` to the pipeline's default.
    """
    appliance = appliance or Appliance(settings)
    pipeline = pipeline or Pipeline(appliance, loader=loader)
    if mode is not None and mode not in MODES:
        raise ApplianceError(f"Unknown mode '{mode}'; use one of {', '.join(MODES)}.")
    return ApplianceTUI(
        appliance, pipeline, kb=_pick_kb(appliance, kb), mode=mode or pipeline.default_mode,
        model=model, feedback=feedback,
    )


def run_tui(appliance: Appliance, *, kb: str | None = None, mode: str | None = None,
            model: str | None = None) -> None:
    """Run the app in the terminal until the user quits.

    Raises InputError before anything starts when there is no terminal to run in, or when
    ``kb`` is not a valid knowledge base name or ``model`` is not registered.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise InputError("The terminal app needs a terminal for its input and output; run it "
                         "in one, or use `appliance ask` or `appliance batch` from scripts.")
    if kb is not None:
        appliance.settings.kb_path(kb)  # validates the name
    if model is not None:
        appliance.registry.get(model)
    app = create_app(appliance, kb=kb, mode=mode, model=model)
    try:
        app.run()
    finally:
        app.pipeline.close()
        appliance.close()
