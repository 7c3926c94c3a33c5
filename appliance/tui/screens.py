"""Screens and dialogs: help, errors, pickers, a source in full, feedback, ingest."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from rich import box
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import (
    Button,
    DataTable,
    DirectoryTree,
    Footer,
    Input,
    Label,
    OptionList,
    ProgressBar,
    RadioButton,
    RadioSet,
    Static,
    TextArea,
)
from textual.widgets.option_list import Option

from appliance.tui.sources import cited_passage, citing_sentences, display_path, printable
from appliance.tui.widgets import ExchangeData, PlainInput, PlainTextArea
from appliance.types import IngestReport

if TYPE_CHECKING:
    from appliance.tui.app import ApplianceTUI

__all__ = [
    "ErrorDialog",
    "FeedbackScreen",
    "HelpScreen",
    "IngestScreen",
    "PickerScreen",
    "SourceScreen",
]

HELP_INTRO = (
    "Type a question and press Enter: the answer streams in and cites its sources as [n]. "
    "Click a citation, or Tab to it and press Enter, to read the source."
)

HELP_KEYS: list[tuple[str, str, str]] = [
    ("Enter", "question", "ask"),
    ("Up / Down", "question", "previous / next question"),
    ("Esc / Ctrl+C", "chat", "stop the answer being written"),
    ("Tab / Shift+Tab", "anywhere", "move between the question, citations, buttons, sources"),
    ("Enter / click", "citation, source", "open the source in full"),
    ("F1", "anywhere", "this help"),
    ("F2", "chat", "switch mode (rag, base, ft, hybrid)"),
    ("F3", "chat", "switch model (generators of the registry)"),
    ("F4", "chat", "switch knowledge base"),
    ("F5", "chat", "ingest a folder (runs in the background)"),
    ("F6", "chat", "show / hide the sources panel"),
    ("F7", "chat", "feedback on the last answer (good, bad, corrected)"),
    ("Ctrl+L", "chat", "clear the conversation"),
    ("Left / Right, P / N", "source", "previous / next source of the answer"),
    ("Ctrl+S", "feedback", "save the rating"),
    ("Enter, Ctrl+R", "ingest", "start ingesting the folder"),
    ("Esc", "dialog, screen", "close, back to the chat (an ingest goes on)"),
    ("Ctrl+P", "anywhere", "command palette"),
    ("Ctrl+Q", "anywhere", "quit"),
]

HELP_NOTES = (
    "Modes: rag answers from the knowledge base with citations; base asks the model alone; "
    "ft and hybrid use a fine-tuned model (train one with `appliance train`). "
    "Feedback is kept in feedback.jsonl in the data directory; "
    "`appliance feedback export -o data.jsonl` turns it into training data."
)


def _help_table() -> Table:
    table = Table(box=box.SIMPLE_HEAD, expand=True, pad_edge=False, show_edge=False)
    table.add_column("Key", style="bold", no_wrap=True)
    table.add_column("Where", style="dim", no_wrap=True)
    table.add_column("Does")
    for key, where, does in HELP_KEYS:
        table.add_row(key, where, does)
    return table


class HelpScreen(ModalScreen[None]):
    """Every key, and what the modes mean."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Label("appliance · keys", classes="dialog-title")
            yield Static(Text(HELP_INTRO), classes="help-text")
            yield Static(_help_table(), id="help-keys")
            yield Static(Text(HELP_NOTES), classes="help-text")
        yield Footer()

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ErrorDialog(ModalScreen[None]):
    """An error as one clear sentence, with its title."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter", "close", "Close")]

    def __init__(self, title: str, message: str) -> None:
        super().__init__()
        self.title_text = title
        self.message = message

    def compose(self) -> ComposeResult:
        with Vertical(id="error-box", classes="dialog"):
            yield Label(Text(printable(self.title_text, one_line=True)), id="error-title")
            yield Static(Text(printable(self.message)), id="error-message")
            with Horizontal(classes="buttons"):
                yield Button("OK", variant="error", id="error-ok")

    def on_mount(self) -> None:
        self.query_one("#error-ok", Button).focus()

    @on(Button.Pressed, "#error-ok")
    def action_close(self) -> None:
        """Close the dialog."""
        self.dismiss(None)


@dataclass(frozen=True)
class Choice:
    """One entry of a picker."""

    id: str
    label: str
    note: str = ""


class PickerScreen(ModalScreen[str | None]):
    """Choose one of a few entries (a mode, a model, a knowledge base)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: Sequence[Choice], current: str | None) -> None:
        super().__init__()
        self.title_text = title
        self.choices = list(choices)
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="picker-box", classes="dialog"):
            yield Label(Text(printable(self.title_text, one_line=True)), classes="dialog-title")
            options = []
            for c in self.choices:
                prompt = Text.assemble(("● " if c.id == self.current else "  ", "green"),
                                       (printable(c.label, one_line=True), "bold"))
                if c.note:
                    prompt.append(f"\n  {printable(c.note, one_line=True)}", style="dim")
                options.append(Option(prompt, id=c.id))
            yield OptionList(*options, id="picker-list")
            yield Label("Enter choose · Esc cancel", classes="hint")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        ids = [c.id for c in self.choices]
        if self.current in ids:
            options.highlighted = ids.index(self.current)
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        """Close without choosing."""
        self.dismiss(None)


class SourceScreen(ModalScreen[None]):
    """One source of an answer in full, the passage the answer cites highlighted."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        Binding("left,p", "step(-1)", "Previous source", priority=True),
        Binding("right,n", "step(1)", "Next source", priority=True),
    ]

    def __init__(self, exchange: ExchangeData, n: int) -> None:
        super().__init__()
        self.exchange = exchange
        self.n = n

    def compose(self) -> ComposeResult:
        with Vertical(id="source-box", classes="dialog"):
            yield Label("", id="source-title", classes="dialog-title")
            yield Label("", id="source-heading")
            yield Label("", id="source-scores")
            yield Static("", id="source-claim")
            with VerticalScroll(id="source-scroll"):
                yield Static("", id="source-text")
        yield Footer()

    def on_mount(self) -> None:
        self._show()
        self.query_one("#source-scroll").focus()

    def _show(self) -> None:
        source = next((s for s in self.exchange.sources if s.n == self.n), None)
        title = self.query_one("#source-title", Label)
        text_widget = self.query_one("#source-text", Static)
        if source is None:
            title.update(Text(f"[{self.n}] is not among this answer's sources"))
            text_widget.update("")
            return
        total = len(self.exchange.sources)
        title.update(Text.assemble((f"[{source.n}/{total}] ", "bold"),
                                   printable(display_path(source.path), one_line=True)))
        self.query_one("#source-heading", Label).update(
            Text(printable(source.heading, one_line=True) or "(no heading)"))
        self.query_one("#source-scores", Label).update(Text(source.scores_line()))
        answer = self.exchange.answer
        claims = citing_sentences(answer.answer, source.n) if answer else []
        claim = self.query_one("#source-claim", Static)
        claim.display = bool(claims)
        if claims:
            plain = printable(re.sub(r"\*\*|__|`", "", " ".join(claims)), one_line=True)
            claim.update(Text.assemble(("Cited for: ", "bold"), plain))
        body = Text(printable(source.text.strip())
                    or "(the text of this chunk is not available)")
        span = cited_passage(body.plain, claims) if claims else None
        if span is not None:
            body.stylize("reverse bold", *span)
        text_widget.update(body)
        scroll = self.query_one("#source-scroll", VerticalScroll)
        scroll.scroll_home(animate=False)
        if span is not None:
            self.call_after_refresh(self._scroll_to_passage, body.plain[: span[0]])

    def _scroll_to_passage(self, before: str) -> None:
        scroll = self.query_one("#source-scroll", VerticalScroll)
        width = max(10, scroll.scrollable_content_region.width)
        lines = Text(before).wrap(self.app.console, width)
        scroll.scroll_to(y=max(0, len(lines) - 3), animate=False)

    def action_step(self, step: int) -> None:
        """Show the previous or next source of the answer."""
        numbers = [s.n for s in self.exchange.sources]
        if self.n in numbers:
            i = (numbers.index(self.n) + step) % len(numbers)
            self.n = numbers[i]
            self._show()

    def action_close(self) -> None:
        """Back to the chat."""
        self.dismiss(None)


class FeedbackScreen(ModalScreen[tuple[str, str] | None]):
    """Good or bad, and optionally the answer it should have been."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "save", "Save"),
    ]

    def __init__(self, exchange: ExchangeData, rating: str = "good") -> None:
        super().__init__()
        self.exchange = exchange
        self.rating = rating

    def compose(self) -> ComposeResult:
        with Vertical(id="feedback-box", classes="dialog"):
            yield Label("Feedback on the answer", classes="dialog-title")
            yield Static(Text.assemble(("❯ ", "bold"),
                                       printable(self.exchange.question, one_line=True)),
                         id="feedback-question")
            with RadioSet(id="feedback-rating"):
                yield RadioButton("Good answer", value=self.rating == "good", id="rate-good")
                yield RadioButton("Bad answer", value=self.rating == "bad", id="rate-bad")
            yield Label("Corrected answer (optional; it becomes training data):")
            yield PlainTextArea(id="feedback-correction", soft_wrap=True)
            with Horizontal(classes="buttons"):
                yield Button("Save", variant="primary", id="feedback-save")
                yield Button("Cancel", id="feedback-cancel")
        yield Footer()

    def on_mount(self) -> None:
        if self.rating == "bad":
            self.query_one(TextArea).focus()
        else:
            self.query_one(RadioSet).focus()

    @on(Button.Pressed, "#feedback-save")
    def action_save(self) -> None:
        """Save the rating and the correction."""
        rating = "bad" if self.query_one("#rate-bad", RadioButton).value else "good"
        correction = self.query_one(TextArea).text.strip()
        self.dismiss((rating, correction))

    @on(Button.Pressed, "#feedback-cancel")
    def action_cancel(self) -> None:
        """Close without saving."""
        self.dismiss(None)


def _cell(value: str) -> Text:
    """A report table cell shown as it is: DataTable reads a plain string as markup, so
    a path like ``a[/x].md`` would crash it and ``[@click=app.quit]`` would run."""
    return Text(printable(value, one_line=True))


class _FolderTree(DirectoryTree):
    """Folders and the files ingest reads."""

    def __init__(self, path: str, extensions: Iterable[str], *, id: str | None = None) -> None:
        super().__init__(path, id=id)
        self.extensions = {e.lower() for e in extensions}

    def on_mount(self) -> None:
        self.root.label = Text(f"{Path.cwd().name or '/'}  (working directory)"
                               if self.path in (".", Path(".")) else str(self.path))

    def process_label(self, label: str | Text) -> Text:
        """A file name as it is (never markup), control characters shown as ``�``."""
        if isinstance(label, str):
            label = Text(printable(label, one_line=True))
        return super().process_label(label)

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        return [
            p for p in paths
            if not p.name.startswith(".")
            and (p.is_dir() or p.suffix.lower() in self.extensions)
        ]


class IngestScreen(Screen[None]):
    """Type or pick a folder and ingest it in the background; the chat stays usable."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back to chat"),
        Binding("ctrl+r", "start", "Ingest"),
    ]

    def __init__(self, kb: str, extensions: Iterable[str], root: str = ".") -> None:
        super().__init__()
        self.kb = kb
        self.extensions = list(extensions)
        self.root = root
        self.running = False
        self._rows: list[str] = []

    @property
    def tui(self) -> ApplianceTUI:
        """The app, typed."""
        from appliance.tui.app import ApplianceTUI

        assert isinstance(self.app, ApplianceTUI)
        return self.app

    def compose(self) -> ComposeResult:
        with Vertical(id="ingest-form"):
            yield Label("Ingest documents", classes="screen-title")
            with Horizontal(classes="field"):
                yield Label("Folder", classes="field-label")
                yield PlainInput(placeholder="a folder or file; pick one below or type it",
                                 id="ingest-path")
            with Horizontal(classes="field"):
                yield Label("Into KB", classes="field-label")
                yield PlainInput(self.kb, id="ingest-kb")
                yield Button("Ingest", variant="primary", id="ingest-start")
        with Horizontal(id="ingest-body"):
            yield _FolderTree(self.root, self.extensions, id="ingest-tree")
            with Vertical(id="ingest-run"):
                yield ProgressBar(id="ingest-progress", show_eta=False)
                yield Label("Idle: choose a folder and press Ingest.", id="ingest-current")
                yield Label("", id="ingest-summary")
                table: DataTable[str | Text] = DataTable(id="ingest-report", cursor_type="row")
                table.add_column("", key="mark", width=1)
                table.add_column("file", key="file")
                table.add_column("result", key="result")
                yield table
        yield Footer()

    def on_mount(self) -> None:
        # No bar until an ingest starts: an idle bar pulses as if something were running.
        self.query_one(ProgressBar).display = self.running
        self.query_one("#ingest-path", Input).focus()

    @on(DirectoryTree.DirectorySelected)
    @on(DirectoryTree.FileSelected)
    def _picked(self, event: DirectoryTree.DirectorySelected | DirectoryTree.FileSelected) -> None:
        event.stop()
        self.query_one("#ingest-path", Input).value = display_path(str(event.path))

    @on(Input.Submitted, "#ingest-path")
    @on(Input.Submitted, "#ingest-kb")
    @on(Button.Pressed, "#ingest-start")
    def action_start(self) -> None:
        """Start ingesting the chosen folder."""
        if self.running:
            self.notify("An ingest is already running.", severity="warning", markup=False)
            return
        raw = self.query_one("#ingest-path", Input).value.strip()
        kb = self.query_one("#ingest-kb", Input).value.strip() or self.kb
        if not raw:
            self.notify("Type or pick a folder first.", severity="warning", markup=False)
            return
        path = Path(os.path.expanduser(raw))
        self.tui.start_ingest(path, kb)

    def begin(self, path: Path, kb: str) -> None:
        """An ingest of ``path`` into ``kb`` started."""
        self.running = True
        self.kb = kb
        self._rows = []
        self.query_one(DataTable).clear()
        self.query_one("#ingest-summary", Label).update("")
        bar = self.query_one(ProgressBar)
        bar.display = True
        bar.update(total=None, progress=0)
        self.query_one("#ingest-current", Label).update(
            Text(printable(f"Reading {display_path(str(path))} into '{kb}'…", one_line=True)))
        self.query_one("#ingest-start", Button).disabled = True

    def progress(self, done: int, total: int, path: str) -> None:
        """One file is being read (``done`` files finished of ``total``)."""
        bar = self.query_one(ProgressBar)
        bar.update(total=max(total, 1), progress=done)
        table: DataTable[str | Text] = self.query_one(DataTable)
        if self._rows:
            last = self._rows[-1]
            table.update_cell(last, "result", "ok")
            table.update_cell(last, "mark", "✓")
        if path:
            key = f"{len(self._rows)}:{path}"
            self._rows.append(key)
            table.add_row("…", _cell(display_path(path)), "reading", key=key)
            table.move_cursor(row=len(self._rows) - 1)
            self.query_one("#ingest-current", Label).update(
                Text(printable(f"{done + 1}/{total}  {display_path(path)}", one_line=True)))

    def finish(self, report: IngestReport | None, error: str = "", *,
               stopped: bool = False) -> None:
        """The ingest ended (``report`` None when it failed, or was ``stopped``)."""
        self.running = False
        self.query_one("#ingest-start", Button).disabled = False
        current = self.query_one("#ingest-current", Label)
        summary = self.query_one("#ingest-summary", Label)
        if report is None:
            current.update("Ingest stopped." if stopped else "Ingest failed.")
            summary.update(Text(printable(error)))
            return
        table: DataTable[str | Text] = self.query_one(DataTable)
        failed = {f.path: f.reason for f in report.failed}
        keys = {key.split(":", 1)[1]: key for key in self._rows}
        for path, reason in failed.items():
            key = keys.get(path)
            if key is None:
                table.add_row("✗", _cell(display_path(path)), _cell(reason))
            else:
                table.update_cell(key, "mark", "✗")
                table.update_cell(key, "result", _cell(reason))
        current.update(Text(printable(f"Done: '{self.kb}' is up to date.", one_line=True)))
        summary.update(Text(
            f"{report.added} added · {report.updated} updated · {report.unchanged} unchanged"
            f" · {len(report.failed)} failed · {report.chunks} chunks"
            f" in {report.seconds:.1f}\u00a0s"))

    def action_back(self) -> None:
        """Back to the chat (an ingest goes on in the background)."""
        self.app.pop_screen()
