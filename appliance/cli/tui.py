"""The terminal UI and feedback commands: ``appliance tui`` and ``appliance feedback``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli._base import AppContext, cli, count, out, pass_ctx
from appliance.generate import MODES

__all__ = ["feedback", "feedback_export", "tui"]


@cli.command(short_help="Open the terminal interface (also: plain `appliance`).")
@click.option("--kb", default=None,
              help="Knowledge base to ask [default: 'default', else the first one].")
@click.option("--mode", type=click.Choice(MODES), default=None,
              help="Answer mode [default: hybrid once a fine-tuned model ships, else rag].")
@click.option("--model", default=None, help="Generator model id from the registry.")
@pass_ctx
def tui(c: AppContext, kb: str | None, mode: str | None, model: str | None) -> None:
    """Open the terminal interface: ask, read sources, ingest folders, give feedback.

    `appliance` with no arguments opens it too. Press F1 inside for every key.
    """
    from appliance.tui import run_tui

    run_tui(c.app, kb=kb, mode=mode, model=model)


@cli.group(short_help="Export the ratings given in the TUI as training data.")
def feedback() -> None:
    """Ratings given in the terminal interface, and their export as training data."""


@feedback.command("export",
                  short_help="Write the rated answers as chat JSONL for `appliance train`.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Chat JSONL file to write.")
@click.option("--kb", default=None, help="Only feedback on answers from this knowledge base.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def feedback_export(c: AppContext, output: Path, kb: str | None, force: bool,
                    as_json: bool) -> None:
    """Write chat JSONL for `appliance train` from the feedback given so far.

    Each rated answer becomes one {"messages": [system, user, assistant]} line, with the
    prompt the pipeline used (numbered sources for rag and hybrid answers) and the corrected
    answer when one was typed, else the answer when it was marked good. Answers marked bad
    without a correction are skipped, and so are lines of the feedback file that are not
    ratings. An existing OUTPUT is replaced only with --force (never the feedback file
    itself, a symlink or a device).
    """
    from appliance.feedback import FeedbackStore

    store = FeedbackStore(c.app.settings.home)
    report = store.export_chat_jsonl(output, kb=kb, force=force)
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    out.print(f"wrote {count(report.written, 'example')} to {output}", markup=False)
    if not report.written and not (report.skipped_bad or report.skipped_sources):
        scope = f" from knowledge base '{kb}'" if kb else ""
        out.print(f"  no rated answers{scope} yet; rate answers in `appliance tui` with\n"
                  "  F7 (good, bad or a correction), then export again with --force",
                  markup=False)
    if report.skipped_bad:
        out.print(f"  skipped {report.skipped_bad} answers marked bad without a correction")
    if report.skipped_sources:
        out.print(f"  skipped {report.skipped_sources} answers whose sources were not recorded")
    if report.skipped_lines:
        out.print(f"  skipped {report.skipped_lines} lines of {store.path} that are not ratings",
                  markup=False)
