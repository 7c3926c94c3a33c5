"""Run an eval set through the answer pipeline in several modes and score the answers.

Every mode goes through :class:`appliance.pipeline.Pipeline` (the same code as ``ask``,
``batch`` and the TUI) and is written by :func:`appliance.batch.run_batch`, so a run is
resumable exactly like a batch: REPORT_DIR holds ``questions.jsonl`` (the set as run),
``answers-<mode>.jsonl`` (one Answer record per question, plus ``context``: the texts of
the cited chunks, and ``extra``: the gold fields) and ``retrieval.jsonl`` (the top 10 hits
of every answerable question); a killed eval reruns only the questions that have no record
yet. Reusing a REPORT_DIR with another model for a mode, or with a changed question under
the same id, is refused rather than mixed.

Inputs: an eval-set JSONL (DESIGN.md, "Eval set") or a file in the SQuAD JSON layout,
from which ``articles`` picks ``dev``, ``test`` (the split of
:func:`appliance.evaluate.squad.split_articles`), ``all`` or named articles.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.batch import BadRow, BatchQuestion, read_done, read_questions, run_batch
from appliance.errors import ApplianceError, InputError, ModelNotFoundError
from appliance.evaluate.metrics import (
    EvalItem,
    QuestionScore,
    aggregate,
    rank_metrics,
    schema_problem,
    score_answer,
)
from appliance.evaluate.report import compare_modes, decide
from appliance.evaluate.squad import (
    Article,
    answer_in_text,
    corpus_file_name,
    load_squad,
    split_articles,
    squad_corpus_dir,
    write_corpus,
)
from appliance.files import (
    MAX_INPUT_BYTES,
    check_input_file,
    is_new,
    same_file,
    write_atomic,
)
from appliance.generate import FINE_TUNED_MODES, MODES, RETRIEVAL_MODES
from appliance.types import Answer

if TYPE_CHECKING:
    from appliance.api import Appliance
    from appliance.pipeline import Pipeline

__all__ = [
    "REPORT_FILES",
    "EvalAnswer",
    "EvalSet",
    "check_report_dir",
    "load_eval_set",
    "parse_modes",
    "prepare_squad_kb",
    "require_questions",
    "resolve_models",
    "run_eval",
    "select_articles",
]

ProgressFn = Callable[[str, int, int], None]
"""``progress(label, done, total)``."""

RETRIEVAL_K = 10
MAX_STORED_ANSWER = 400
REPORT_FILES = ("questions.jsonl", "retrieval.jsonl", "report.json", "report.md",
                "report.html", *(f"answers-{m}.jsonl" for m in MODES))
"""The files ``eval`` writes in its report folder (journals first resumed, then replaced)."""
_JOURNALS = ("retrieval.jsonl", *(f"answers-{m}.jsonl" for m in MODES))


@dataclass
class EvalAnswer(Answer):
    """An Answer record plus the texts of the chunks it cites, keyed by chunk id."""

    context: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalSet:
    """The questions of one evaluation, and where they came from."""

    items: list[EvalItem]
    source: str
    kind: str
    """``jsonl`` or ``squad``."""
    bad_rows: list[BadRow] = field(default_factory=list)
    articles: list[Article] = field(default_factory=list)
    """SQuAD articles chosen (their paragraphs form the knowledge base)."""
    total: int = 0
    """Usable questions before ``limit``."""

    def describe(self) -> str:
        """One line: where the questions come from and how many."""
        n_un = sum(not i.answerable for i in self.items)
        what = f"{len(self.items)} questions ({len(self.items) - n_un} answerable, {n_un} not)"
        if self.kind == "squad":
            names = ", ".join(a.title for a in self.articles)
            return f"{what} from {self.source}, articles: {names}"
        return f"{what} from {self.source}"


# -- reading sets ----------------------------------------------------------------------------


def parse_modes(text: str) -> list[str]:
    """``base,rag,ft,hybrid`` -> a list of known modes, in the given order, once each."""
    modes: list[str] = []
    for part in text.split(","):
        mode = part.strip().lower()
        if not mode:
            continue
        if mode not in MODES:
            raise InputError(f"Unknown mode '{mode}'; use any of {', '.join(MODES)}.")
        if mode not in modes:
            modes.append(mode)
    if not modes:
        raise InputError(f"No mode given; use any of {', '.join(MODES)}.")
    return modes


def _item_from_row(q: BatchQuestion, max_question_chars: int | None = None) -> EvalItem | str:
    """The eval item of one JSONL row, or why the row cannot be used."""
    extra = q.extra
    if max_question_chars is not None and len(q.question) > max_question_chars:
        return (f"the question is {len(q.question):,} characters long, over the limit of "
                f"{max_question_chars:,} (answer.max_question_chars)")
    answers = extra.get("answers", [])
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        return "field 'answers' must be a list of strings"
    answers = [a for a in answers if a.strip()]
    answerable = extra.get("answerable", bool(answers))
    if not isinstance(answerable, bool):
        return "field 'answerable' must be true or false"
    if answerable and not answers:
        return "an answerable question needs at least one of 'answers'"
    if not answerable and answers:
        return "an unanswerable question must have empty 'answers'"
    gold = extra.get("gold_sources", [])
    if isinstance(gold, str):
        gold = [gold]
    if not isinstance(gold, list) or not all(isinstance(g, str) for g in gold):
        return "field 'gold_sources' must be a list of file names"
    fmt = extra.get("format")
    if fmt is not None:
        if isinstance(fmt, str):
            try:
                re.compile(fmt)
            except re.error as exc:
                return f"field 'format' is not a valid regular expression ({exc})"
        elif not isinstance(fmt, dict):
            return "field 'format' must be a regular expression or a JSON schema object"
        else:
            try:
                problem = schema_problem(fmt)
            except RecursionError:
                problem = "$ nests too deeply"
            if problem is not None:
                return f"field 'format' is not a usable JSON schema: {problem}"
    return EvalItem(id=q.id, question=q.question, answers=answers, answerable=answerable,
                    gold_sources=gold, format=fmt)


def select_articles(articles: Sequence[Article], spec: str) -> list[Article]:
    """The articles ``spec`` names: ``dev``, ``test``, ``all`` or ``Title,Title``."""
    spec = spec.strip()
    if spec in ("dev", "test"):
        dev, test = split_articles(articles)
        return dev if spec == "dev" else test
    if spec == "all":
        return list(articles)
    by_title = {a.title: a for a in articles}
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_title]
    if unknown or not names:
        raise InputError(
            f"Unknown article '{(unknown or [spec])[0]}'; use dev, test, all or titles from: "
            f"{', '.join(sorted(by_title))}."
        )
    return [by_title[n] for n in dict.fromkeys(names)]


def _sample_key(qid: str) -> str:
    return hashlib.sha256(qid.encode("utf-8")).hexdigest()


def load_eval_set(path: Path, *, articles: str | None = None, limit: int | None = None,
                  max_question_chars: int | None = None) -> EvalSet:
    """Read an eval-set JSONL, or a SQuAD JSON file (``articles`` picks the split).

    ``limit`` keeps the first N questions of a JSONL set; of a SQuAD set, N questions
    chosen deterministically across the chosen articles (ordered by the sha256 of their
    ids, then kept in file order), so a small sample mixes articles and answerability.
    JSONL rows that cannot be used (see :func:`appliance.batch.read_questions`; also bad
    gold fields, a question longer than ``max_question_chars``) are reported in
    ``bad_rows`` with their line numbers. Raises InputError for a file that
    :func:`appliance.files.check_input_file` refuses, or that is not an eval set.
    """
    path = Path(path)
    check_input_file(path, "an eval set")
    if path.suffix.lower() == ".json":  # the SQuAD layout
        try:
            all_articles = load_squad(path)
        except ValueError as exc:
            raise InputError(f"{path} is not a SQuAD JSON file: {exc}.") from None
        chosen = select_articles(all_articles, articles or "test")
        items: list[EvalItem] = [
            EvalItem(id=q.id, question=" ".join(q.question.split()), answers=list(q.answers),
                     answerable=q.answerable,
                     gold_sources=[corpus_file_name(a.title, q.paragraph_index)])
            for a in chosen for q in a.questions if q.question.strip()
        ]
        first_of: dict[str, str] = {}
        for a in chosen:
            for qid in (sq.id for sq in a.questions):
                if qid in first_of:
                    raise InputError(
                        f"{path}: question id '{qid}' repeats (article {first_of[qid]}, then "
                        f"{a.title}); answers are kept by id, so give every question its own.")
                first_of[qid] = a.title
        total = len(items)
        if limit is not None and limit < len(items):
            keep = {i.id for i in sorted(items, key=lambda i: _sample_key(i.id))[:limit]}
            items = [i for i in items if i.id in keep]
        return EvalSet(items=items, source=str(path), kind="squad", articles=chosen,
                       total=total)
    if articles is not None:
        raise InputError("--articles applies to a SQuAD JSON file only; remove it.")
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise InputError(
            f"{path.name}: an eval set is a .jsonl file (or SQuAD .json); rename or convert it."
        )
    questions, bad = read_questions(path)
    items = []
    for q in questions:
        parsed = _item_from_row(q, max_question_chars)
        if isinstance(parsed, str):
            bad.append(BadRow(q.line, parsed))
        else:
            items.append(parsed)
    bad.sort(key=lambda b: b.line)
    total = len(items)
    if limit is not None:
        items = items[:limit]
    return EvalSet(items=items, source=str(path), kind="jsonl", bad_rows=bad, total=total)


def _is_own_file(path: Path) -> bool:
    """Whether the existing regular file ``path`` (one of :data:`REPORT_FILES`) looks
    written by ``eval``: empty, a journal of answer records, or a report it renders."""
    if path.stat().st_size == 0:
        return True
    if path.name in _JOURNALS:
        try:
            read_done(path, repair=False)  # InputError when not a journal
        except InputError:
            return False
        return True
    with path.open("rb") as fh:
        head = fh.read(4096)
    if path.name == "report.md":
        return head.startswith(b"# Evaluation report\n")
    if path.name == "report.html":
        return head.startswith(b"<!DOCTYPE html>") and b"<title>Evaluation report</title>" in head
    if path.name == "report.json":
        return head.startswith(b'{\n  "created": ')
    first = head.split(b"\n", 1)[0]
    try:
        row = json.loads(first)
    except ValueError:  # a longer first line (a large format schema): read the line
        with path.open("rb") as fh:
            try:
                row = json.loads(fh.readline(MAX_INPUT_BYTES))
            except (ValueError, RecursionError):
                return False
    return isinstance(row, dict) and {"id", "question", "answers", "answerable"} <= set(row)


def require_questions(eval_set: EvalSet) -> None:
    """InputError naming why, unless ``eval_set`` has a question to evaluate."""
    if eval_set.items:
        return
    source = eval_set.source
    if eval_set.bad_rows:
        raise InputError(f"{source} has no usable question: none of its "
                         f"{len(eval_set.bad_rows)} rows can be used (reasons listed above); "
                         "fix them and rerun.")
    squad = eval_set.kind == "squad"
    what = (f"the chosen articles ({', '.join(a.title for a in eval_set.articles) or 'none'}) "
            "hold" if squad else "it holds")
    raise InputError(f"{source} has no question to evaluate: {what} none; give an eval set "
                     "with questions" + (" or other --articles." if squad else "."))


def check_report_dir(out_dir: Path, inputs: Sequence[Path | str] = ()) -> None:
    """InputError unless ``eval`` may write its report into ``out_dir``, changing nothing.

    ``out_dir`` must be a folder (or not exist yet, below a folder); each of
    :data:`REPORT_FILES` in it must be absent or a regular file that ``eval`` wrote (a
    rerun resumes the journals and replaces the rest), and none of them one of ``inputs``.
    Other files in the folder are left alone.
    """
    out_dir = Path(out_dir)
    if is_new(out_dir, "choose another -o REPORT_DIR."):
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} is a file; give a folder for the report.")
    for name in REPORT_FILES:
        path = out_dir / name
        if not os.path.lexists(path):
            continue
        if any(same_file(path, given) for given in inputs):
            raise InputError(f"{path} is an input of this command (the eval set); move it out "
                             "of the report folder or choose another -o REPORT_DIR.")
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise InputError(f"{path} is a symlink, folder or device, not a file eval wrote; "
                             "choose another -o REPORT_DIR or remove it.")
        if not _is_own_file(path):
            raise InputError(f"{path} is not a file of an eval report (another program's?); "
                             "choose another -o REPORT_DIR or remove it.")


def prepare_squad_kb(
    app: Appliance, eval_set: EvalSet, kb: str,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Write the chosen articles' paragraphs as files and ingest them into ``kb``.

    The corpus lives in ``DATA_DIR/eval/squad/<kb>``; files of articles no longer chosen
    are removed there and pruned from the knowledge base. Returns the ingest report.
    """
    folder = squad_corpus_dir(app.settings.home, kb)
    written = set(write_corpus(eval_set.articles, folder))
    for stale in folder.glob("*.txt"):
        if stale not in written:
            stale.unlink()
    report = app.ingest([folder], kb=kb, prune=True, progress=progress)
    return report.to_json()


# -- running ---------------------------------------------------------------------------------


def resolve_models(
    pipeline: Pipeline, modes: Sequence[str], *, model: str | None = None,
    ft_model: str | None = None, skip_unavailable: bool = False,
) -> tuple[dict[str, str], dict[str, str]]:
    """The registry id answering in each mode, and the modes skipped (with the reason).

    ``model`` serves base and rag, ``ft_model`` ft and hybrid. Without a registered
    fine-tuned model, ft and hybrid raise ModelNotFoundError, or are skipped when
    ``skip_unavailable`` (the modes were not asked for explicitly).
    """
    ids: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for mode in modes:
        override = ft_model if mode in FINE_TUNED_MODES else model
        try:
            ids[mode] = pipeline.model_id(mode, override)
        except ModelNotFoundError:
            if mode not in FINE_TUNED_MODES or override:
                raise
            message = (f"Mode '{mode}' needs a fine-tuned model and none is registered; train "
                       f"one with `appliance train`, pass --ft-model ID, or leave {mode} out "
                       "of --modes.")
            if not skip_unavailable:
                raise ModelNotFoundError(message) from None
            skipped[mode] = ("no fine-tuned model is registered (train one with `appliance "
                             "train`, or pass --ft-model ID)")
    return ids, skipped


def _append(path: Path, record: Mapping[str, Any]) -> None:
    with path.open("ab") as fh:
        fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()
        os.fsync(fh.fileno())


def _check_journal(journal: Path, items: Mapping[str, EvalItem], model_id: str) -> None:
    for record in read_done(journal).values():
        if record.get("model") != model_id:
            raise InputError(
                f"{journal} holds answers by '{record.get('model')}', not '{model_id}'; choose "
                "another -o REPORT_DIR or delete that file."
            )
        item = items.get(str(record["id"]))
        if item is not None and " ".join(str(record.get("question", "")).split()) != item.question:
            raise InputError(
                f"{journal} answers a different question under id '{item.id}'; choose "
                "another -o REPORT_DIR or delete that file."
            )


def _retrieval_pass(
    app: Appliance, kb: str, items: Sequence[EvalItem], journal: Path,
    progress: ProgressFn | None,
) -> dict[str, dict[str, Any]]:
    """Top-10 hits of every answerable question, journalled in ``retrieval.jsonl``."""
    wanted = [i for i in items if i.answerable and (i.gold_sources or i.answers)]
    done = read_done(journal)
    todo = [i for i in wanted if i.id not in done]
    retriever = app.retriever(kb)
    for n, item in enumerate(todo, start=1):
        result = retriever.search(item.question, k=RETRIEVAL_K)
        record = {
            "id": item.id,
            "question": item.question,
            "hits": [{"chunk_id": h.chunk_id, "path": h.path,
                      "answer": answer_in_text(item.answers, h.text)} for h in result.hits],
        }
        _append(journal, record)
        done[item.id] = record
        if progress is not None:
            progress("retrieval", n, len(todo))
    return done


def _retrieval_metrics(
    items: Sequence[EvalItem], done: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any] | None:
    by_source: list[dict[str, float]] = []
    answer_hits: list[float] = []
    for item in items:
        record = done.get(item.id)
        if record is None or not item.answerable:
            continue
        hits: list[Mapping[str, Any]] = list(record.get("hits") or [])
        if item.gold_sources:
            by_source.append(rank_metrics([str(h["path"]) for h in hits], item.gold_sources))
        if item.answers:
            answer_hits.append(float(any(h.get("answer") for h in hits[:5])))
    if not by_source and not answer_hits:
        return None
    out: dict[str, Any] = {"questions": len(by_source), "k": RETRIEVAL_K}
    for key in ("hit@1", "hit@5", "hit@10", "mrr", "ndcg@10"):
        out[key] = sum(m[key] for m in by_source) / len(by_source) if by_source else None
    out["answer_hit@5"] = sum(answer_hits) / len(answer_hits) if answer_hits else None
    out["answer_questions"] = len(answer_hits)
    return out


def _short(text: str, limit: int = MAX_STORED_ANSWER) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_eval(
    pipeline: Pipeline,
    eval_set: EvalSet,
    out_dir: Path,
    *,
    modes: Sequence[str],
    kb: str,
    model: str | None = None,
    ft_model: str | None = None,
    skip_unavailable: bool = False,
    progress: ProgressFn | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Answer every question in every mode (resuming), score, and return the report data.

    Writes ``questions.jsonl``, ``answers-<mode>.jsonl`` and ``retrieval.jsonl`` under
    ``out_dir``; :func:`appliance.evaluate.report.write_reports` renders the result.
    """
    t0 = time.perf_counter()
    require_questions(eval_set)
    items = eval_set.items
    out_dir = Path(out_dir)
    check_report_dir(out_dir, inputs=[eval_set.source])
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create {out_dir}: {exc.strerror or exc}; choose another "
                         "-o REPORT_DIR.") from None
    by_id = {i.id: i for i in items}
    ids, skipped = resolve_models(pipeline, modes, model=model, ft_model=ft_model,
                                  skip_unavailable=skip_unavailable)
    for mode, model_id in ids.items():
        _check_journal(out_dir / f"answers-{mode}.jsonl", by_id, model_id)
    set_path = out_dir / "questions.jsonl"
    write_atomic(set_path, "".join(json.dumps(i.to_json(), ensure_ascii=False) + "\n"
                                    for i in items))
    app = pipeline.app
    notes: list[str] = []
    needs_kb = any(m in RETRIEVAL_MODES for m in ids)
    retrieval: dict[str, Any] | None = None
    try:
        done_hits = _retrieval_pass(app, kb, items, out_dir / "retrieval.jsonl", progress)
        retrieval = _retrieval_metrics(items, done_hits)
    except ApplianceError as exc:
        if needs_kb:
            raise
        notes.append(f"Retrieval metrics skipped: {exc}")

    results: dict[str, Any] = {}
    per_question: dict[str, dict[str, dict[str, Any]]] = {i.id: {} for i in items}
    for mode, model_id in ids.items():
        journal = out_dir / f"answers-{mode}.jsonl"
        override = ft_model if mode in FINE_TUNED_MODES else model

        def answer_fn(q: BatchQuestion, mode: str = mode, override: str | None = override
                      ) -> Answer:
            rec = pipeline.ask(q.question, kb=kb, mode=mode, model=override, id=q.id)
            context: dict[str, str] = {}
            if rec.citations:
                rows = app.retriever(kb).kb.chunks([c.chunk_id for c in rec.citations])
                context = {str(cid): row.text for cid, row in rows.items()}
            values = {f.name: getattr(rec, f.name) for f in fields(rec)}
            return EvalAnswer(**values, context=context)

        def on_progress(done: int, total: int, eta: float | None, mode: str = mode) -> None:
            if progress is not None:
                progress(mode, done, total)

        summary = run_batch(set_path, journal, answer_fn, fmt="jsonl", progress=on_progress)
        records = read_done(journal)
        scores: list[QuestionScore] = []
        for item in items:
            record = records.get(item.id)
            if record is None:
                continue
            score = score_answer(item, record)
            scores.append(score)
            per_question[item.id][mode] = {
                "answer": _short(str(record.get("answer", ""))),
                "abstained": score.abstained,
                "correct": score.correct,
                "f1": round(score.f1, 3),
                "format_ok": score.format_ok,
                "citations": [c.get("path", "").rsplit("/", 1)[-1]
                              for c in record.get("citations") or []],
            }
        results[mode] = {
            "model": model_id,
            "metrics": aggregate(scores, mode),
            "answered_this_run": summary.answered,
            "resumed": summary.skipped,
            "missing": len(items) - len(scores),
            "failed": [vars(f) for f in summary.failed],
            "journal": journal.name,
        }
        if summary.failed:
            notes.append(f"{mode}: {len(summary.failed)} question(s) failed and are left out "
                         "of the metrics; rerun the same command to retry them.")
    if results and not any(r["metrics"]["questions"] for r in results.values()):
        failures = [f for r in results.values() for f in r["failed"]]
        first = (f" (first: id '{failures[0]['id']}': {failures[0]['error']})"
                 if failures else "")
        raise InputError(
            f"No question was answered in any mode{first}, so there is nothing to score; "
            "fix the questions or the setup and rerun the same command."
        )
    n_un = sum(not i.answerable for i in items)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "set": {
            "source": eval_set.source,
            "kind": eval_set.kind,
            "articles": [a.title for a in eval_set.articles],
            "questions": len(items),
            "total_in_set": eval_set.total,
            "answerable": len(items) - n_un,
            "unanswerable": n_un,
            "with_format": sum(i.format is not None for i in items),
            "with_gold_sources": sum(bool(i.gold_sources) for i in items),
            "bad_rows": [str(b) for b in eval_set.bad_rows],
        },
        "kb": kb,
        "modes": results,
        "skipped": skipped,
        "retrieval": retrieval,
        "notes": notes,
        "questions": [
            {"id": i.id, "question": i.question, "answerable": i.answerable,
             "answers": i.answers[:3], "results": per_question[i.id]}
            for i in items
        ],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report["comparisons"] = compare_modes(report)
    report["decision"] = decide(report)
    return report
