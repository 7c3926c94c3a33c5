"""Answer commands: ``ask`` (one question, streamed) and ``batch`` (question files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from appliance.batch import run_batch
from appliance.cli._base import AppContext, cli, err, json_line, lit, out, pass_ctx
from appliance.errors import InputError
from appliance.pipeline import MODES, Pipeline
from appliance.types import FLAG_NOTES, NOT_GENERATED, Answer, page_suffix, unique_sections

__all__: list[str] = []

_MODE_HELP = (
    "base: the model alone; rag: retrieval + the answer model; ft / hybrid: the fine-tuned "
    "model without / with retrieval [default: hybrid once a fine-tuned model ships, else rag]."
)


def print_sources(answer: Answer, full_paths: bool = True) -> None:
    """Print the cited sources, or, for an abstention, the closest sections."""
    if answer.abstained:
        closest = unique_sections(answer.closest)
        if closest:
            out.print("[dim]Closest sources:[/]")
        for c in closest:
            out.print(f"  [dim]- {lit(os.path.basename(c.path))}{page_suffix(c.page)}  "
                      f"{lit(c.heading)}[/]")
        return
    if not answer.citations:
        out.print("[yellow]No source cited.[/]")
    for c in answer.citations:
        path = c.path if full_paths else os.path.basename(c.path)
        out.print(f"  [bold]\\[{c.n}][/] {lit(path)}{page_suffix(c.page)}  "
                  f"[green]{lit(c.heading)}[/]")


def timing_line(answer: Answer) -> str:
    """``mode · model · seconds (search, generate) · tokens/s``, or why nothing was generated.

    A number and its unit are joined by a no-break space, so a narrow terminal wraps the
    line between measurements, never inside one.
    """
    t = answer.timings_ms
    nb = "\u00a0"
    head = (f"{answer.mode} · {answer.model} · {t.get('total', 0) / 1000:.1f}{nb}s "
            f"(search{nb}{t.get('embed', 0) + t.get('search', 0):.0f}{nb}ms")
    skipped = [FLAG_NOTES[f] for f in NOT_GENERATED if f in answer.flags]
    if skipped:
        return head + "; " + skipped[0] + ")"
    if not answer.tokens.get("completion"):
        return head + "; nothing generated)"
    return (head + f", generate{nb}{t.get('generate', 0) / 1000:.1f}{nb}s) · "
            f"{answer.tokens_per_s:.1f}{nb}tokens/s")


@cli.command(short_help="Answer a question from a knowledge base, with citations.")
@click.argument("question")
@click.option("--kb", default="default", show_default=True, help="Knowledge base to answer from.")
@click.option("--mode", type=click.Choice(MODES), default=None, help=_MODE_HELP)
@click.option("--model", default=None, help="Registry id of the model (`appliance models list`).")
@click.option("--json", "as_json", is_flag=True, help="Print the answer record as JSON.")
@pass_ctx
def ask(c: AppContext, question: str, kb: str, mode: str | None, model: str | None,
        as_json: bool) -> None:
    """Answer QUESTION from a knowledge base, citing its sources with [n].

    The answer streams as it is generated, then the cited sources are listed. When the
    documents do not contain the answer it says so and shows the closest sources.

    \b
    Example:
      appliance ask "How often must the pump be serviced?" --kb manual
    """
    pipeline = Pipeline(c.app)
    streamed = False

    shown: list[str] = []

    def on_token(piece: str) -> None:
        nonlocal streamed
        streamed = True
        shown.append(piece)
        out.print(piece, end="", markup=False, highlight=False)

    try:
        answer = pipeline.ask(question, kb=kb, mode=mode, model=model,
                              on_token=None if as_json else on_token)
    finally:
        pipeline.close()
    if as_json:
        click.echo(json_line(answer.to_json()))
        return
    if streamed:
        out.print()
        if answer.abstained and "".join(shown).strip() != answer.answer:
            # what streamed was set aside (empty once the [n] are removed, or cut off)
            out.print(answer.answer, markup=False)
        elif "stopped:loop" in answer.flags:
            out.print("[dim](stopped: the model began repeating itself; the answer record "
                      "keeps the text before the repeat)[/]")
    else:
        out.print(answer.answer, markup=False)
    print_sources(answer)
    err.print(f"[dim]{lit(timing_line(answer))}[/]")


@cli.command(short_help="Answer a file of questions into .jsonl, .csv or .md.")
@click.argument("questions", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Answers file: .jsonl (default), .csv or .md.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "md"]), default=None,
              help="Output format when the extension does not say.")
@click.option("--kb", default="default", show_default=True, help="Knowledge base to answer from.")
@click.option("--mode", type=click.Choice(MODES), default=None, help=_MODE_HELP)
@click.option("--model", default=None, help="Registry id of the model.")
@pass_ctx
def batch(c: AppContext, questions: Path, output: Path, fmt: str | None, kb: str,
          mode: str | None, model: str | None) -> None:
    """Answer every question of a .txt, .jsonl or .csv file into OUTPUT.

    .txt: one question per line; .jsonl: {"id", "question", ...}; .csv: a `question` column
    (optional `id`). Resumable: a rerun skips ids already answered, and a kill loses at most
    the question in flight. Bad rows are reported with their line numbers and skipped.

    \b
    Example:
      appliance batch questions.txt -o answers.jsonl --kb manual
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    pipeline = Pipeline(c.app)
    progress = Progress(TextColumn("[bold]Answering"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                        console=err, transient=True)
    task = progress.add_task("answer", total=None, eta="?")

    def on_progress(done: int, total: int, eta: float | None) -> None:
        text = "?" if eta is None else f"{int(eta // 60)}:{int(eta % 60):02d}"
        progress.update(task, completed=done, total=total, eta=text)

    try:
        with progress:
            summary = run_batch(
                questions, output,
                lambda q: pipeline.ask(q.question, id=q.id, kb=kb, mode=mode, model=model),
                fmt=fmt, progress=on_progress,
                on_failure=lambda f: err.print(f"[red]failed[/] line {f.line} ({lit(f.id)}): "
                                               f"{lit(f.error)}"),
            )
    finally:
        pipeline.close()
    for bad in summary.bad_rows:
        err.print(f"[yellow]skipped[/] {lit(bad)}")
    if not summary.total:
        raise InputError(f"{questions} holds no question to answer"
                         + (" (every row was bad, see above)" if summary.bad_rows else "")
                         + "; give a .txt with one question a line, a .jsonl or a .csv.")
    # "answered" counts abstentions too: say so, so the counts do not read as disjoint
    out.print(f"[bold]{lit(output)}[/]")  # whole, on its own line
    out.print(f"  {summary.answered} answered ({summary.abstained} of them abstained), "
              f"{len(summary.failed)} failed, {summary.skipped} already done, "
              f"{len(summary.bad_rows)} bad rows")
    if summary.latencies_ms:
        speed = (f", {summary.tokens_per_s:.1f} tokens/s" if summary.completion_tokens
                 else ", nothing generated")
        out.print(f"  latency p50 {summary.p50_ms / 1000:.1f} s, p95 "
                  f"{summary.p95_ms / 1000:.1f} s{speed}")
    elif summary.skipped and not summary.failed:
        out.print("  nothing left to answer: every question already has its answer in the "
                  "output", markup=False)
    if summary.failed:
        sys.exit(1)
