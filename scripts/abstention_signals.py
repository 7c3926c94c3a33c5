#!/usr/bin/env python3
"""How well do cheap signals tell SQuAD's unanswerable questions from answerable ones?

For answerable and unanswerable development-split questions left out of the grounded
adapter's training data, the answer pipeline's retrieval runs (k sources) and each signal is
read: the grounded model's first-token abstention margin (as ``calibrate_margin.py``), the
best cosine, bm25 and fused scores, and lexical coverage, the share of the question's content
words (stemmed like the keyword index) that the top source, or the top k together, contain,
and how many are missing from all of them. With ``--answers`` each question is also answered by
the pipeline (hybrid, ``--model``, its calibrated margin) and the answer's own token
log-probabilities are read (teacher-forced): is a reader that answers unsure of its answer?
The table gives each signal's AUC as a detector of unanswerable questions and, for coverage,
the rates at a few thresholds. Rows are journalled in ``--out``, so a rerun resumes.

    APPLIANCE_HOME=DIR .venv/bin/python scripts/abstention_signals.py \\
        --model qwen2.5-coder-0.5b-grounded-q8_0 --exclude grounded-h80.jsonl --n 100 \\
        --out signals.jsonl [--answers]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from calibrate_margin import auc_of, dev_arguments, held_out_dev, margin_of  # noqa: E402

Row = dict[str, Any]


def measure(args: argparse.Namespace) -> list[Row]:
    """Journal one row of signals per question in ``args.out``; return all rows."""
    from appliance.api import Appliance
    from appliance.generate import load_generator
    from appliance.pipeline import Pipeline, retrieval_abstains
    from appliance.store import query_words

    app = Appliance()
    answerable, unanswerable = held_out_dev(app, args)
    rows: dict[str, Row] = {}
    if args.out.exists():
        for line in args.out.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[row["question"]] = row
    config = app.settings.answer
    gen: Any = load_generator(app.settings, app.registry, args.model)
    retriever = app.retriever(args.kb)
    margin = margin_of(gen, app)
    pipeline = Pipeline(app) if args.answers else None
    with app.open_kb(args.kb) as kb, args.out.open("a", encoding="utf-8") as fh:
        for q in answerable[: args.n] + unanswerable[: args.n]:
            if q.question in rows:
                if pipeline is None or "abstained" in rows[q.question]:
                    continue
                row = rows[q.question]
                row.update(_answer_signals(pipeline, gen, app, args, q.question))
                fh.write(json.dumps(row) + "\n")  # the later line of a question wins
                fh.flush()
                continue
            hits = retriever.search(q.question, k=config.k).hits
            words = {t for w in query_words(q.question) for t in kb.terms(w)}
            tops = [set(kb.terms(f"{h.heading} {h.text}")) for h in hits]
            union = set().union(*tops)
            row = {
                "question": q.question, "answerable": q.answerable,
                "retrieval": retrieval_abstains(hits, config, q.question),
                "cos": [h.scores.get("vector") for h in hits],
                "bm25": [h.scores.get("keyword") for h in hits],
                "fused": [h.score for h in hits],
                "cover1": len(words & tops[0]) / max(len(words), 1) if tops else 0.0,
                "cover_k": len(words & union) / max(len(words), 1),
                "missing_k": len(words - union),
                "margin": margin(q.question, hits),
            }
            if pipeline is not None:
                row.update(_answer_signals(pipeline, gen, app, args, q.question))
            rows[q.question] = row
            fh.write(json.dumps(row) + "\n")
            fh.flush()
    gen.close()
    app.close()
    return list(rows.values())


def _answer_signals(pipeline: Any, gen: Any, app: Any, args: argparse.Namespace,
                    question: str) -> Row:
    """The pipeline's answer to ``question`` and, unless it abstained, the log-probability
    of each of its tokens in the prompt it was written for."""
    from appliance.generate.prompt import build_rag_prompt

    record = pipeline.ask(question, kb=args.kb, mode="hybrid", model=args.model)
    row: Row = {"answer": record.answer, "abstained": record.abstained}
    if not record.abstained:
        hits = app.retriever(args.kb).search(question, k=app.settings.answer.k).hits
        prompt = build_rag_prompt(question, hits, count_tokens=gen.count_tokens,
                                  n_ctx=gen.n_ctx, max_tokens=app.settings.generate.max_tokens)
        row["answer_logprobs"] = gen.continuation_logprobs(prompt.messages, record.answer)
    return row


def _span(row: Row) -> list[float]:
    """Log-probabilities of the answer's tokens before its first ``[n]`` marker."""
    found: list[float] = []
    for piece, lp in row["answer_logprobs"]:
        if "[" in piece:
            break
        found.append(lp)
    return found or [lp for _, lp in row["answer_logprobs"]]


def _negated(signal: Callable[[Row], float]) -> Callable[[Row], float]:
    return lambda row: -signal(row)


def auc(rows: list[Row], signal: Callable[[Row], float]) -> float:
    """P(signal of an unanswerable question > signal of an answerable one), ties half."""
    return auc_of([signal(r) for r in rows if not r["answerable"]],
                  [signal(r) for r in rows if r["answerable"]])


def main(argv: list[str] | None = None) -> int:
    """Measure (or resume), then print the AUC table and the coverage thresholds."""
    p = dev_arguments(__doc__.split("\n\n")[0], n=100, seed=11)
    p.add_argument("--out", type=Path, required=True, help="journal of per-question rows")
    p.add_argument("--answers", action="store_true",
                   help="also answer each question and read the answer's token probabilities")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    rows = measure(args)
    margins = [r["margin"] for r in rows]
    missing = [r["missing_k"] for r in rows]

    def z(value: float, values: list[float]) -> float:
        return (value - statistics.mean(values)) / (statistics.pstdev(values) or 1.0)

    signals: dict[str, Callable[[Row], float]] = {
        "model margin (abstention logit)": lambda r: r["margin"],
        "words missing from the top k": lambda r: r["missing_k"],
        "1 - coverage of the top k": lambda r: 1 - r["cover_k"],
        "1 - coverage of the top source": lambda r: 1 - r["cover1"],
        "- best fused score": lambda r: -r["fused"][0] if r["fused"] else 0.0,
        "- best cosine": lambda r: -(r["cos"][0] or 0.0) if r["cos"] else 0.0,
        "- best bm25": lambda r: -max([b or 0.0 for b in r["bm25"]] or [0.0]),
        "margin + 2 x missing (z-scores)":
            lambda r: z(r["margin"], margins) + 2 * z(r["missing_k"], missing),
    }
    n_ans = sum(r["answerable"] for r in rows)
    table = Table(title=f"Unanswerable-question signals, {n_ans} answerable + "
                        f"{len(rows) - n_ans} unanswerable dev questions")
    table.add_column("signal")
    table.add_column("AUC", justify="right")
    for name, signal in signals.items():
        table.add_row(name, f"{auc(rows, signal):.2f}")
    console = Console()
    console.print(table)
    answered = [r for r in rows if r.get("answer_logprobs")]
    if answered:
        n_ans = sum(r["answerable"] for r in answered)
        table = Table(title=f"The answer's own confidence, {n_ans} answerable + "
                            f"{len(answered) - n_ans} unanswerable questions it answered")
        table.add_column("signal (lower log-probability: unanswerable)")
        table.add_column("AUC", justify="right")
        confidence: dict[str, Callable[[Row], float]] = {
            "mean over the answer": lambda r: statistics.mean(
                lp for _, lp in r["answer_logprobs"]),
            "mean over the span (before \\[n])": lambda r: statistics.mean(_span(r)),
            "least token of the span": lambda r: min(_span(r)),
            "first token": lambda r: r["answer_logprobs"][0][1],
        }
        for name, signal in confidence.items():
            low = _negated(signal)
            table.add_row(name, f"{auc(answered, low):.2f}")
        console.print(table)
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]
    for t in (1, 2, 3):
        console.print(
            f"abstain when >= {t} question words are missing from the top k: false abstention "
            f"{sum(r['missing_k'] >= t for r in ans) / max(len(ans), 1):.0%}, unanswerable "
            f"abstained {sum(r['missing_k'] >= t for r in una) / max(len(una), 1):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
