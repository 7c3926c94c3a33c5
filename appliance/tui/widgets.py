"""Widgets of the chat screen: the question input, one exchange, the sources panel, the
status bar."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import (
    Button,
    Input,
    Label,
    LoadingIndicator,
    Markdown,
    OptionList,
    Static,
    TextArea,
)
from textual.widgets.markdown import MarkdownStream
from textual.widgets.option_list import Option

from appliance.tui.sources import SourceView, display_path, linkify_citations, printable
from appliance.types import (
    NOT_GENERATED,
    Answer,
    Hit,
    answer_notes,
    page_suffix,
    unique_sections,
)

__all__ = [
    "CitationLink",
    "ExchangeData",
    "ExchangeView",
    "PlainInput",
    "PlainTextArea",
    "QuestionInput",
    "SourcesPanel",
    "StatusBar",
]


# -- question input with history ---------------------------------------------------------------


class PlainInput(Input):
    """A one-line input that keeps only printable text: a paste or a value with control
    characters (escape sequences, NUL, bells) or line breaks shows them as ``�`` or spaces,
    so nothing typed can drive the terminal."""

    def validate_value(self, value: str) -> str:
        """Clean a value set by code (the history, a picked path)."""
        return printable(value, one_line=True)

    def replace(self, text: str, start: int, end: int) -> None:
        """Clean typed or pasted text before it goes in (the cursor lands after it)."""
        super().replace(printable(text, one_line=True), start, end)


class PlainTextArea(TextArea):
    """A text area whose pastes keep only printable text (line breaks and tabs stay):
    control characters show as ``�`` instead of reaching the terminal."""

    async def _on_paste(self, event: events.Paste) -> None:
        # Runs before TextArea's own handler (Textual calls each class's), which inserts it.
        event.text = printable(event.text)


class QuestionInput(PlainInput):
    """The question box: Enter asks, Up and Down walk through earlier questions.

    With ``history_file`` the history outlives the session: earlier questions are read
    from it (the newest ``HISTORY_LIMIT``) and each new one is appended (JSON lines).
    """

    HISTORY_LIMIT = 500

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "history(-1)", "Previous question", show=False),
        Binding("down", "history(1)", "Next question", show=False),
    ]

    def __init__(self, history_file: Path | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.history_file = history_file
        self.history: list[str] = self._load(history_file)
        self._pos = len(self.history)
        self._draft = ""

    @classmethod
    def _load(cls, path: Path | None) -> list[str]:
        if path is None:
            return []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()[-cls.HISTORY_LIMIT:]
        except (OSError, UnicodeDecodeError):
            return []  # no history yet, or an unreadable one: start empty
        out: list[str] = []
        for line in lines:
            try:
                question = json.loads(line).get("question")
            except (ValueError, AttributeError):
                continue  # a torn last line after a crash
            if isinstance(question, str) and question and (not out or out[-1] != question):
                out.append(question)
        return out

    def remember(self, question: str) -> None:
        """Add a question to the history (consecutive repeats are kept once)."""
        if not self.history or self.history[-1] != question:
            self.history.append(question)
            if self.history_file is not None:
                try:
                    self.history_file.parent.mkdir(parents=True, exist_ok=True)
                    with self.history_file.open("a", encoding="utf-8") as fh:
                        fh.write(json.dumps({"question": question}, ensure_ascii=False) + "\n")
                except OSError:
                    pass  # a read-only data directory: the session keeps its history
        self._pos = len(self.history)
        self._draft = ""

    def action_history(self, step: int) -> None:
        """Show the previous (-1) or next (+1) question of the history."""
        if not self.history:
            return
        if self._pos == len(self.history):
            self._draft = self.value
        self._pos = max(0, min(len(self.history), self._pos + step))
        self.value = self.history[self._pos] if self._pos < len(self.history) else self._draft
        self.cursor_position = len(self.value)


# -- one question and its answer ------------------------------------------------------------------


@dataclass
class ExchangeData:
    """A question, its answer once done, and the sources it was built from."""

    question: str
    mode: str
    model: str
    kb: str
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    answer: Answer | None = None
    hits: list[Hit] | None = None
    sources: list[SourceView] = field(default_factory=list)
    rating: str = ""


class CitationLink(Static, can_focus=True):
    """A focusable line naming one cited source; Enter or a click opens it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter,space", "open", "Open source", show=False),
    ]

    class Opened(Message):
        """A citation was chosen."""

        def __init__(self, exchange: ExchangeData, n: int) -> None:
            super().__init__()
            self.exchange = exchange
            self.n = n

    def __init__(self, exchange: ExchangeData, source: SourceView) -> None:
        name = printable(os.path.basename(source.path) + page_suffix(source.page), one_line=True)
        heading = printable(source.heading[:200], one_line=True)
        label = Text.assemble(
            (f"[{source.n}] ", "bold"),
            (name, ""),
            (f"  {heading}" if heading else "", "italic"),
        )
        label.truncate(200)
        super().__init__(label, classes="citation")
        self.exchange = exchange
        self.n = source.n

    def action_open(self) -> None:
        """Open the cited source."""
        self.post_message(self.Opened(self.exchange, self.n))

    def on_click(self, event: events.Click) -> None:
        """A click opens the source too."""
        event.stop()
        self.action_open()


class ExchangeView(Vertical):
    """A question and its streamed answer, its citations and feedback buttons."""

    class FeedbackChosen(Message):
        """The user pressed Good or Bad under an answer."""

        def __init__(self, exchange: ExchangeData, rating: str) -> None:
            super().__init__()
            self.exchange = exchange
            self.rating = rating

    def __init__(self, data: ExchangeData) -> None:
        super().__init__(classes="exchange")
        self.data = data
        self._streamed = ""
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text.assemble(("❯ ", "bold"), printable(self.data.question, one_line=True)),
                     classes="question")
        with Horizontal(classes="pending"):
            yield LoadingIndicator()
            yield Label("Searching and thinking…", classes="pending-label")
        yield Markdown("", classes="answer", open_links=False)
        yield Vertical(classes="citations")
        with Horizontal(classes="answer-footer"):
            yield Label("", classes="meta")
            yield Button("Good", classes="good", compact=True, disabled=True)
            yield Button("Bad…", classes="bad", compact=True, disabled=True)

    @property
    def markdown(self) -> Markdown:
        """The answer's Markdown widget."""
        return self.query_one(".answer", Markdown)

    def set_pending(self, text: str) -> None:
        """Change the line shown while waiting for the first token."""
        self.query_one(".pending-label", Label).update(Text(text))

    async def append(self, piece: str) -> None:
        """Add a streamed piece of the answer."""
        if not self._streamed:
            self.query_one(".pending").display = False
            piece = piece.lstrip()
            if not piece:
                return
        self._streamed += piece
        if self._stream is None:
            self._stream = Markdown.get_stream(self.markdown)
        await self._stream.write(printable(piece))

    async def _end_stream(self) -> None:
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None

    async def finish(self, data: ExchangeData) -> None:
        """Show the final answer with clickable citations, and enable feedback."""
        self.data = data
        await self._end_stream()
        self.query_one(".pending").display = False
        answer = data.answer
        if answer is None:
            return
        known = [s.n for s in data.sources]
        await self.markdown.update(linkify_citations(printable(answer.answer), known))
        box = self.query_one(".citations", Vertical)
        await box.remove_children()
        shown = [s for s in data.sources if s.cited] if not answer.abstained else []
        if answer.abstained and data.sources:
            await box.mount(Label("Closest sources:", classes="closest-label"))
            shown = unique_sections(data.sources[: max(1, len(answer.closest))])
        await box.mount_all([CitationLink(data, s) for s in shown])
        self.query_one(".meta", Label).update(Text(answer_meta(answer)))
        for button in self.query(Button):
            button.disabled = False
        self.add_class("-done")

    async def fail(self, text: str) -> None:
        """Show that no answer came (an error or a stop)."""
        await self._end_stream()
        self.query_one(".pending").display = False
        self.query_one(".meta", Label).update(Text(text))
        self.add_class("-failed", "-done")

    def show_rating(self, rating: str) -> None:
        """Mark the answer as rated."""
        self.data.rating = rating
        self.set_class(rating == "good", "-good")
        self.set_class(rating == "bad", "-bad")
        answer = self.data.answer
        base = answer_meta(answer) if answer else ""
        self.query_one(".meta", Label).update(Text(f"{base} · marked {rating}"))

    @on(Markdown.LinkClicked)
    def _link(self, event: Markdown.LinkClicked) -> None:
        event.stop()
        # Only the links linkify_citations made; the answer's own links (``cite:x``,
        # ``app.quit``, a URL) do nothing.
        number = event.href.removeprefix("cite:")
        if (event.href.startswith("cite:") and number.isascii() and number.isdigit()
                and len(number) <= 9):
            self.post_message(CitationLink.Opened(self.data, int(number)))

    @on(Button.Pressed, ".good")
    def _good(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.FeedbackChosen(self.data, "good"))

    @on(Button.Pressed, ".bad")
    def _bad(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(self.FeedbackChosen(self.data, "bad"))


def answer_meta(answer: Answer) -> str:
    """The line under an answer: why it abstained or stopped early (the notes ``appliance
    ask`` prints; first, so a narrow terminal cuts the model id instead), then the mode and
    model."""
    notes = answer_notes(answer)
    if answer.abstained and not any(f in answer.flags for f in NOT_GENERATED):
        notes.insert(0, "abstained")
    return " · ".join([*notes, answer.mode, answer.model])


# -- sources panel ------------------------------------------------------------------------------


class SourcesPanel(Vertical):
    """The sources of the selected answer; highlighting one previews its chunk."""

    class Opened(Message):
        """Enter on a source: open it in full."""

        def __init__(self, exchange: ExchangeData, n: int) -> None:
            super().__init__()
            self.exchange = exchange
            self.n = n

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.exchange: ExchangeData | None = None

    def compose(self) -> ComposeResult:
        yield Label("Sources", classes="panel-title")
        yield OptionList(id="source-list")
        with VerticalScroll(id="preview"):
            yield Static("Ask a question: its sources appear here.", id="preview-text")

    def show(self, exchange: ExchangeData) -> None:
        """List the sources of ``exchange``."""
        self.exchange = exchange
        options = self.query_one(OptionList)
        options.clear_options()
        for s in exchange.sources:
            prompt = Text.assemble(
                (f"{s.n:>2} ", "bold"),
                ("● " if s.cited else "  ", "green"),
                (printable(os.path.basename(s.path) + page_suffix(s.page), one_line=True),
                 "bold"),
                "\n     ",
                (printable(s.heading[:200], one_line=True) or "(no heading)", "italic"),
                "\n     ",
                (s.scores_line(), "dim"),
            )
            options.add_option(Option(prompt, id=str(s.n)))
        title = f"Sources · {len(exchange.sources)}" if exchange.sources else "Sources · none"
        self.query_one(".panel-title", Label).update(Text(title))
        if exchange.sources:
            options.highlighted = 0
        else:
            self._preview(None)

    def _preview(self, source: SourceView | None) -> None:
        text = self.query_one("#preview-text", Static)
        if source is None:
            text.update("No sources for this answer.")
            return
        where = display_path(source.path) + page_suffix(source.page)
        body = Text.assemble((printable(where, one_line=True), "bold"), "\n")
        if source.heading:
            body.append(printable(source.heading, one_line=True) + "\n", style="italic")
        body.append("\n" + printable(source.text.strip()))
        text.update(body)
        self.query_one("#preview", VerticalScroll).scroll_home(animate=False)

    def _source(self, option_id: str | None) -> SourceView | None:
        if self.exchange is None or option_id is None:
            return None
        return next((s for s in self.exchange.sources if str(s.n) == option_id), None)

    @on(OptionList.OptionHighlighted)
    def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        event.stop()
        self._preview(self._source(event.option.id))

    @on(OptionList.OptionSelected)
    def _selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        source = self._source(event.option.id)
        if source is not None and self.exchange is not None:
            self.post_message(self.Opened(self.exchange, source.n))


# -- status bar ---------------------------------------------------------------------------------


class StatusBar(Vertical):
    """Two lines: the knowledge base, mode and model; then the last answer's time split and
    speed, and what runs in the background (loading a model, an ingest)."""

    kb_text: reactive[str] = reactive("")
    model_text: reactive[str] = reactive("")
    mode_text: reactive[str] = reactive("")
    answer_text: reactive[str] = reactive("")
    activity: reactive[str] = reactive("")

    def compose(self) -> ComposeResult:
        with Horizontal(classes="status-row"):
            yield Label(id="status-kb")
            yield Label(id="status-mode")
            yield Label(id="status-model")
        with Horizontal(classes="status-row"):
            yield Label("no answer yet", id="status-answer")
            yield Label(id="status-activity")

    def _set(self, widget_id: str, value: str) -> None:
        for label in self.query(f"#{widget_id}").results(Label):
            label.update(Text(printable(value, one_line=True)))

    def watch_kb_text(self, value: str) -> None:
        self._set("status-kb", value)

    def watch_model_text(self, value: str) -> None:
        self._set("status-model", f"model {value}" if value else "")

    def watch_mode_text(self, value: str) -> None:
        self._set("status-mode", value)

    def watch_answer_text(self, value: str) -> None:
        self._set("status-answer", f"last: {value}" if value else "no answer yet")

    def watch_activity(self, value: str) -> None:
        self._set("status-activity", value)

    def on_mount(self) -> None:
        self.watch_kb_text(self.kb_text)
        self.watch_model_text(self.model_text)
        self.watch_mode_text(self.mode_text)
        self.watch_answer_text(self.answer_text)
        self.watch_activity(self.activity)


def answer_summary(answer: Answer) -> str:
    """``embed 12 ms · search 3 ms · gen 1.9 s · total 2.0 s · 24.0 tok/s`` (status bar)."""
    t = answer.timings_ms

    def ms(value: float) -> str:
        return f"{value / 1000:.1f} s" if value >= 1000 else f"{value:.0f} ms"

    parts = []
    if t.get("embed") or t.get("search"):
        parts.append(f"embed {ms(t.get('embed', 0.0))}")
        parts.append(f"search {ms(t.get('search', 0.0))}")
    if t.get("generate"):
        parts.append(f"gen {ms(t['generate'])}")
    parts.append(f"total {ms(t.get('total', 0.0))}")
    if answer.tokens_per_s:
        parts.append(f"{answer.tokens_per_s:.1f} tok/s")
    return " · ".join(parts)
