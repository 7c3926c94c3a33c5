"""Shared pieces of the CLI: the command group, consoles, the app context, progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
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

from appliance.config import load_settings

if TYPE_CHECKING:
    from appliance.api import Appliance

__all__ = ["cli", "describe", "err", "lit", "out", "pass_ctx", "progress_bar"]


def lit(value: object) -> str:
    """``value`` as text that Rich prints literally inside a markup template.

    Paths, headings, queries, document text and error messages come from users and their
    documents: ``[/INST]`` or ``x[i]`` in them must print as written, not as markup.
    """
    return escape(str(value))


class _Console(Console):
    """A console on which text that is not valid markup prints literally instead of
    raising: the safety net behind :func:`lit` for any value a template forgot to wrap."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            super().print(*objects, **{**kwargs, "markup": False})


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


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="appliance")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Offline question answering over your own documents.

    Data (knowledge bases, feedback, trained models) lives in $APPLIANCE_HOME, else the
    platform's user data directory. Nothing here uses the network.
    """
    ctx.obj = AppContext(debug)
    if ctx.invoked_subcommand is None:
        if sys.stdin.isatty() and sys.stdout.isatty():
            from appliance.tui import run_tui

            run_tui(ctx.obj.app)
        else:
            click.echo(ctx.get_help())


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


