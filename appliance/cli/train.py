"""Fine-tuning commands: train, train-data (check, grounded), models add, remove and build.

Nothing here imports torch, transformers or peft at import time; ``appliance train``
loads them when it runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from appliance.cli._base import (
    AppContext,
    cli,
    confirm,
    count,
    err,
    lit,
    out,
    pass_ctx,
    progress_bar,
)
from appliance.cli.commands import models
from appliance.errors import InputError
from appliance.files import format_bytes
from appliance.train.config import PRECISIONS, QUANT_TYPES, RunOptions, TrainConfig
from appliance.train.data import KIND_LABELS, DataReport, validate_chat_jsonl

_D = TrainConfig()


def _print_report(report: DataReport, limit: int = 20) -> None:
    counts = report.counts()
    parts = [f"{counts['examples']} valid", f"{counts['invalid']} invalid"]
    parts += [f"{counts[k]} {label}" for k, label in KIND_LABELS.items() if counts[k]]
    lines = count(counts["lines"], "line")
    if counts["blank"]:
        lines += f" ({counts['blank']} blank)"
    err.print(f"[bold]{lit(report.path)}[/]: {lines}: " + ", ".join(parts))
    for issue in report.issues[:limit]:
        err.print(f"  [red]line {issue.line}[/]{', ' + lit(issue.field) if issue.field else ''}: "
                  f"{lit(issue.message)}")
    more = sum(report.issue_counts.values()) - min(limit, len(report.issues))
    if more > 0:
        err.print(f"  … and {more} more")


# -- train -------------------------------------------------------------------------------------


@cli.command(short_help="Fine-tune a model with LoRA on chat JSONL and register it.")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base", required=True,
              help="Registry id of a generator GGUF (dequantized for training) or a Hugging "
                   "Face model folder.")
@click.option("--out", "out_id", default=None,
              help="Id to register the model under [default: <base>-<data name>-<quant>].")
@click.option("--epochs", type=int, default=_D.epochs, show_default=True)
@click.option("--lr", type=float, default=_D.learning_rate, show_default=True,
              help="Peak learning rate (linear decay to a tenth).")
@click.option("--rank", type=int, default=_D.r, show_default=True, help="LoRA rank r.")
@click.option("--alpha", type=int, default=_D.lora_alpha, show_default=True,
              help="LoRA alpha (the update is scaled by alpha / rank).")
@click.option("--dropout", type=float, default=_D.lora_dropout, show_default=True,
              help="LoRA dropout.")
@click.option("--max-len", type=int, default=_D.max_len, show_default=True,
              help="Longest example in tokens, chat template included; longer ones are errors.")
@click.option("--val-split", type=float, default=_D.val_split, show_default=True,
              help="Share of examples held out for validation loss and the parity check.")
@click.option("--quant", type=click.Choice(QUANT_TYPES), default=_D.quant, show_default=True,
              help="GGUF type of the exported model.")
@click.option("--layers", type=int, default=_D.layers, show_default=True,
              help="Adapt only the last N transformer blocks (0: all); fewer train faster.")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True)
@click.option("--grad-accum", type=int, default=_D.grad_accum, show_default=True,
              help="Batches per optimiser step.")
@click.option("--max-steps", type=int, default=0, show_default=True,
              help="Stop after this many optimiser steps (0: all epochs).")
@click.option("--seed", type=int, default=_D.seed, show_default=True)
@click.option("--save-every", type=int, default=RunOptions.save_every, show_default=True,
              help="Optimiser steps between checkpoints.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA when present, else CPU.")
@click.option("--threads", type=int, default=0, help="CPU threads for torch (0: default).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="auto",
              show_default=True,
              help="bf16: autocast matrix products to bfloat16 (weights stay float32); auto: "
                   "bf16 where the GPU or CPU computes it natively (AVX512-BF16, AMX).")
@click.option("--force", is_flag=True,
              help="Replace an existing model with this id; register even if parity fails.")
@click.option("--resume/--no-resume", default=True, show_default=True,
              help="Continue from the last checkpoint of the same run (--no-resume discards "
                   "checkpoints).")
@click.option("--adapter-gguf", is_flag=True,
              help="Also write the adapter alone as a GGUF LoRA (llama.cpp lora_path).")
@click.option("--json", "as_json", is_flag=True, help="Print the registered entry as JSON.")
@pass_ctx
def train(c: AppContext, data: Path, base: str, out_id: str | None, epochs: int, lr: float,
          rank: int, alpha: int, dropout: float, max_len: int, val_split: float, quant: str,
          layers: int, batch_size: int, grad_accum: int, max_steps: int, seed: int, save_every: int,
          device: str, threads: int, precision: str, force: bool, resume: bool, adapter_gguf: bool,
          as_json: bool) -> None:
    """Fine-tune a LoRA adapter on chat JSONL DATA and register the merged GGUF.

    DATA has one {"messages": [{"role", "content"}, ...]} object per line. It is checked
    first (line-numbered errors, nothing trained when any line is bad). Loss is on the
    assistant turns only, rendered with the base model's chat template. Checkpoints go to
    DATA_DIR/train/<id>/checkpoints; a killed run resumes when rerun with the same
    arguments. The adapter is merged, converted to GGUF, quantized, checked for parity with
    the merged model and registered in DATA_DIR/models/manifest.toml.
    """
    from appliance.train import fine_tune

    # examples far over --max-len are refused here, before the base model loads
    report = validate_chat_jsonl(data, max_len=max_len)
    if not report.ok:
        _print_report(report)
    report.raise_if_invalid()
    config = TrainConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, epochs=epochs,
                         learning_rate=lr, batch_size=batch_size, grad_accum=grad_accum,
                         max_len=max_len, val_split=val_split, seed=seed, max_steps=max_steps,
                         quant=quant, layers=layers)
    options = RunOptions(save_every=save_every, resume=resume, device=device, threads=threads,
                         precision=precision)
    counts = report.counts()
    err.print(f"[bold]data[/] {lit(data)}: {counts['examples']} examples, {counts['assistant']} "
              f"assistant turns")

    def log(msg: str) -> None:
        err.print(f"[dim]{lit(msg)}[/]")

    with progress_bar("Training", not as_json) as update:
        def progress(step: int, total: int, info: dict[str, Any]) -> None:
            text = f"loss {info['loss']:.4f} · epoch {info['epoch']}"
            if info.get("val_loss") is not None:
                text += f" · val {info['val_loss']:.4f}"
            update(step, total, text)

        result = fine_tune(data, base, c.app.settings, c.app.registry, out_id=out_id,
                           config=config, options=options, force=force,
                           adapter_gguf=adapter_gguf, progress=progress, log=log,
                           report=report)
    entry = result.entry
    if as_json:
        click.echo(json.dumps(entry.to_json() if entry else None, indent=2))
        return
    m = result.metrics
    table = Table(show_header=False, box=None, pad_edge=False)
    if entry is not None:
        table.add_row("id", lit(entry.id))
        table.add_row("file", lit(entry.path))
        table.add_row("size", format_bytes(entry.size or 0))
        table.add_row("sha256", entry.sha256)
    table.add_row("steps", f"{m.get('steps')} ({'resumed from ' + str(result.resumed_from) if result.resumed_from else 'fresh'})")  # noqa: E501
    for h in m.get("history", []):
        val = h.get("val_loss")
        table.add_row(f"epoch {h['epoch']}", f"train loss {h['train_loss']:.4f}" +
                      (f", validation loss {val:.4f}" if val is not None else ""))
    table.add_row("parity", result.parity.summary())
    table.add_row("seconds", ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    if result.adapter_gguf:
        table.add_row("adapter GGUF", lit(result.adapter_gguf))
    out.print(table)


# -- train-data --------------------------------------------------------------------------------


@cli.group("train-data", short_help="Check chat JSONL, or build grounded training data.")
def train_data() -> None:
    """Check chat JSONL training data, or build the grounded behaviour data."""


@train_data.command("check",
                    short_help="Validate chat JSONL; every problem with its line number.")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="Also flag examples with far more characters than this many tokens hold "
                   "(as `train --max-len` would, before loading a model).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def train_data_check(data: Path, max_len: int | None, as_json: bool) -> None:
    """Validate chat JSONL: every problem with its line number, and counts of each kind."""
    report = validate_chat_jsonl(data, max_len=max_len)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report, limit=1000)
        if report.ok:
            err.print("[green]ok[/]: ready for `appliance train`")
    if not report.ok and not report.invalid_lines:
        report.raise_if_invalid()  # no examples at all: say what the file should hold
    if not report.ok:
        sys.exit(2)


@train_data.command("grounded",
                    short_help="Build cite-or-abstain training examples from SQuAD.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Chat JSONL file to write.")
@click.option("--squad", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="SQuAD 2.0 JSON file: the questions and paragraphs.")
@click.option("--split", type=click.Choice(["dev", "all"]), default="dev", show_default=True,
              help="Articles to use: dev keeps the test split unseen for evaluation.")
@click.option("--kb", default=None,
              help="Take sources from this knowledge base (built from the chosen articles "
                   "when needed), exactly as the pipeline retrieves them; else from the "
                   "SQuAD paragraphs directly.")
@click.option("--model", "model_id", default=None,
              help="Generator whose tokenizer counts prompt tokens [default: the default "
                   "answer model].")
@click.option("--sources", type=int, default=3, show_default=True, help="Sources per prompt.")
@click.option("--abstain-share", type=float, default=0.4, show_default=True,
              help="Target share of abstaining examples.")
@click.option("--hard-negatives", type=float, default=0.2, show_default=True,
              help="Share of answerable questions turned into hard negatives.")
@click.option("--limit", type=int, default=0, help="Most examples (0: all).")
@click.option("--hold-out", type=int, default=0, show_default=True,
              help="Answerable questions kept out of every example, for calibrating the "
                   "abstention margin on questions the model never saw.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@pass_ctx
def train_data_grounded(c: AppContext, output: Path, squad: Path, split: str, kb: str | None,
                        model_id: str | None, sources: int, abstain_share: float,
                        hard_negatives: float, limit: int, hold_out: int, seed: int,
                        force: bool) -> None:
    """Build chat examples that teach answering from numbered sources with [n] citations,
    and abstaining when the sources lack the answer.

    Prompts are built by the answer pipeline's own prompt builder, so training and
    inference prompts are identical. Only SQuAD's dev-split articles are used by default.
    OUTPUT is written only when there are examples, and replaces an existing file only
    with --force. --kb must name a new knowledge base or one this command (or `appliance
    eval`) built from SQuAD: it is pruned to the chosen articles.
    """
    from appliance.evaluate.squad import load_squad, squad_corpus_dir
    from appliance.files import check_output_file
    from appliance.train.data import write_chat_jsonl
    from appliance.train.grounded import (
        GroundedOptions,
        SquadSources,
        build_grounded,
        check_squad_kb,
        held_out_articles,
    )

    check_output_file(output, force=force, inputs=[squad])

    try:
        articles = load_squad(squad)
    except ValueError as exc:
        raise InputError(f"{squad} is not a SQuAD JSON file: {exc}.") from None
    chosen, held = held_out_articles(articles)
    if split == "all":
        chosen, held = list(articles), []
        err.print("[yellow]warning[/] --split all: evaluating on these articles afterwards "
                  "measures memorisation, not grounding.")
    settings = c.app.settings
    options = GroundedOptions(sources=sources, abstain_share=abstain_share,
                              hard_negative_share=hard_negatives, limit=limit, seed=seed,
                              hold_out=hold_out, n_ctx=settings.generate.n_ctx,
                              max_tokens=settings.generate.max_tokens)
    if not chosen:
        raise InputError(f"None of the {len(articles)} articles of {squad} is in the dev split, "
                         f"so there is nothing to build; use a SQuAD file with dev-split "
                         f"articles, or --split all; {output} was left unchanged.")
    if kb:
        check_squad_kb(c.app, kb)
    count_tokens = _token_counter(c, model_id)
    if kb:
        from appliance.evaluate.runner import EvalSet, prepare_squad_kb

        with progress_bar("Ingesting", True) as update:
            prepare_squad_kb(c.app, EvalSet(items=[], source=str(squad), kind="squad",
                                            articles=chosen), kb, progress=update)

        def find(question: Any, k: int) -> list[Any]:
            return list(c.app.search(question.question, kb=kb, k=k).hits)

        examples, report = build_grounded(chosen, find, count_tokens, options, retrieved=True,
                                          exclude_articles=[a.title for a in held])
    else:
        finder = SquadSources(chosen, squad_corpus_dir(settings.home, "squad-dev"),
                              options.max_source_chars)
        examples, report = build_grounded(chosen, finder, count_tokens, options,
                                          exclude_articles=[a.title for a in held])
    if not examples:
        raise InputError(
            f"No examples were produced from the {len(chosen)} articles used "
            f"({report.held_out_questions} answerable questions held out by --hold-out, "
            f"{report.skipped} not used: beyond the mix, or no source held the answer); "
            f"lower --hold-out or "
            f"use more articles; {output} was left unchanged."
        )
    check_output_file(output, force=force, inputs=[squad])  # still so, after the work
    n = write_chat_jsonl(examples, output)
    # the path whole, outside the table
    out.print(f"wrote {count(n, 'example')} to {lit(output)}")
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("answer (cited)", str(report.answer))
    table.add_row("abstain: unanswerable", str(report.abstain_unanswerable))
    table.add_row("abstain: hard negative", str(report.abstain_hard_negative))
    if kb:
        table.add_row("abstain: not retrieved", str(report.abstain_not_retrieved))
    table.add_row("questions not used", f"{report.skipped} (beyond --limit or the abstain "
                  "mix, or no source held the answer)")
    if report.held_out_questions:
        table.add_row("questions held out", str(report.held_out_questions))
    table.add_row("articles", lit(", ".join(report.articles)))
    table.add_row("held out", lit(", ".join(report.held_out)) or "none")
    out.print(table)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a native library's chatter."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _token_counter(c: AppContext, model_id: str | None) -> Any:
    """Token counts of the answer model's tokenizer (llama.cpp, vocabulary only)."""
    from appliance.generate import generator_id

    registry = c.app.registry
    mid = model_id or generator_id(registry, c.app.settings, "rag")
    entry = registry.resolve(mid)
    try:
        from llama_cpp import Llama
    except ImportError:  # pragma: no cover - setup installs it
        return lambda text: len(text) // 4 + 1
    with _quiet_stderr():  # llama.cpp warns about the context of a vocabulary-only load
        llm = Llama(model_path=str(entry.path), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)) \
            if text else 0

    return count


# -- models add --------------------------------------------------------------------------------


@models.command("add", short_help="Register a GGUF chat model you bring (e.g. on the stick).")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--id", "model_id", required=True,
              help="Id to register it under: letters, digits, '.', '_', '-' (what --model takes).")
@click.option("--description", default="", help="What the model is (default: from its header).")
@click.option("--licence", default="", help="Its licence (default: the file's general.license).")
@click.option("--source", default="", help="Where it came from (default: the file's path).")
@click.option("--force", is_flag=True, help="Replace a user model registered under this id.")
@click.option("--json", "as_json", is_flag=True, help="Print the new registry entry as JSON.")
@pass_ctx
def models_add(c: AppContext, file: Path, model_id: str, description: str, licence: str,
               source: str, force: bool, as_json: bool) -> None:
    """Register a GGUF chat model of your own, to answer with it through --model ID.

    llama.cpp reads the file's header and vocabulary first (a second, even for gigabytes):
    a file that is not GGUF, that this llama.cpp cannot read, or that has no chat template
    (a base model) is refused and nothing is registered. The file is hard-linked into the
    data directory's models folder (copied from another file system) and hashed; your
    own file stays where it is. `appliance eval --model ID` measures it against the
    others; `appliance models remove ID` takes it out again.

    \b
    Example:
      appliance models add /media/stick/Llama-3.2-1B-Instruct-Q4_K_M.gguf --id llama-3.2-1b
      appliance ask "What does the manual say about X?" --mode rag --model llama-3.2-1b
    """
    from appliance.train.register import add_model

    with err.status(f"reading and hashing {lit(file)} ..."):
        entry, info = add_model(c.app.settings, file, model_id, force=force,
                                description=description, licence=licence, source=source)
    if as_json:
        out.print_json(data=entry.to_json())
        return
    what = ", ".join(x for x in (info.name, info.size_label, info.architecture) if x)
    context = f"{info.context_length:,}-token context, " if info.context_length else ""
    out.print(f"added '{entry.id}': {what}, {context}{format_bytes(entry.size or 0)}",
              markup=False)
    if not info.system_role:
        out.print("its chat template takes no system message: the instructions go at the start "
                  "of the question instead", markup=False)
    n_ctx = c.app.settings.generate.n_ctx
    if 0 < info.context_length < n_ctx:
        out.print(f"it was trained for {info.context_length:,} tokens, fewer than "
                  f"generate.n_ctx ({n_ctx:,}): its prompts are fitted to "
                  f"{info.context_length:,}", markup=False)
    out.print(f'answer with it: appliance ask "..." --model {entry.id}  (to make it the '
              f'default of base and rag: generate.model = "{entry.id}" in '
              f"{c.app.settings.home / 'config.toml'})", markup=False)


# -- models remove -----------------------------------------------------------------------------


@models.command("remove")
@click.argument("model_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--keep-run", is_flag=True,
              help="Keep the training run (checkpoints, adapter) in DATA_DIR/train/<id>.")
@pass_ctx
def models_remove(c: AppContext, model_id: str, yes: bool, keep_run: bool) -> None:
    """Remove a model that `appliance train` or `appliance models add` registered.

    Its entry and its registered file go; a file you added from stays where it was.
    """
    import shutil

    from appliance.train.register import remove_model, validate_model_id

    validate_model_id(model_id)
    entry = c.app.registry.get(model_id)
    if entry.origin != "user":
        raise InputError(f"'{model_id}' is a packaged model; only the user's models (from "
                         "`appliance train` or `appliance models add`) can be removed.")
    confirm(f"Remove model '{model_id}' ({entry.path})?", yes)
    remove_model(c.app.settings, model_id)
    runs = c.app.settings.home / "train"
    run = runs / model_id
    # Only ever a folder directly inside DATA_DIR/train (never a symlink out of it).
    if run.is_dir() and not run.is_symlink() and not keep_run \
            and run.resolve().parent == runs.resolve():
        shutil.rmtree(run, ignore_errors=True)
    out.print(f"removed '{model_id}'", markup=False)


# -- models build ------------------------------------------------------------------------------


@models.command("build", short_help="Build the packaged fine-tuned models from models/adapters.")
@click.option("--force", is_flag=True, help="Rebuild even when a cached build exists.")
@pass_ctx
def models_build(c: AppContext, force: bool) -> None:
    """Build the packaged fine-tuned models from the committed LoRA adapters.

    Each adapter in models/adapters/ is checked against its lineage.json, merged into its
    base, converted to GGUF, quantized and parity-checked, then listed in
    models/built.toml as a packaged model. scripts/setup.sh runs this; a build is cached,
    so a rerun costs seconds.
    """
    from appliance.train.lora import require_train_packages
    from appliance.train.packaged import build_packaged, find_adapters

    if not find_adapters():
        out.print("no adapters in models/adapters; nothing to build")
        return
    require_train_packages()
    ids = build_packaged(c.app.settings, lambda msg: err.print(f"[dim]{lit(msg)}[/]"), force=force)
    out.print(f"built: {', '.join(ids)}", markup=False)
