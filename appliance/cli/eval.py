"""Evaluation commands: eval (base / rag / ft / hybrid on a held-out set), eval-retrieval."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.table import Table

from appliance.cli._base import AppContext, cli, err, json_line, lit, out, pass_ctx, progress_bar
from appliance.errors import InputError, KnowledgeBaseNotFoundError

DEFAULT_MODES = "base,rag,ft,hybrid"


@cli.command("eval", short_help="Compare base, rag, ft and hybrid answers on an eval set.")
@click.argument("eval_set", metavar="SET", type=click.Path(path_type=Path))
@click.option("--kb", default="default", show_default=True,
              help="Knowledge base the rag and hybrid modes retrieve from.")
@click.option("--modes", default=None,
              help=f"Comma-separated modes to run [default: {DEFAULT_MODES}; ft and hybrid are "
                   "skipped with a note while no fine-tuned model is registered].")
@click.option("--model", default=None, help="Model id for base and rag [default: the "
              "registry's default answer model].")
@click.option("--ft-model", default=None, help="Model id for ft and hybrid [default: the "
              "registry's default fine-tuned model].")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Evaluate at most N questions (a JSONL set's first N; a deterministic "
                   "sample of a SQuAD set).")
@click.option("--articles", default=None,
              help="SQuAD JSON only: dev, test, all or Title,Title [default: test].")
@click.option("--ingest", "force_ingest", is_flag=True,
              help="SQuAD JSON only: (re)ingest the chosen articles into --kb even if it exists.")
@click.option("-o", "--output", "out_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Report folder; answers are kept there, so a rerun resumes.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_ctx
def eval_command(c: AppContext, eval_set: Path, kb: str, modes: str | None, model: str | None,
                 ft_model: str | None, limit: int | None, articles: str | None,
                 force_ingest: bool, out_dir: Path, as_json: bool) -> None:
    """Compare base, RAG, fine-tuned and hybrid answers on a held-out eval set.

    SET is an eval-set JSONL ({"id", "question", "answers", "answerable", "gold_sources",
    "format"} per line) or a SQuAD JSON file, whose chosen --articles are ingested into
    --kb when it does not exist yet (or with --ingest). Every mode answers through the same
    pipeline as `ask` and `batch`. The -o folder receives report.md, report.html (charts
    inline, no network) and report.json, with a decision section: knowledge failures call
    for RAG, behaviour failures for fine-tuning, both for the hybrid.

    \b
    Example (the demo corpus, `appliance demo`):
      appliance eval examples/eval/pydoc-eval.jsonl --kb demo -o eval-report
    """
    from appliance.evaluate.report import mode_table, write_reports
    from appliance.evaluate.runner import (
        check_report_dir,
        load_eval_set,
        parse_modes,
        prepare_squad_kb,
        require_questions,
        run_eval,
    )
    from appliance.pipeline import Pipeline

    mode_list = parse_modes(DEFAULT_MODES if modes is None else modes)
    check_report_dir(out_dir, inputs=[eval_set])
    app = c.app
    data = load_eval_set(eval_set, articles=articles, limit=limit,
                         max_question_chars=app.settings.answer.max_question_chars)
    for bad in data.bad_rows:
        err.print(f"[yellow]skipped[/] {lit(eval_set.name)} {lit(bad)}")
    require_questions(data)  # before a SQuAD knowledge base is built for nothing
    err.print(f"[bold]Eval set[/] {lit(data.describe())}")
    if data.kind == "squad" and (force_ingest or kb not in app.list_kbs()):
        with progress_bar(f"Ingesting into '{kb}'", not as_json) as update:
            folder_report = prepare_squad_kb(app, data, kb, progress=update)
        err.print(f"ingested {folder_report['added']} added, {folder_report['updated']} "
                  f"updated, {folder_report['unchanged']} unchanged into '{kb}'")
    pipeline = Pipeline(app)
    command = "appliance " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    try:
        with progress_bar("Evaluating", not as_json) as update:
            def progress(label: str, done: int, total: int) -> None:
                update(done, total, label)

            try:
                report = run_eval(pipeline, data, out_dir, modes=mode_list, kb=kb, model=model,
                                  ft_model=ft_model, skip_unavailable=modes is None,
                                  progress=progress, command=command)
            except KnowledgeBaseNotFoundError as exc:
                raise KnowledgeBaseNotFoundError(  # one sentence: the hint before its end
                    f"{exc.message.rstrip('.')}; rag and hybrid need it (or run only "
                    "--modes base)."
                ) from None
    finally:
        pipeline.close()
    paths = write_reports(report, out_dir)
    if as_json:
        click.echo(json_line(report))
        return
    for mode, reason in report["skipped"].items():
        err.print(f"[yellow]{mode} skipped[/]: {lit(reason)}.")
    for note in report["notes"]:
        err.print(f"[yellow]note[/] {lit(note)}")
    header, rows = mode_table(report)
    table = Table(*header)
    for row in rows:
        table.add_row(*(lit(cell) for cell in row))
    out.print(table)
    if report["retrieval"]:
        r = report["retrieval"]
        out.print("retrieval: " + "  ".join(
            f"{k} {r[k]:.2f}" for k in ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10")
            if r.get(k) is not None))
    out.print(f"[bold]Decision:[/] {lit(report['decision']['headline'])}")
    out.print("report: " + ", ".join(str(p) for p in paths.values()), markup=False)


@cli.command("eval-retrieval", short_help="Score the search modes on a BEIR data set.")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--k", "k", type=click.IntRange(10, 1000), default=100, show_default=True,
              help="Hits retrieved per query (recall@k is reported beside recall@10).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_ctx
def eval_retrieval(c: AppContext, folder: Path, k: int, as_json: bool) -> None:
    """Score keyword, vector and hybrid search on a BEIR data set (retrieval only).

    DIR holds corpus.jsonl, queries.jsonl and qrels/test.tsv. The corpus is ingested into
    a temporary knowledge base (removed afterwards); reports nDCG@10, recall@10, recall@k
    and MRR@10 per search mode.
    """
    from appliance.evaluate.retrieval import evaluate_beir

    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give a BEIR data set folder.")
    with progress_bar("Retrieval eval", not as_json) as update:
        result = evaluate_beir(folder, c.app.settings, k=k,
                               progress=lambda label, d, t: update(d, t, label))
    if as_json:
        click.echo(json_line(result))
        return
    out.print(f"[bold]{lit(folder)}[/]: {result['documents']} documents "
              f"({result['chunks']} chunks), {result['queries']} judged queries, top {k}")
    for f in result["failed"]:
        err.print(f"  [yellow]not ingested[/] {lit(f)}")
    deeper = [f"recall@{k}"] if k != 10 else []
    table = Table("mode", "nDCG@10", "recall@10", *deeper, "MRR@10")
    for mode, m in result["modes"].items():
        table.add_row(mode, f"{m['ndcg@10']:.3f}", f"{m['recall@10']:.3f}",
                      *(f"{m[key]:.3f}" for key in deeper), f"{m['mrr@10']:.3f}")
    out.print(table)
    out.print(f"search {result['search_ms_per_query']} ms per query and mode; "
              f"ingest {result['ingest_s']} s")
