"""The evaluation report: a decision read from the numbers, rendered as JSON, Markdown and HTML.

The HTML page is self-contained: inline CSS and charts drawn here as inline SVG (no
scripts, no fonts or styles from elsewhere), so it opens on a machine with no network.

The decision follows the practitioners' rule: failures of *knowledge* (the model without
documents lacks the facts, retrieval brings them) call for RAG; failures of *behaviour*
(format, citing, abstaining, staying grounded) call for fine-tuning; both call for the
hybrid. Each finding cites the metric and the numbers behind it, and a change between two
modes counts only when it is both large (:data:`GAIN`) and beyond chance: the 95 % interval
of the paired change over the same questions (:func:`compare_modes`) excludes zero.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from appliance.evaluate.metrics import Difference, paired_difference
from appliance.files import write_atomic

__all__ = [
    "COMPARISONS",
    "METRICS",
    "bar_chart",
    "compare_modes",
    "comparison_table",
    "decide",
    "mode_table",
    "paired_change",
    "render_html",
    "render_markdown",
    "write_reports",
]

GAIN = 0.10
"""A difference between modes that counts as a real change (10 points)."""
LOW_KNOWLEDGE = 0.5
"""Below this answer-contained rate the base model lacks the facts."""
FORMAT_OK = 0.9
COVERAGE_OK = 0.8
PRECISION_OK = 0.7
ABSTAIN_OK = 0.6
FALSE_ABSTAIN_MAX = 0.3
FAITH_OK = 0.6
RETRIEVAL_OK = 0.6

INTERVAL_NOTE = ("In brackets: the 95 % interval in percent (Wilson score for shares, "
                 "bootstrap over questions for F1, EM and faithfulness).")
COMPARISON_NOTE = ("Each change is measured on the questions both modes answered; its 95 % "
                   "interval comes from a paired bootstrap over those questions, so a change "
                   "whose interval excludes zero is beyond chance on this set.")

MODE_ORDER = ("base", "rag", "ft", "hybrid")
MODE_COLORS = {"base": "#7f7f7f", "rag": "#1f77b4", "ft": "#ff7f0e", "hybrid": "#2ca02c"}
MODE_LABELS = {"base": "base (no retrieval)", "rag": "rag (retrieval)",
               "ft": "ft (fine-tuned)", "hybrid": "hybrid (fine-tuned + retrieval)"}
VERDICT_TEXT = {"base": "the base model alone", "rag": "RAG", "ft": "fine-tuning",
                "hybrid": "the hybrid (fine-tuned model with retrieval)"}

METRICS: list[tuple[str, str, str]] = [
    ("accuracy", "accuracy", "answerable: gold answer contained; unanswerable: abstained"),
    ("em", "EM (SQuAD v2)", "exact match over all questions; abstaining on unanswerable = 1"),
    ("f1", "F1 (SQuAD v2)", "token F1 over all questions; abstaining on unanswerable = 1"),
    ("em_answerable", "EM answerable", "exact match on answerable questions"),
    ("f1_answerable", "F1 answerable", "token F1 on answerable questions"),
    ("contained", "answer contained", "answerable questions whose answer contains a gold answer"),
    ("citation_precision", "citation precision",
     "cited chunks that contain a gold answer or are a gold source"),
    ("citation_coverage", "citation coverage", "answers (not abstaining) that cite a source"),
    ("abstention_accuracy", "abstention accuracy", "unanswerable questions abstained on"),
    ("false_abstention", "false abstention", "answerable questions abstained on (lower is better)"),
    ("format_compliance", "format compliance", "answers matching the question's regex or schema"),
    ("faithfulness", "faithfulness", "share of answer content words found in the cited text"),
]
CHART_METRICS = ["accuracy", "contained", "f1_answerable", "citation_precision",
                 "citation_coverage", "abstention_accuracy", "false_abstention",
                 "format_compliance", "faithfulness"]
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("base", "rag"), ("base", "ft"), ("rag", "hybrid"), ("ft", "hybrid"))
"""Mode pairs compared question by question: what retrieval adds, what fine-tuning adds."""
COMPARE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "all"), ("f1_answerable", "answerable"), ("contained", "answerable"),
    ("abstention_accuracy", "unanswerable"), ("false_abstention", "answerable"),
    ("format_compliance", "format"))
"""Metrics with a per-question score, and the questions each is measured on."""
RETRIEVAL_METRICS = [("hit@1", "hit@1"), ("hit@5", "hit@5"), ("hit@10", "hit@10"),
                     ("mrr", "MRR@10"), ("ndcg@10", "nDCG@10"), ("answer_hit@5", "answer in top 5")]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _metrics(report: Mapping[str, Any], mode: str) -> Mapping[str, Any] | None:
    entry = report.get("modes", {}).get(mode)
    return entry["metrics"] if entry else None


def _modes(report: Mapping[str, Any]) -> list[str]:
    present = report.get("modes", {})
    return [m for m in MODE_ORDER if m in present]


def _points(value: float) -> str:
    """A change in signed percentage points; under one point with a decimal, so a change
    just beyond zero does not print as "-0"."""
    points = value * 100
    return f"{points:+.1f}" if 0 < abs(points) < 0.95 else f"{points:+.0f}"


def _question_value(key: str, answerable: bool, r: Mapping[str, Any]) -> float | None:
    """The per-question score behind metric ``key`` (None: the question does not count)."""
    if key == "accuracy":
        return float(bool(r.get("correct")))
    if key == "f1_answerable":
        return float(r.get("f1") or 0.0) if answerable else None
    if key == "contained":
        return float(bool(r.get("correct"))) if answerable else None
    if key == "abstention_accuracy":
        return None if answerable else float(bool(r.get("abstained")))
    if key == "false_abstention":
        return float(bool(r.get("abstained"))) if answerable else None
    if key == "format_compliance":
        ok = r.get("format_ok")
        return None if ok is None else float(bool(ok))
    raise KeyError(key)


def paired_change(report: Mapping[str, Any], key: str, before: str,
                  after: str) -> Difference | None:
    """The change of ``key`` from mode ``before`` to ``after`` over the questions both
    answered, with its 95 % paired-bootstrap interval (None without per-question data).

    Read from the report's ``comparisons`` where :func:`compare_modes` put it there, so the
    decision quotes exactly the numbers of the comparison table."""
    for c in report.get("comparisons") or []:
        if (c["before_mode"], c["after_mode"], c["metric"]) == (before, after, key):
            return Difference(before=c["before"], after=c["after"], low=c["low"],
                              high=c["high"], n=c["n"])
    return _measure_change(report, key, before, after)


def _measure_change(report: Mapping[str, Any], key: str, before: str,
                    after: str) -> Difference | None:
    xs: list[float] = []
    ys: list[float] = []
    for q in report.get("questions", []):
        results = q.get("results", {})
        if before not in results or after not in results:
            continue
        a = _question_value(key, bool(q.get("answerable")), results[before])
        b = _question_value(key, bool(q.get("answerable")), results[after])
        if a is not None and b is not None:
            xs.append(a)
            ys.append(b)
    return paired_difference(xs, ys)


def compare_modes(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every measured pair of :data:`COMPARISONS` on every metric of :data:`COMPARE_METRICS`:
    before, after, the change and its 95 % interval, paired by question."""
    present = set(_modes(report))
    out: list[dict[str, Any]] = []
    for before, after in COMPARISONS:
        if before not in present or after not in present:
            continue
        for key, _ in COMPARE_METRICS:
            diff = _measure_change(report, key, before, after)
            if diff is not None:
                out.append({"before_mode": before, "after_mode": after, "metric": key,
                            **diff.to_json()})
    return out


def _ci(diff: Difference) -> str:
    return (f"{_points(diff.delta)} points, 95 % CI {_points(diff.low)} to "
            f"{_points(diff.high)}")


# -- the decision ------------------------------------------------------------------------------


def decide(report: Mapping[str, Any]) -> dict[str, Any]:
    """Read the per-mode metrics and say which lever the problem needs, and why."""
    base, rag = _metrics(report, "base"), _metrics(report, "rag")
    ft, hybrid = _metrics(report, "ft"), _metrics(report, "hybrid")
    retrieval: Mapping[str, Any] | None = report.get("retrieval")
    knowledge: list[str] = []
    behaviour: list[str] = []
    fixes: list[str] = []
    caveats: list[str] = []

    def val(m: Mapping[str, Any] | None, key: str) -> float | None:
        return None if m is None else m.get(key)

    # knowledge: what the model knows without documents, and what retrieval adds
    b_cont, r_cont = val(base, "contained"), val(rag, "contained")
    if b_cont is not None and b_cont < LOW_KNOWLEDGE:
        knowledge.append(f"without documents the base model's answer contains a gold answer "
                         f"for only {_pct(b_cont)} of answerable questions (answer contained)")
    b_abs = val(base, "abstention_accuracy")
    if b_abs is not None and b_abs < ABSTAIN_OK:
        knowledge.append(f"without documents the base model abstains on only {_pct(b_abs)} of "
                         "unanswerable questions: it cannot tell what the documents lack "
                         "(abstention accuracy)")
    def chance(label: str, what: str, before: str, after: str,
               p: float, t: float, diff: Difference) -> None:
        caveats.append(f"{what} {label} from {_pct(p)} to {_pct(t)} ({before} -> {after}), "
                       f"but over {diff.n} questions that is within chance ({_ci(diff)}): "
                       "measure more questions")

    if b_cont is not None and r_cont is not None:
        gain = r_cont - b_cont
        diff = paired_change(report, "contained", "base", "rag")
        if gain >= GAIN and diff is not None and not diff.significant:
            chance("answer contained", "retrieval raises", "base", "rag", b_cont, r_cont, diff)
        elif gain >= GAIN:
            detail = _ci(diff) if diff is not None else f"+{gain * 100:.0f} points"
            fixes.append(f"retrieval raises answer contained from {_pct(b_cont)} to "
                         f"{_pct(r_cont)} ({detail}; base -> rag)")
        elif knowledge:
            caveats.append(f"retrieval does not help yet: answer contained {_pct(b_cont)} "
                           f"(base) vs {_pct(r_cont)} (rag)")
    b_acc, r_acc = val(base, "accuracy"), val(rag, "accuracy")
    if b_acc is not None and r_acc is not None and r_acc - b_acc >= GAIN:
        diff = paired_change(report, "accuracy", "base", "rag")
        if diff is not None and not diff.significant:
            chance("accuracy", "retrieval raises", "base", "rag", b_acc, r_acc, diff)
        else:
            detail = f" ({_ci(diff)})" if diff is not None else ""
            fixes.append(f"retrieval raises accuracy from {_pct(b_acc)} to {_pct(r_acc)}"
                         f"{detail}")
    if base is None:
        caveats.append("no base-mode baseline was measured; add base to --modes to see "
                       "what the model knows without documents")
    if retrieval and retrieval.get("hit@5") is not None and retrieval["hit@5"] < RETRIEVAL_OK:
        caveats.append(f"retrieval finds a gold source in the top 5 for only "
                       f"{_pct(retrieval['hit@5'])} of questions (hit@5): improve chunking or "
                       "retrieval before reading rag failures as model failures")

    # behaviour: how the untuned model behaves when it has the documents
    ref_mode = "rag" if rag is not None else "base"
    ref = rag if rag is not None else base
    if ref is not None:
        fc = val(ref, "format_compliance")
        if fc is not None and fc < FORMAT_OK:
            behaviour.append(f"{ref_mode}: only {_pct(fc)} of answers follow the required "
                             f"format ({ref.get('format_questions', 0)} questions with a format; "
                             "format compliance)")
        cov = val(ref, "citation_coverage")
        if cov is not None and cov < COVERAGE_OK:
            behaviour.append(f"{ref_mode}: only {_pct(cov)} of answers cite a source "
                             "(citation coverage)")
        prec = val(ref, "citation_precision")
        if prec is not None and prec < PRECISION_OK:
            behaviour.append(f"{ref_mode}: only {_pct(prec)} of citations point at a chunk with "
                             "the answer (citation precision)")
        if ref_mode == "rag":
            ab = val(ref, "abstention_accuracy")
            if ab is not None and ab < ABSTAIN_OK:
                behaviour.append(f"rag: answers {_pct(1 - ab)} of unanswerable questions "
                                 "instead of saying the documents lack it (abstention accuracy "
                                 f"{_pct(ab)})")
            faith = val(ref, "faithfulness")
            if faith is not None and faith < FAITH_OK:
                behaviour.append(f"rag: only {_pct(faith)} of the answers' content words come "
                                 "from the cited text (faithfulness)")
        fa = val(ref, "false_abstention")
        if fa is not None and fa > FALSE_ABSTAIN_MAX:
            behaviour.append(f"{ref_mode}: abstains on {_pct(fa)} of answerable questions "
                             "(false abstention)")

    # what fine-tuning changes, where it was measured
    for tuned, plain, tm, pm in (("ft", "base", ft, base), ("hybrid", "rag", hybrid, rag)):
        if tm is None or pm is None:
            continue
        for key, label, lower_better in (
            ("format_compliance", "format compliance", False),
            ("abstention_accuracy", "abstention accuracy", False),
            ("citation_coverage", "citation coverage", False),
            ("false_abstention", "false abstention", True),
            ("f1_answerable", "F1 on answerable questions", False),
            ("accuracy", "accuracy", False),
        ):
            p, t = pm.get(key), tm.get(key)
            if p is None or t is None:
                continue
            delta = (p - t) if lower_better else (t - p)
            if abs(delta) < GAIN:
                continue
            verb = "improves" if delta > 0 else "worsens"
            diff = paired_change(report, key, plain, tuned)
            detail = f"{_ci(diff)}; " if diff is not None else ""
            if diff is not None and not diff.significant:
                chance(label, f"fine-tuning {verb}", plain, tuned, p, t, diff)
            elif delta > 0:
                fixes.append(f"fine-tuning improves {label} from {_pct(p)} to {_pct(t)} "
                             f"({detail}{plain} -> {tuned})")
            else:
                caveats.append(f"fine-tuning worsens {label} from {_pct(p)} to {_pct(t)} "
                               f"({detail}{plain} -> {tuned})")

    k, b = bool(knowledge), bool(behaviour)
    if k and b:
        verdict = "hybrid"
        headline = ("Both knowledge and behaviour failures: use the hybrid (a fine-tuned "
                    "model answering over retrieved documents).")
    elif k:
        verdict = "rag"
        headline = "Knowledge failures: use RAG (retrieval fixes missing facts)."
    elif b:
        verdict = "ft"
        headline = ("Behaviour failures with the knowledge already in reach: fine-tune "
                    "(format, citing and abstaining are behaviour).")
    else:
        verdict = "rag" if rag is not None else "base"
        headline = ("No failure crosses the thresholds: keep "
                    f"{VERDICT_TEXT[verdict]}; retrieval adds citations you can check.")
    measured = {m: _metrics(report, m) for m in _modes(report)}
    scored = {m: mm["accuracy"] for m, mm in measured.items()
              if mm is not None and mm.get("accuracy") is not None}
    best = max(scored, key=lambda m: scored[m]) if scored else None
    if verdict in ("ft", "hybrid") and verdict not in measured:
        caveats.append(f"{verdict} was not measured: train a model with `appliance train`, "
                       "then rerun with --modes base,rag,ft,hybrid --ft-model ID to confirm")
    if best is not None and verdict in scored and scored[best] - scored[verdict] >= GAIN:
        caveats.append(f"measured best is {best} (accuracy {_pct(scored[best])}), ahead of "
                       f"{verdict} ({_pct(scored[verdict])})")
    return {
        "verdict": verdict,
        "headline": headline,
        "knowledge_failures": knowledge,
        "behaviour_failures": behaviour,
        "evidence_for_fixes": fixes,
        "caveats": caveats,
        "best_measured": ({"mode": best, "accuracy": scored[best]} if best else None),
        "thresholds": {"gain": GAIN, "low_knowledge": LOW_KNOWLEDGE, "format": FORMAT_OK,
                       "citation_coverage": COVERAGE_OK, "citation_precision": PRECISION_OK,
                       "abstention": ABSTAIN_OK, "false_abstention": FALSE_ABSTAIN_MAX,
                       "faithfulness": FAITH_OK, "retrieval_hit@5": RETRIEVAL_OK,
                       "interval": 0.95},
    }


# -- tables ----------------------------------------------------------------------------------


def _with_interval(metrics: Mapping[str, Any] | None, key: str) -> str:
    """A share with its 95 % interval, e.g. ``45 % (32-59)``."""
    if not metrics or metrics.get(key) is None:
        return "n/a"
    interval = (metrics.get("intervals") or {}).get(key)
    if not interval:
        return _pct(metrics[key])
    return f"{_pct(metrics[key])} ({interval[0] * 100:.0f}–{interval[1] * 100:.0f})"


def mode_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-mode table: metrics as rows, modes as columns; a share is
    followed by its 95 % interval in percent where the report has one."""
    modes = _modes(report)
    header = ["metric", *modes]
    rows = [["model", *[str(report["modes"][m]["model"]) for m in modes]]]
    rows.append(["questions scored",
                 *[str(report["modes"][m]["metrics"]["questions"]) for m in modes]])
    for key, label, _ in METRICS:
        values = [_metrics(report, m) for m in modes]
        if all(v is None or v.get(key) is None for v in values):
            continue
        rows.append([label, *[_with_interval(v, key) for v in values]])
    for key, label, fmt in (("p50_ms", "latency p50", "{:,.0f} ms"),
                            ("p95_ms", "latency p95", "{:,.0f} ms"),
                            ("tokens_per_s", "tokens/s", "{:,.1f}")):
        values = [_metrics(report, m) for m in modes]
        rows.append([label, *[
            "n/a" if not v or v.get(key) is None else fmt.format(v[key]) for v in values]])
    return header, rows


def comparison_table(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the paired comparisons: each mode pair's change per metric."""
    labels = {key: label for key, label, _ in METRICS}
    header = ["modes", "metric", "before", "after", "change (95 % CI), points", "beyond chance"]
    rows = []
    for c in report.get("comparisons") or []:
        rows.append([f"{c['before_mode']} -> {c['after_mode']}", labels.get(c["metric"],
                     c["metric"]), _pct(c["before"]), _pct(c["after"]),
                     f"{_points(c['delta'])} ({_points(c['low'])} to {_points(c['high'])})",
                     "yes" if c["significant"] else "no"])
    return header, rows


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _retrieval_rows(retrieval: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    header = [label for _, label in RETRIEVAL_METRICS]
    return header, [_num(retrieval.get(key)) for key, _ in RETRIEVAL_METRICS]


def _set_line(report: Mapping[str, Any]) -> str:
    s = report["set"]
    line = (f"{s['questions']} questions ({s['answerable']} answerable, {s['unanswerable']} "
            f"unanswerable; {s['with_format']} with a format, {s['with_gold_sources']} with gold "
            f"sources) from `{s['source']}`")
    if s.get("articles"):
        line += f", articles: {', '.join(s['articles'])}"
    if s.get("total_in_set", s["questions"]) > s["questions"]:
        line += f" (a subset of {s['total_in_set']})"
    return line


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    d = report["decision"]
    out = ["# Evaluation report", ""]
    out.append(f"- Set: {_set_line(report)}")
    out.append(f"- Knowledge base: `{report['kb']}`")
    out.append(f"- Created: {report['created']} (this run took {report['seconds']} s)")
    if report.get("command"):
        out.append(f"- Command: `{report['command']}`")
    out += ["", "## Results by mode", ""]
    header, rows = mode_table(report)
    out += [_md_table(header, rows), ""]
    out.append(INTERVAL_NOTE)
    out.append("")
    for mode, reason in report.get("skipped", {}).items():
        out.append(f"- **{mode} skipped**: {reason}.")
    if report.get("comparisons"):
        ch, cr = comparison_table(report)
        out += ["", "## Paired comparisons", "", COMPARISON_NOTE, "", _md_table(ch, cr), ""]
    if report.get("retrieval"):
        r = report["retrieval"]
        rh, rr = _retrieval_rows(r)
        out += ["", f"## Retrieval ({r['questions']} answerable questions with gold sources, "
                    f"top {r['k']} of the knowledge base)", "", _md_table(rh, [rr]), ""]
    out += ["", "## Decision", "", f"**{d['headline']}**", ""]
    for title, key in (("Knowledge failures (fixed by retrieval)", "knowledge_failures"),
                       ("Behaviour failures (fixed by fine-tuning)", "behaviour_failures"),
                       ("Measured effects", "evidence_for_fixes"), ("Caveats", "caveats")):
        out.append(f"{title}:")
        out += [f"- {item}" for item in d[key]] or ["- none"]
        out.append("")
    if report.get("notes") or report["set"].get("bad_rows"):
        out += ["## Notes", ""]
        out += [f"- {n}" for n in report.get("notes", [])]
        out += [f"- skipped row, {b}" for b in report["set"].get("bad_rows", [])]
        out.append("")
    out += ["## Metrics", ""]
    out += [f"- **{label}**: {doc}." for _, label, doc in METRICS]
    out.append("- **retrieval**: ranks of the gold source documents among the top 10 "
               "chunks (a document counts once, at its best rank).")
    return "\n".join(out) + "\n"


# -- charts ----------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def bar_chart(
    chart_id: str,
    title: str,
    groups: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    *,
    vmax: float | None = None,
    fmt: Callable[[float], str] = _pct,
    width: int = 960,
    height: int = 340,
    intervals: Sequence[Sequence[Sequence[float] | None]] | None = None,
) -> str:
    """A grouped bar chart as inline SVG: one group per label, one bar per series.

    ``intervals``, parallel to ``series``, gives each bar's (low, high) 95 % interval (or
    None), drawn as a whisker over the bar.
    """
    left, right, top, bottom = 56, 16, 56, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [v for _, vs, _ in series for v in vs if v is not None]
    scale = vmax if vmax is not None else (max(values) if values else 1.0)
    scale = scale or 1.0
    parts = [f'<svg id="{_e(chart_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
             f'viewBox="0 0 {width} {height}" width="100%" role="img" '
             f'aria-label="{_e(title)}">',
             f"<title>{_e(title)}</title>",
             f'<text x="{left}" y="20" class="chart-title">{_e(title)}</text>']
    x = left
    for name, _, color in series:  # legend
        parts.append(f'<rect x="{x}" y="32" width="12" height="12" fill="{color}"/>'
                     f'<text x="{x + 16}" y="42" class="legend">{_e(name)}</text>')
        x += 24 + 7 * len(name)
    for i in range(5):  # grid
        frac = i / 4
        y = top + plot_h - frac * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" '
                     f'class="grid"/><text x="{left - 6}" y="{y + 4:.1f}" class="axis" '
                     f'text-anchor="end">{_e(fmt(scale * frac))}</text>')
    n = max(len(groups), 1)
    group_w = plot_w / n
    bar_w = group_w * 0.8 / max(len(series), 1)
    for g, label in enumerate(groups):
        gx = left + g * group_w + group_w * 0.1
        for s, (name, vs, color) in enumerate(series):
            v = vs[g] if g < len(vs) else None
            bx = gx + s * bar_w
            if v is None:
                parts.append(f'<text x="{bx + bar_w / 2:.1f}" y="{top + plot_h - 4}" '
                             f'class="na" text-anchor="middle">n/a</text>')
                continue
            h = max(0.0, min(v / scale, 1.0)) * plot_h
            y = top + plot_h - h
            parts.append(
                f'<rect class="bar" x="{bx:.1f}" y="{y:.1f}" width="{bar_w * 0.92:.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{color}" data-series="{_e(name)}" '
                f'data-value="{v:.4f}"><title>{_e(name)} · {_e(label)}: {_e(fmt(v))}</title>'
                f"</rect>")
            span = (intervals[s][g] if intervals is not None and s < len(intervals)
                    and g < len(intervals[s]) else None)
            label_y = y
            if span:
                cx_bar = bx + bar_w * 0.46
                y_lo = top + plot_h - max(0.0, min(span[0] / scale, 1.0)) * plot_h
                y_hi = top + plot_h - max(0.0, min(span[1] / scale, 1.0)) * plot_h
                cap = min(bar_w * 0.2, 6.0)
                parts.append(
                    f'<path class="whisker" d="M{cx_bar:.1f} {y_lo:.1f}V{y_hi:.1f}'
                    f'M{cx_bar - cap:.1f} {y_lo:.1f}h{2 * cap:.1f}'
                    f'M{cx_bar - cap:.1f} {y_hi:.1f}h{2 * cap:.1f}">'
                    f"<title>95 % interval {_e(fmt(span[0]))} to {_e(fmt(span[1]))}</title>"
                    "</path>")
                label_y = min(y, y_hi)
            if bar_w >= 16:
                parts.append(f'<text x="{bx + bar_w * 0.46:.1f}" y="{label_y - 3:.1f}" '
                             f'class="value" text-anchor="middle">{_e(fmt(v))}</text>')
        cx = left + g * group_w + group_w / 2
        words = label.split(" ")
        lines = [" ".join(words[: (len(words) + 1) // 2]), " ".join(words[(len(words) + 1) // 2:])]
        lines = [ln for ln in lines if ln] if len(label) > 12 else [label]
        for li, text in enumerate(lines):
            parts.append(f'<text x="{cx:.1f}" y="{top + plot_h + 18 + 14 * li}" class="axis" '
                         f'text-anchor="middle">{_e(text)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" '
                 f'y2="{top + plot_h}" class="baseline"/></svg>')
    return "".join(parts)


def _nice(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(f * power for f in (1.0, 2.0, 2.5, 5.0, 10.0) if f * power >= value)


def _charts(report: Mapping[str, Any]) -> list[str]:
    modes = _modes(report)
    charts: list[str] = []
    labels = {key: label for key, label, _ in METRICS}
    keys = [k for k in CHART_METRICS
            if any((m := _metrics(report, mode)) and m.get(k) is not None for mode in modes)]
    if modes and keys:
        series = [(mode, [(_metrics(report, mode) or {}).get(k) for k in keys],
                   MODE_COLORS[mode]) for mode in modes]
        spans = [[((_metrics(report, mode) or {}).get("intervals") or {}).get(k) for k in keys]
                 for mode in modes]
        charts.append(bar_chart("chart-quality", "Answer quality by mode, 95 % intervals "
                                "(false abstention: lower is better)", [labels[k] for k in keys],
                                series, vmax=1.0, intervals=spans))
    if modes:
        p50 = [(_metrics(report, m) or {}).get("p50_ms") for m in modes]
        p95 = [(_metrics(report, m) or {}).get("p95_ms") for m in modes]
        top = max([v for v in p50 + p95 if v is not None], default=1.0)
        charts.append(bar_chart(
            "chart-latency", "Answer latency by mode (ms)", modes,
            [("p50", p50, "#4c78a8"), ("p95", p95, "#e45756")],
            vmax=_nice(top), fmt=lambda v: f"{v:,.0f}", height=300))
    retrieval = report.get("retrieval")
    if retrieval:
        keys_r = [(k, label) for k, label in RETRIEVAL_METRICS if retrieval.get(k) is not None]
        charts.append(bar_chart(
            "chart-retrieval", "Retrieval (gold sources among the top 10 chunks)",
            [label for _, label in keys_r],
            [("retrieval", [retrieval[k] for k, _ in keys_r], "#9467bd")],
            vmax=1.0, fmt=lambda v: f"{v:.2f}", height=300))
    return charts


# -- HTML ------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;
max-width:1100px;padding:0 16px;color:#1b1b1b;background:#fff}
h1{font-size:26px;margin:0 0 8px}h2{font-size:20px;margin:28px 0 8px;border-bottom:1px solid
#ddd;padding-bottom:4px}table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid
#ddd;padding:4px 8px;text-align:right;vertical-align:top}th:first-child,td:first-child{
text-align:left}thead th{background:#f4f4f4}.verdict{font-size:18px;font-weight:600;
padding:10px 14px;background:#eef6ee;border-left:5px solid #2ca02c}.meta{color:#555}
.chart{max-width:100%;height:auto;margin:8px 0 16px;border:1px solid #eee}
.chart-title{font-size:16px;font-weight:600;fill:#222}.legend{font-size:12px;fill:#333}
.axis{font-size:11px;fill:#555}.value{font-size:10px;fill:#222}.na{font-size:10px;fill:#999}
.grid{stroke:#e5e5e5;stroke-width:1}.whisker{stroke:#222;stroke-width:1.2;fill:none}.baseline{stroke:#888;stroke-width:1}
.q td{text-align:left;font-size:13px}.ok{color:#1a7f37}.bad{color:#b42318}
code{background:#f4f4f4;padding:1px 4px}details{margin:8px 0}
"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _question_rows(report: Mapping[str, Any]) -> str:
    modes = _modes(report)
    head = "".join(f"<th>{_e(m)}</th>" for m in modes)
    rows = []
    for q in report.get("questions", []):
        gold = "; ".join(q["answers"]) if q["answerable"] else "(unanswerable)"
        cells = []
        for m in modes:
            r = q["results"].get(m)
            if r is None:
                cells.append("<td>—</td>")
                continue
            mark = ('<span class="ok">✓</span>' if r["correct"]
                    else '<span class="bad">✗</span>')
            cells.append(f"<td>{mark} {_e(r['answer'])}</td>")
        rows.append(f"<tr><td>{_e(q['id'])}</td><td>{_e(q['question'])}</td><td>{_e(gold)}</td>"
                    + "".join(cells) + "</tr>")
    return (f'<table class="q"><thead><tr><th>id</th><th>question</th><th>gold</th>{head}</tr>'
            f"</thead><tbody>{''.join(rows)}</tbody></table>")


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG, no scripts)."""
    d = report["decision"]
    s: list[str] = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
                    '<meta name="viewport" content="width=device-width, initial-scale=1">',
                    "<title>Evaluation report</title>", f"<style>{_CSS}</style></head><body>",
                    "<h1>Evaluation report</h1>",
                    f'<p class="meta">{_e(_set_line(report).replace("`", ""))}<br>'
                    f"Knowledge base: <code>{_e(report['kb'])}</code> · created "
                    f"{_e(report['created'])} · this run took {_e(report['seconds'])} s</p>"]
    if report.get("command"):
        s.append(f'<p class="meta">Command: <code>{_e(report["command"])}</code></p>')
    s.append('<h2 id="decision">Decision</h2>')
    s.append(f'<p class="verdict">{_e(d["headline"])}</p>')
    for title, key in (("Knowledge failures (fixed by retrieval)", "knowledge_failures"),
                       ("Behaviour failures (fixed by fine-tuning)", "behaviour_failures"),
                       ("Measured effects", "evidence_for_fixes"), ("Caveats", "caveats")):
        items = "".join(f"<li>{_e(x)}</li>" for x in d[key]) or "<li>none</li>"
        s.append(f"<h3>{_e(title)}</h3><ul>{items}</ul>")
    s.append('<h2 id="results">Results by mode</h2>')
    header, rows = mode_table(report)
    s.append(_html_table(header, rows))
    s.append(f'<p class="meta">{_e(INTERVAL_NOTE)}</p>')
    for mode, reason in report.get("skipped", {}).items():
        s.append(f"<p><b>{_e(mode)} skipped</b>: {_e(reason)}.</p>")
    if report.get("comparisons"):
        ch, cr = comparison_table(report)
        s.append(f'<h2 id="comparisons">Paired comparisons</h2><p>{_e(COMPARISON_NOTE)}</p>')
        s.append(_html_table(ch, cr))
    s.append('<h2 id="charts">Charts</h2>')
    s += _charts(report)
    if report.get("retrieval"):
        r = report["retrieval"]
        rh, rr = _retrieval_rows(r)
        s.append(f'<h2 id="retrieval">Retrieval</h2><p>{_e(r["questions"])} answerable '
                 f"questions with gold sources; top {_e(r['k'])} chunks.</p>")
        s.append(_html_table(rh, [rr]))
    notes = list(report.get("notes", [])) + [
        f"skipped row, {b}" for b in report["set"].get("bad_rows", [])]
    if notes:
        s.append('<h2 id="notes">Notes</h2><ul>'
                 + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    s.append('<h2 id="questions">Questions</h2><details><summary>Every question and each '
             "mode's answer (✓ correct: gold answer contained, or abstained when "
             f"unanswerable)</summary>{_question_rows(report)}</details>")
    s.append('<h2 id="definitions">Metric definitions</h2><ul>'
             + "".join(f"<li><b>{_e(label)}</b>: {_e(doc)}</li>" for _, label, doc in METRICS)
             + "</ul></body></html>")
    return "\n".join(s) + "\n"


def write_reports(report: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md",
             "html": out_dir / "report.html"}
    write_atomic(paths["json"], json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_atomic(paths["md"], render_markdown(report))
    write_atomic(paths["html"], render_html(report))
    return paths
