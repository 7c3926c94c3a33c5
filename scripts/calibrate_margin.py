#!/usr/bin/env python3
"""Calibrate a grounded model's abstention margin on the SQuAD development split.

For answerable and unanswerable dev-split questions (those in the adapter's training data
left out), the answer pipeline's own prompt (retrieval, k sources) is evaluated once and
the first-token margin is read: log-odds of the abstention sentence's first token against
the best other token. A question counts as abstained when retrieval evidence abstains, or
when its margin exceeds the candidate margin. The table shows false abstention (answerable)
and abstention on unanswerable questions per candidate margin, plus the AUC of the margin as
a detector of unanswerable questions; the suggested margin is the smallest one whose false
abstention is at most ``--max-false``. Record it in the adapter's ``lineage.json`` as
``calibration.abstain_margin``.

    .venv/bin/python scripts/calibrate_margin.py --model qwen2.5-0.5b-grounded-h80 \\
        --exclude grounded-h80.jsonl --n 80 --home DIR

Build the training data with ``appliance train-data grounded --hold-out N`` so that N
answerable questions are left for this script (it takes the dev questions that are not in
``--exclude``).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# The shared SQuAD 2.0 file (shared/ lies beside the checkout, also in CI's clone), every
# dev script's default. The other scripts read it through a plain `import calibrate_margin`:
# tests/test_readme.py credits a script with the argparse options of each sibling it
# imports `from`, and only dev_arguments' users take those.
DEFAULT_SQUAD = REPO.parent / "shared" / "data" / "squad2-dev-a" / "squad2-dev-a.json"
CANDIDATES = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0)


def _excluded(path: Path | None) -> set[str]:
    """Questions of a grounded training file (the text after 'Question: ')."""
    if path is None:
        return set()
    seen = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        user = json.loads(line)["messages"][1]["content"]
        seen.add(user.split("Question: ")[-1].split("\n")[0].strip())
    return seen


def held_out_dev(app: Any, args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """(answerable, unanswerable) dev-split questions outside ``--exclude``, each shuffled
    with ``--seed``; the dev articles are ingested into ``--kb`` when it does not exist."""
    from appliance.evaluate.runner import EvalSet, prepare_squad_kb
    from appliance.evaluate.squad import load_squad, split_articles

    dev, _ = split_articles(load_squad(args.squad))
    if args.kb not in app.list_kbs():
        prepare_squad_kb(app, EvalSet(items=[], source=str(args.squad), kind="squad",
                                      articles=dev), args.kb)
    seen = _excluded(args.exclude)
    questions = [q for a in dev for p in a.paragraphs for q in p.questions
                 if q.question.strip() not in seen]
    rng = random.Random(args.seed)
    answerable = [q for q in questions if q.answerable]
    unanswerable = [q for q in questions if not q.answerable]
    rng.shuffle(answerable)
    rng.shuffle(unanswerable)
    return answerable, unanswerable


def margin_of(gen: Any, app: Any) -> Callable[[str, Sequence[Any]], float]:
    """A function of (question, hits): the first-token margin of the abstention sentence
    (its logit minus the best other token's) in the pipeline's prompt for them."""
    import numpy as np

    from appliance.generate.prompt import ABSTAIN_SENTENCE, build_rag_prompt

    first = gen.llm.tokenize(ABSTAIN_SENTENCE.encode(), add_bos=False, special=False)[0]

    def margin(question: str, hits: Sequence[Any]) -> float:
        prompt = build_rag_prompt(question, hits, count_tokens=gen.count_tokens,
                                  n_ctx=gen.n_ctx, max_tokens=app.settings.generate.max_tokens)
        logits = gen.next_token_logits(prompt.messages).astype(np.float64)
        return float(logits[first] - np.max(np.delete(logits, first)))

    return margin


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per question: answerable, and margin or retrieval abstention."""
    from appliance.api import Appliance
    from appliance.config import load_settings
    from appliance.generate import load_generator
    from appliance.pipeline import retrieval_abstains

    app = Appliance(load_settings(home=args.home) if args.home else None)
    answerable, unanswerable = held_out_dev(app, args)
    config = app.settings.answer
    gen: Any = load_generator(app.settings, app.registry, args.model)
    retriever = app.retriever(args.kb)
    margin = margin_of(gen, app)
    rows = []
    for q in answerable[: args.n] + unanswerable[: args.n]:
        hits = retriever.search(q.question, k=config.k).hits
        row: dict[str, Any] = {"question": q.question, "answerable": q.answerable}
        if retrieval_abstains(hits, config, q.question):
            row["retrieval"] = True
        else:
            row["margin"] = margin(q.question, hits)
        rows.append(row)
    gen.close()
    app.close()
    return rows


def auc_of(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """P(a positive scores above a negative), ties counting half (NaN without both)."""
    if not positives or not negatives:
        return float("nan")
    return (sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
            / (len(positives) * len(negatives)))


def dev_arguments(description: str, *, n: int, seed: int) -> argparse.ArgumentParser:
    """The options every held-out-dev script takes: the model, the SQuAD file, the dev
    knowledge base, the training data to leave out, how many questions, the seed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", required=True, help="registry id of the grounded model")
    p.add_argument("--squad", type=Path, default=DEFAULT_SQUAD)
    p.add_argument("--kb", default="squad-dev", help="knowledge base of the dev articles")
    p.add_argument("--exclude", type=Path, help="the adapter's training data (chat JSONL)")
    p.add_argument("--n", type=int, default=n, help="questions of each kind, at most")
    p.add_argument("--seed", type=int, default=seed)
    return p


def summarise(rows: list[dict[str, Any]], max_false: float) -> dict[str, Any]:
    """Rates per candidate margin, the AUC, and the suggested margin."""
    ans = [r for r in rows if r["answerable"]]
    una = [r for r in rows if not r["answerable"]]

    def abstains(r: dict[str, Any], m: float) -> bool:
        return bool(r.get("retrieval")) or r["margin"] > m

    table = [{"margin": m,
              "false_abstention": sum(abstains(r, m) for r in ans) / max(len(ans), 1),
              "unanswerable_abstained": sum(abstains(r, m) for r in una) / max(len(una), 1)}
             for m in CANDIDATES]
    auc = auc_of([r["margin"] for r in una if "margin" in r],
                 [r["margin"] for r in ans if "margin" in r])
    ok = [t["margin"] for t in table if t["false_abstention"] <= max_false]
    return {"table": table, "auc": auc, "suggested": min(ok) if ok else None,
            "answerable": len(ans), "unanswerable": len(una)}


def main(argv: list[str] | None = None) -> int:
    """Measure, print the table, optionally write the rows as JSON."""
    p = dev_arguments(__doc__.split("\n\n")[0], n=50, seed=7)
    p.add_argument("--max-false", type=float, default=0.15)
    p.add_argument("--home", type=Path, help="data directory (default: the usual one)")
    p.add_argument("--json", type=Path, help="write the per-question rows here")
    args = p.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    rows = measure(args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    result = summarise(rows, args.max_false)
    table = Table(title=f"Abstention margin of {args.model} on {result['answerable']} answerable "
                        f"+ {result['unanswerable']} unanswerable dev questions")
    table.add_column("margin (nats)", justify="right")
    table.add_column("false abstention", justify="right")
    table.add_column("unanswerable abstained", justify="right")
    for t in result["table"]:
        table.add_row(f"{t['margin']:.1f}", f"{t['false_abstention']:.0%}",
                      f"{t['unanswerable_abstained']:.0%}")
    console = Console()
    console.print(table)
    console.print(f"AUC of the margin (unanswerable vs answerable): {result['auc']:.2f}; "
                  f"suggested margin (false abstention <= {args.max_false:.0%}): "
                  f"{result['suggested']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
