"""Knowledge-base commands: ingest, search, demo, kb, models; and config."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.cells import cell_len, set_cell_size
from rich.table import Column, Table

from appliance.cli._base import (
    AppContext,
    cli,
    confirm,
    count,
    describe,
    err,
    json_line,
    lit,
    out,
    pass_ctx,
    progress_bar,
)
from appliance.config import RetrieveSettings, explain_settings
from appliance.errors import ApplianceError, InputError, KnowledgeBaseNotFoundError
from appliance.files import format_bytes, read_text
from appliance.types import page_suffix, strip_controls

# -- ingest ----------------------------------------------------------------------------------


@cli.command(short_help="Add files and folders to a knowledge base.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--kb", default="default", show_default=True, help="Knowledge base to write.")
@click.option("--collection", default="default", show_default=True,
              help="Collection the documents belong to (searches can filter by it).")
@click.option("--prune", is_flag=True, help="Remove documents whose files vanished from PATHS.")
@click.option("--strict", is_flag=True, help="Exit non-zero when any file failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def ingest(c: AppContext, paths: tuple[Path, ...], kb: str, collection: str, prune: bool,
           strict: bool, as_json: bool) -> None:
    """Add files and folders (.txt .md .rst .html .pdf .docx) to a knowledge base.

    Unchanged files are skipped by content hash, changed files replaced. Files that cannot
    be read are listed with a reason and the rest goes on. Exit 0 when the run completed,
    4 when nothing could be ingested, 1 with --strict when any file failed.

    \b
    Example:
      appliance ingest docs/ manual.pdf --kb manual
    """
    with progress_bar("Ingesting", not as_json) as update:
        report = c.app.ingest(list(paths), kb=kb, collection=collection, prune=prune,
                              progress=update)
    ok = report.added + report.updated + report.unchanged
    nothing_found = ok == 0 and not report.failed and not report.removed
    if as_json:
        out.print_json(data=report.to_json())
    elif nothing_found:
        err.print(f"No file to ingest was found in {lit(', '.join(map(str, paths)))} "
                  f"(taken from folders: {' '.join(c.app.settings.ingest.extensions)}); "
                  "nothing was ingested.")
    else:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_row("added", str(report.added))
        table.add_row("updated", str(report.updated))
        table.add_row("unchanged", str(report.unchanged))
        if prune:
            table.add_row("removed", str(report.removed))
        table.add_row("failed", f"[red]{len(report.failed)}[/]" if report.failed else "0")
        table.add_row("chunks", str(report.chunks))
        table.add_row("seconds", f"{report.seconds:.1f}")
        table.add_row("chunks/s", f"{report.chunks_per_s:.1f}")
        out.print(f"[bold]Knowledge base '{lit(kb)}'[/]")
        out.print(table)
        for f in report.failed:
            out.print(f"  [red]failed[/] {lit(f.path)}: {lit(f.reason)}")
    if (ok == 0 and report.failed) or nothing_found:
        sys.exit(4)
    if strict and report.failed:
        sys.exit(1)


# -- search ----------------------------------------------------------------------------------


@cli.command(short_help="Search a knowledge base (retrieval only, no answer).")
@click.argument("query", required=False)
@click.option("--kb", default="default", show_default=True, help="Knowledge base to search.")
@click.option("--k", "k", type=click.IntRange(1, 100), default=None,
              help=describe(RetrieveSettings, "k") + " [default: 5]")
@click.option("--mode", type=click.Choice(["hybrid", "vector", "keyword"]), default=None,
              help="vector: embedding similarity; keyword: FTS5 bm25; hybrid: both, fused "
                   "[default: retrieve.mode, hybrid].")
@click.option("--collection", default=None, help="Only search this collection.")
@click.option("--path-prefix", default=None, help="Only search documents under this path.")
@click.option("--queries", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run every line of this file as a query (one process, one model load).")
@click.option("--rerank/--no-rerank", default=None,
              help=describe(RetrieveSettings, "rerank") + " [default: off]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per query.")
@pass_ctx
def search(c: AppContext, query: str | None, kb: str, k: int | None, mode: str | None,
           collection: str | None, path_prefix: str | None, queries: Path | None,
           rerank: bool | None, as_json: bool) -> None:
    """Search a knowledge base (no generation): the chunks an answer would be built from.

    Each hit shows its file, its heading path and its score (fused from the cosine
    similarity, cos, and the keyword relevance, bm25).

    \b
    Example:
      appliance search "how often is the pump serviced" --kb manual --k 3
    """
    if queries is not None:
        if query:
            raise InputError("Give a query or --queries FILE, not both.")
        from appliance.retrieve.hybrid import check_query

        lines = read_text(queries, "a query file (one query per line)").splitlines()
        items = []
        for number, line in enumerate(lines, start=1):
            q = strip_controls(line).strip()
            if q:
                try:  # before the first search: not after pages of results
                    check_query(q)
                except InputError as exc:
                    raise InputError(f"Line {number} of {queries}: {exc.message[:1].lower()}"
                                     f"{exc.message[1:]}") from None
                items.append(q)
        if not items:
            raise InputError(f"{queries} holds no query; write one query per line.")
    elif query and strip_controls(query).strip():
        items = [strip_controls(query).strip()]
    else:
        raise InputError("Give a query, or --queries FILE with one query per line.")
    prefix = os.path.abspath(path_prefix) if path_prefix else None
    stats = functools.cache(lambda: c.app.kb_stats(kb))  # read once, and only if needed
    if collection is not None:  # a misspelt collection must not read as "no match"
        known = stats()["collections"]
        if collection not in known:
            raise InputError(
                f"Knowledge base '{kb}' has no collection '{collection}' (it has: "
                f"{', '.join(sorted(known)) or 'none'}); check --collection.")
    for q in items:
        result = c.app.search(q, kb=kb, k=k, mode=mode, collection=collection,
                              path_prefix=prefix, rerank=rerank)
        if as_json:
            click.echo(json_line(result.to_json()))
            continue
        rerank_ms = result.timings_ms.get("rerank")
        out.print(f"[bold cyan]? {lit(q)}[/]  [dim]({result.timings_ms['embed']:.0f} ms embed, "
                  f"{result.timings_ms['search']:.0f} ms search"
                  + (f", {rerank_ms:.0f} ms rerank" if rerank_ms is not None else "") + ")[/]")
        if not result.hits:
            if stats()["documents"] == 0:
                out.print(f"  [yellow]no match: knowledge base '{lit(kb)}' holds no documents "
                          f"yet;[/]\n  [yellow]add some with `appliance ingest PATH --kb "
                          f"{lit(kb)}`[/]")
            else:
                out.print("  [yellow]no match[/]")
        for rank, hit in enumerate(result.hits, start=1):
            v, kw = hit.scores.get("vector"), hit.scores.get("keyword")
            rr = hit.scores.get("rerank")
            channels = " ".join(
                part for part in (
                    f"cos {v:.2f}" if v is not None else "",
                    f"bm25 {kw:.1f}" if kw is not None else "",
                    f"rerank {rr:.2f}" if rr is not None else "",
                ) if part
            )
            # the path whole on its own line (a user copies it); the rest fits the terminal
            out.print(f"  [bold]{rank}.[/] {lit(hit.path)}{page_suffix(hit.page)}")
            score = f"score {hit.score:.4f}" + (f" ({channels})" if channels else "")
            if 5 + cell_len(hit.heading) + 2 + len(score) <= out.width:
                out.print(f"     [green]{lit(hit.heading)}[/]  [dim]{score}[/]")
            else:  # a long heading path: the score on a line of its own
                out.print(f"     [green]{lit(hit.heading)}[/]")
                out.print(f"     [dim]{score}[/]")
            for line in _snippet_lines(hit.text, out.width - 5):
                out.print(f"     [dim]{lit(line)}[/]")


def _snippet_lines(text: str, width: int, lines: int = 2) -> list[str]:
    """The start of ``text`` as at most ``lines`` lines of ``width`` terminal columns (a
    Chinese or Japanese character takes two), "…" when cut."""
    from rich.text import Text

    width = max(width, 20)
    words = " ".join(text.split())
    wrapped = [line.plain.rstrip() for line in Text(words).wrap(out, width, overflow="fold")]
    wrapped = wrapped or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = set_cell_size(wrapped[-1], width - 1).rstrip() + "…"
    return wrapped


# -- demo --------------------------------------------------------------------------------------


@cli.command(short_help="Ingest CPython's reference topics; answer sample questions.")
@click.option("--kb", default="demo", show_default=True, help="Knowledge base to build.")
@click.option("--corpus", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the corpus [default: DATA_DIR/demo/pydoc-topics].")
@click.option("--answers", type=click.IntRange(0, 5), default=4, show_default=True,
              help="How many sample questions to answer (the fourth is not in the corpus: "
                   "the answer says so).")
@click.option("--model", default=None, help="Answer model id [default: the registry's].")
@pass_ctx
def demo(c: AppContext, kb: str, corpus: Path | None, answers: int, model: str | None) -> None:
    """Build a knowledge base from CPython's reference topics and answer sample questions.

    The corpus (79 documents from the standard library's pydoc_data) is written as files,
    ingested with the real embedder, then sample questions are answered with citations.
    """
    from appliance.cli.answer import print_sources, timing_line
    from appliance.demo import SAMPLE_QUESTIONS, write_pydoc_corpus

    target = corpus or c.app.settings.home / "demo" / "pydoc-topics"
    changed = write_pydoc_corpus(target)
    out.print(f"[bold]Demo corpus[/] {lit(target)} ({changed} files written)")
    with progress_bar("Ingesting", True) as update:
        report = c.app.ingest([target], kb=kb, progress=update)
    out.print(f"ingested: {report.added} added, {report.updated} updated, {report.unchanged} "
              f"unchanged, {len(report.failed)} failed, {report.chunks} chunks in "
              f"{report.seconds:.1f} s")
    from appliance.pipeline import Pipeline

    pipeline = Pipeline(c.app)
    try:
        for q in SAMPLE_QUESTIONS[:answers]:
            out.print(f"\n[bold cyan]? {lit(q)}[/]")
            answer = pipeline.ask(q, kb=kb, model=model)
            out.print(answer.answer, markup=False)
            print_sources(answer, full_paths=False)
            out.print(f"  [dim]{lit(timing_line(answer))}[/]")
    finally:
        pipeline.close()
    out.print(f"\nAsk your own: [bold]appliance ask \"...\" --kb {lit(kb)}[/]  "
              f"(or [bold]appliance tui --kb {lit(kb)}[/])")


# -- kb ----------------------------------------------------------------------------------------


@cli.group()
def kb() -> None:
    """List, inspect, check, re-embed and remove knowledge bases."""


@kb.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def kb_list(c: AppContext, as_json: bool) -> None:
    """List the knowledge bases in the data directory."""
    stats: list[dict[str, Any]] = []
    for name in c.app.list_kbs():
        try:
            stats.append(c.app.kb_stats(name))
        except ApplianceError as exc:  # one unreadable file must not hide the others
            stats.append({"name": name, "error": exc.message})
    if as_json:
        click.echo(json.dumps(stats))
        return
    if not stats:
        out.print(f"No knowledge bases in {c.app.settings.kb_dir}; create one with "
                  "`appliance ingest PATH`.", markup=False)
        return
    table = Table("name", "documents", "chunks", "size", "embedder")
    for s in stats:
        if "error" in s:
            table.add_row(lit(s["name"]), "", "", "", f"[red]unreadable:[/] {lit(s['error'])}")
            continue
        table.add_row(lit(s["name"]), str(s["documents"]), str(s["chunks"]),
                      format_bytes(s["size_bytes"]), lit(s["embedder"]))
    out.print(table)
    if any("error" in s for s in stats):
        sys.exit(3)


@kb.command("stats")
@click.argument("name", default="default")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@pass_ctx
def kb_stats(c: AppContext, name: str, as_json: bool) -> None:
    """Documents, chunks, size and embedder of a knowledge base."""
    s = c.app.kb_stats(name)
    if as_json:
        click.echo(json.dumps(s))
        return
    collections = ", ".join(f"{name} ({count(n, 'document')})"
                            for name, n in sorted(s["collections"].items()))
    rows = [("name", s["name"]), ("path", s["path"]), ("documents", s["documents"]),
            ("chunks", s["chunks"]), ("size", format_bytes(s["size_bytes"])),
            ("embedder", f"{s['embedder']} ({s['embedder_dim']} dimensions)"
             if s["embedder_dim"] else str(s["embedder"] or "none recorded")),
            ("schema version", s["schema_version"]), ("collections", collections or "none")]
    for key, value in rows:  # the path whole: it is what a user copies
        out.print(f"[bold]{key:<15}[/] {lit(value)}")


@kb.command("check", short_help="Check integrity: SQLite, keyword index and vectors agree.")
@click.argument("name", default="default")
@pass_ctx
def kb_check(c: AppContext, name: str) -> None:
    """Check integrity: SQLite, and agreement of chunks, keyword index and vectors."""
    problems = c.app.kb_check(name)
    if problems:
        for p in problems:
            err.print(f"[red]problem[/] {lit(p)}")
        sys.exit(3)
    out.print(f"[green]ok[/] knowledge base '{lit(name)}' is consistent")


@kb.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def kb_remove(c: AppContext, name: str, yes: bool) -> None:
    """Delete a knowledge base file."""
    if not c.app.settings.kb_path(name).exists():  # kb_path also validates the name
        raise KnowledgeBaseNotFoundError(
            f"Knowledge base '{name}' does not exist; `appliance kb list` shows the existing ones.")
    if not yes:
        path = c.app.settings.kb_path(name)
        try:
            what = f"{count(c.app.kb_stats(name)['documents'], 'document')}, {path}"
        except ApplianceError:  # an unreadable file can still be removed
            what = f"unreadable, {path}"
        confirm(f"Delete knowledge base '{name}' ({what})?", yes)
    c.app.kb_remove(name)
    out.print(f"removed '{name}'", markup=False)


@kb.command("reembed")
@click.argument("name", default="default")
@pass_ctx
def kb_reembed(c: AppContext, name: str) -> None:
    """Rebuild a knowledge base's vectors with the current embedder."""
    with progress_bar("Re-embedding", True) as update:
        n = c.app.kb_reembed(name, progress=lambda d, t: update(d, t))
    out.print(f"re-embedded {n} chunks of '{name}' with {c.app.embedder.id}", markup=False)


# -- models --------------------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """List, verify, add, remove and build the registered models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print every entry as JSON.")
@pass_ctx
def models_list(c: AppContext, as_json: bool) -> None:
    """List packaged and user models: size (or missing), and which modes each generator
    answers by default (`--model ID` picks another)."""
    entries = list(c.app.registry)
    if as_json:
        click.echo(json.dumps([e.to_json() for e in entries], indent=2))
        return
    # ids are what --model takes: never cut them short, let the other columns give way
    table = Table(*(Column(h, no_wrap=True) for h in ("id", "role", "origin")),
                  Column("size", justify="right", no_wrap=True), Column("default", no_wrap=True),
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    from appliance.generate import MODES, generator_id

    uses: dict[str, list[str]] = {}
    for mode in MODES:
        with contextlib.suppress(ApplianceError):  # no fine-tuned model: ft/hybrid unused
            uses.setdefault(generator_id(c.app.registry, c.app.settings, mode), []).append(mode)
    for e in entries:
        if e.role == "generator":
            default = "/".join(uses.get(e.id, []))
        else:
            default = e.role if e.default else ""
        size = format_bytes(e.size or 0) if e.path.is_file() else "[red]missing[/]"
        table.add_row(lit(e.id), e.role, e.origin, size, default)
    out.print(table)


@models.command("verify")
@pass_ctx
def models_verify(c: AppContext) -> None:
    """Check every model file against its manifest sha256."""
    bad = 0
    for e in c.app.registry:
        try:
            c.app.registry.resolve(e.id, full=True)  # re-hash: this is the check
            out.print(f"[green]ok[/]   {lit(e.id)}")
        except ApplianceError as exc:
            bad += 1
            err.print(f"[red]fail[/] {lit(e.id)}: {lit(exc.message)}")
    if bad:
        sys.exit(5)




# -- config --------------------------------------------------------------------------------------


@cli.command("config", short_help="Show every setting: value, where it came from, what it does.")
@click.option("--changed", is_flag=True, help="Only settings that differ from their default.")
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
@pass_ctx
def config_show(c: AppContext, changed: bool, as_json: bool) -> None:
    """Show the settings in force: value, default, source and description of each.

    A setting comes from its default, then config.toml in the data directory (one [section]
    table each), then an environment variable APPLIANCE_<SECTION>__<FIELD>, which wins.

    \b
    Example:
      APPLIANCE_GENERATE__THREADS=1 appliance config --changed
    """
    settings = c.app.settings
    cfg = settings.home / "config.toml"
    rows = [r for r in explain_settings(settings) if not changed or r.value != r.default]
    if as_json:
        out.print_json(data={"home": str(settings.home), "config_file": str(cfg),
                             "config_file_exists": cfg.is_file(),
                             "settings": [r.to_json() for r in rows]})
        return
    state = "" if cfg.is_file() else " (absent: every setting is its default or from the "\
        "environment)"
    out.print(f"data directory {lit(settings.home)}; config file {lit(cfg)}{state}")
    if not rows:
        out.print("every setting has its default value")
        return
    table = Table(Column("setting", no_wrap=True), "value", "source", "what it does",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for r in rows:
        value = lit(json.dumps(r.to_json()["value"]))
        table.add_row(r.key, f"[bold]{value}[/]" if r.value != r.default else value,
                      lit(r.source), lit(r.description))
    out.print(table)
