"""Shared pieces of the CLI: the command group, consoles, the app context, progress bars."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console, ConsoleOptions, RenderableType
from rich.errors import MarkupError
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.segment import Segment

from appliance.config import load_settings
from appliance.types import UNSHOWABLE

if TYPE_CHECKING:
    from appliance.api import Appliance

__all__ = ["cli", "confirm", "count", "describe", "err", "json_line", "lit", "out", "pass_ctx",
           "progress_bar"]


def count(n: int, noun: str) -> str:
    """``1 example``, ``3 examples``: ``n`` and ``noun`` (a regular plural)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def lit(value: object) -> str:
    """``value`` as text that Rich prints literally inside a markup template.

    Paths, headings, queries, document text and error messages come from users and their
    documents: ``[/INST]`` or ``x[i]`` in them must print as written, not as markup.
    """
    return escape(str(value))


class _Console(Console):
    """A console on which text that is not valid markup prints literally instead of
    raising (the safety net behind :func:`lit` for any value a template forgot to wrap),
    and on which no text drives the terminal: control characters (ESC, OSC, C1 codes) and
    bidirectional overrides in file names, headings, documents, model ids or answers are
    dropped from what is written; Rich's own styling and cursor codes are kept."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            super().print(*objects, **{**kwargs, "markup": False})

    def render(self, renderable: RenderableType,
               options: ConsoleOptions | None = None) -> Iterable[Segment]:
        for segment in super().render(renderable, options):
            if segment.control is None and UNSHOWABLE.search(segment.text):
                text = UNSHOWABLE.sub(
                    lambda m: "\ufffd" if "\ud800" <= m.group() <= "\udfff" else "",
                    segment.text)
                yield Segment(text, segment.style)
            else:
                yield segment


def json_line(data: Any) -> str:
    """``data`` as one line of JSON with non-ASCII text as written, except the characters
    that would drive the terminal (C1 controls, bidirectional overrides) or cannot be
    written as UTF-8 (unpaired surrogates): those are ``\\uXXXX`` escapes, which JSON
    reads back as the same string (json.dumps already escapes the other controls)."""
    return UNSHOWABLE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                            json.dumps(data, ensure_ascii=False))


out: Console = _Console(highlight=False, soft_wrap=True)
err: Console = _Console(stderr=True, highlight=False)


def describe(model: type, name: str) -> str:
    """Help text for an option, taken from the settings field it overrides."""
    return str(model.model_fields[name].description or "")  # type: ignore[attr-defined]


class AppContext:
    """Per-invocation state: the --debug flag and the Appliance, created on first use."""

    def __init__(self, debug: bool) -> None:
        self.debug = debug
        self._app: Appliance | None = None

    @property
    def app(self) -> Appliance:
        """The Appliance (settings and models load only when a command needs them)."""
        if self._app is None:
            from appliance.api import Appliance

            self._app = Appliance(load_settings())
        return self._app


pass_ctx = click.make_pass_decorator(AppContext)


class _Group(click.Group):
    """A group whose command list never cuts a description short with "...".

    click shortens each command's first sentence to fit one line of its listing; at 80
    columns that cut most of them mid-phrase. Here a command's ``short_help`` (or, without
    one, its whole first sentence) is listed and wrapped instead.
    """

    group_class = type  # subgroups (kb, models, ...) list their commands the same way

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=1_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=_Group, invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="appliance")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Offline question answering over your own documents.

    Data (knowledge bases, feedback, trained and added models) lives in $APPLIANCE_HOME,
    else the platform's user data directory. Nothing here uses the network.

    Exit codes: 1 some items failed, 2 bad input or settings, 3 knowledge base, 4 nothing
    ingested, 5 model, 6 training or bundle, 7 a doctor check failed, 130 interrupted, 70
    unexpected (--debug shows the traceback).
    """
    ctx.obj = AppContext(debug)
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from appliance.tui import run_tui

            run_tui(ctx.obj.app)
        else:
            click.echo(ctx.get_help())


def confirm(question: str, yes: bool) -> None:
    """Ask ``question`` unless ``yes``; exit 1 when declined. With no answer to read (stdin
    at its end, as in a script or cron job) it says to pass --yes instead of "Aborted."."""
    from appliance.errors import InputError

    if yes:
        return
    try:
        agreed = click.confirm(question, err=True)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__context__, EOFError):
            err.print()
            raise InputError("No answer to the confirmation could be read (standard input "
                             "is not a terminal); nothing was removed, pass --yes to "
                             "remove without asking.") from None
        raise
    if not agreed:
        err.print("Nothing was removed.")
        sys.exit(1)


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Any]:
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}", style="dim", markup=False),
        console=err,
        transient=True,
        disable=not enabled,
    )
    with progress:
        task = progress.add_task(lit(label), total=None, item="")

        def update(done: int, total: int, item: str = "") -> None:
            name = os.path.basename(item)
            progress.update(task, completed=done, total=total, item=name[:40])

        yield update


