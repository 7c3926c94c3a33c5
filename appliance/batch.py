"""Batch question files: read, answer each question once, write records, resume after a crash.

Input: ``.txt`` (one question a line), ``.jsonl`` (``{"id", "question", ...}``; other
fields are kept under ``extra``) or ``.csv`` (a ``question`` column, optional ``id``).
Rows that cannot be used (an empty question, a broken JSON line, a missing column, a
duplicate id) are reported with their line numbers and skipped. Ids default to
``q<line>``.

Output: JSONL of Answer records (default), CSV or Markdown, chosen by the output's
extension or ``fmt``. Each record is appended, flushed and fsynced as soon as it exists,
so ``kill -9`` loses at most the question in flight; a rerun reads the records already
written and skips their ids. CSV and Markdown are rendered at the end from a JSONL journal
beside the output (``OUT.partial.jsonl``), which is removed once every question has a
record; an existing CSV or Markdown output without its journal (a finished run, or some
other file) is never overwritten. A question whose answer raises is counted as failed (and
retried by a rerun); the batch goes on. Errors that would fail every question (a missing
model, a broken knowledge base) stop the batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.errors import ApplianceError, InputError
from appliance.files import check_output_file, read_text, surrogate_in
from appliance.types import Answer, page_suffix, strip_controls

__all__ = [
    "FORMATS",
    "BadRow",
    "BatchQuestion",
    "BatchSummary",
    "Failure",
    "journal_path",
    "output_format",
    "read_done",
    "read_questions",
    "render",
    "run_batch",
]

FORMATS = ("jsonl", "csv", "md")
_EXT_FORMAT = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv",
               ".md": "md", ".markdown": "md"}

_Row = tuple[int, str | None, Any, dict[str, Any]]
ProgressFn = Callable[[int, int, float | None], None]
"""``progress(done, total, eta_seconds)`` after each question of this run."""


@dataclass(frozen=True)
class BatchQuestion:
    """One usable row of a question file."""

    id: str
    question: str
    line: int
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadRow:
    """A row that was skipped, and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(frozen=True)
class Failure:
    """A question whose answer raised."""

    id: str
    line: int
    error: str


@dataclass
class BatchSummary:
    """What a batch run did."""

    total: int = 0
    """Usable questions in the input."""
    answered: int = 0
    """Answered in this run."""
    skipped: int = 0
    """Already answered by an earlier run (resumed)."""
    abstained: int = 0
    failed: list[Failure] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    generate_s: float = 0.0
    seconds: float = 0.0
    output: str = ""

    @property
    def p50_ms(self) -> float:
        """Median answer latency of this run."""
        return _percentile(self.latencies_ms, 50)

    @property
    def p95_ms(self) -> float:
        """95th percentile answer latency of this run."""
        return _percentile(self.latencies_ms, 95)

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second of generation, over the run."""
        return self.completion_tokens / self.generate_s if self.generate_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The summary as ``batch --json`` would print it."""
        return {
            "total": self.total,
            "answered": self.answered,
            "skipped": self.skipped,
            "abstained": self.abstained,
            "failed": [vars(f) for f in self.failed],
            "bad_rows": [vars(b) for b in self.bad_rows],
            "p50_ms": round(self.p50_ms, 1),
            "p95_ms": round(self.p95_ms, 1),
            "tokens_per_s": round(self.tokens_per_s, 2),
            "seconds": round(self.seconds, 3),
            "output": self.output,
        }


def _percentile(values: Sequence[float], q: int) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return float(values[0])
    return float(statistics.quantiles(values, n=100, method="inclusive")[q - 1])


# -- reading -----------------------------------------------------------------------------------


def _clean(question: Any) -> str | None:
    if not isinstance(question, str):
        return None
    text = " ".join(strip_controls(question).split())
    return text or None


def _read_txt(text: str) -> Iterator[_Row | BadRow]:
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield n, None, line, {}


def _read_jsonl(text: str) -> Iterator[_Row | BadRow]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRow(n, f"broken JSON ({exc.msg} at column {exc.colno})")
            continue
        except RecursionError:
            yield BadRow(n, "the JSON nests too deeply to read")
            continue
        if not isinstance(row, dict):
            yield BadRow(n, f"expected a JSON object, got {type(row).__name__}")
            continue
        surrogate = surrogate_in(row)
        if surrogate is not None:  # not text: no answer record could hold it as UTF-8
            yield BadRow(n, f"field '{surrogate[0]}' holds an unpaired surrogate "
                            f"({surrogate[1]}), which is not text; fix the escape")
            continue
        if "question" not in row:
            yield BadRow(n, "missing field 'question'")
            continue
        raw_id = row.get("id")
        extra = {k: v for k, v in row.items() if k not in ("id", "question")}
        if raw_id is not None and (not isinstance(raw_id, (str, int))
                                   or isinstance(raw_id, bool)):
            yield BadRow(n, "field 'id' must be a string or a whole number")
            continue
        yield n, None if raw_id in (None, "") else str(raw_id), row["question"], extra


def _read_csv(text: str, path: Path) -> Iterator[_Row | BadRow]:
    # strict: a quote left open runs to the end of the file; without it the following rows
    # would silently become one long question
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        return
    except csv.Error as exc:
        raise InputError(f"{path} is not valid CSV (line 1: {exc}).") from None
    names = [h.strip() for h in header]
    lowered = [h.lower() for h in names]
    if "question" not in lowered:
        raise InputError(
            f"{path} has no 'question' column (columns: {', '.join(names) or 'none'}); "
            "name the column of questions 'question'."
        )
    q_col = lowered.index("question")
    id_col = lowered.index("id") if "id" in lowered else None
    start = reader.line_num + 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield BadRow(start, f"broken CSV row ({exc})")
            start = reader.line_num + 1
            continue
        line, start = start, reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= q_col:
            yield BadRow(line, f"missing column 'question' (row has {len(row)} of "
                               f"{len(names)} columns)")
            continue
        raw_id = _csv_text(row[id_col].strip()) if id_col is not None and id_col < len(row) else ""
        extra = {
            names[i]: row[i] for i in range(min(len(row), len(names)))
            if i not in (q_col, id_col) and names[i]
        }
        yield line, raw_id or None, _csv_text(row[q_col]), extra


def read_questions(path: Path) -> tuple[list[BatchQuestion], list[BadRow]]:
    """The usable questions of a ``.txt``, ``.jsonl`` or ``.csv`` file and the bad rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".txt", ".jsonl", ".ndjson", ".csv"):
        raise InputError(
            f"{path.name}: unknown question file type '{suffix or '(none)'}'; "
            "use .txt (one question a line), .jsonl or .csv."
        )
    text = read_text(path, "a question file")
    if suffix == ".txt":
        rows = _read_txt(text)
    elif suffix == ".csv":
        rows = _read_csv(text, path)
    else:
        rows = _read_jsonl(text)
    questions: list[BatchQuestion] = []
    bad: list[BadRow] = []
    seen: dict[str, int] = {}
    for item in rows:
        if isinstance(item, BadRow):
            bad.append(item)
            continue
        line, qid, raw, extra = item
        question = _clean(raw)
        if question is None:
            bad.append(BadRow(line, "empty question" if raw in (None, "") or isinstance(raw, str)
                              else f"question must be text, got {type(raw).__name__}"))
            continue
        qid = qid or f"q{line}"
        if qid in seen:
            bad.append(BadRow(line, f"duplicate id '{qid}' (first on line {seen[qid]})"))
            continue
        seen[qid] = line
        questions.append(BatchQuestion(qid, question, line, extra))
    return questions, bad


# -- output ------------------------------------------------------------------------------------


def output_format(path: Path, fmt: str | None = None) -> str:
    """``jsonl``, ``csv`` or ``md``: ``fmt`` when given, else from the extension."""
    if fmt:
        fmt = {"markdown": "md", "json": "jsonl"}.get(fmt.lower(), fmt.lower())
        if fmt not in FORMATS:
            raise InputError(f"Unknown output format '{fmt}'; use jsonl, csv or md.")
        return fmt
    found = _EXT_FORMAT.get(Path(path).suffix.lower())
    if found is None:
        raise InputError(
            f"Cannot tell the output format from '{Path(path).name}'; name it .jsonl, .csv "
            "or .md, or pass --format."
        )
    return found


def journal_path(output: Path, fmt: str) -> Path:
    """Where records are appended as they come: the output itself for JSONL, else a sidecar."""
    output = Path(output)
    return output if fmt == "jsonl" else output.with_name(output.name + ".partial.jsonl")


_RECORD_START = b'{"id": '
"""How every record line this module writes begins (``json.dumps`` of an Answer record)."""


def read_done(journal: Path, *, repair: bool = True) -> dict[str, dict[str, Any]]:
    """Records already in ``journal`` by id; a torn last line (a kill mid-write) is cut off
    (with ``repair``; without it the file is only read).

    Raises InputError, changing nothing, when the file is not a journal of answer records
    (a complete line that is not a JSON object with a string ``id``, or a torn tail that is
    not the start of a record): it is someone else's file, and resuming would damage it.
    """
    if not journal.exists():
        return {}
    if not journal.is_file():
        raise InputError(f"{journal} is not a regular file; batch writes and resumes from a "
                         "file, so give a file path (and `cat` it to a pipe afterwards).")
    data = journal.read_bytes()
    end = data.rfind(b"\n") + 1
    done: dict[str, dict[str, Any]] = {}
    for number, line in enumerate(data[:end].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)):
            raise InputError(f"{journal} is not a batch output (line {number} is not an answer "
                             "record); choose another output file or remove it.")
        done[record["id"]] = record
    if end < len(data):
        tail = data[end:]
        try:
            record = json.loads(tail)
        except ValueError:
            record = None
        if isinstance(record, dict) and isinstance(record.get("id"), str):
            complete = True  # a whole record without its newline: keep it, add the newline
            done[record["id"]] = record
        elif tail.startswith(_RECORD_START):
            complete = False
        else:
            raise InputError(f"{journal} is not a batch output (its last line is not an answer "
                             "record); choose another output file or remove it.")
        if not repair:
            return done
        with journal.open("r+b") as fh:
            if complete:
                fh.seek(0, os.SEEK_END)
                fh.write(b"\n")
            else:
                fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
    return done


@contextmanager
def _locked_append(path: Path) -> Iterator[IO[bytes]]:
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the folder of {path}: {exc.strerror or exc}; choose "
                         "another output.") from None
    with path.open("ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                f"Another batch is writing {path}; wait for it or choose another output."
            ) from None
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _append(fh: IO[bytes], record: dict[str, Any]) -> None:
    fh.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    fh.flush()
    os.fsync(fh.fileno())


def _sources(items: Any) -> str:
    parts = []
    for c in items or []:
        where = f"{c.get('path', '')}{page_suffix(c.get('page'))}"
        if c.get("heading"):
            where += f" > {c['heading']}"
        parts.append(f"[{c.get('n')}] {where}")
    return "; ".join(parts)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a CSV cell as a formula (OWASP's CSV injection list)."""


def _csv_cell(value: Any) -> Any:
    """A text cell without control characters and, when it would start a formula
    (``=HYPERLINK(...)`` in a question, a document or an answer), behind a ``'``, which a
    spreadsheet shows as text; numbers and empty cells as they are."""
    if not isinstance(value, str):
        return value
    text = strip_controls(value)
    if text.startswith(_FORMULA_START):
        try:
            float(text)
        except ValueError:
            return "'" + text
    return text


def _csv_text(cell: str) -> str:
    """A cell as :func:`_csv_cell` wrote it, read back: without the ``'`` put before a
    formula's first character (an answer file is a valid question file)."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


def _md_line(value: Any) -> str:
    """``value`` as text on one Markdown line: no control character, no line break."""
    return " ".join(strip_controls(str(value)).split())


def _md_code(value: Any) -> str:
    """``value`` as an inline code span that a backtick in it cannot end early."""
    text = strip_controls(str(value)).replace("\r", " ").replace("\n", " ")  # spaces kept
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


CSV_COLUMNS = ["id", "question", "answer", "abstained", "citations", "closest", "mode",
               "model", "total_ms", "prompt_tokens", "completion_tokens", "tokens_per_s",
               "flags", "extra"]


def render(records: Sequence[dict[str, Any]], output: Path, fmt: str) -> None:
    """Write ``records`` to ``output`` as CSV or Markdown (atomically)."""
    buf = io.StringIO(newline="")
    if fmt == "csv":
        writer = csv.writer(buf)
        writer.writerow(CSV_COLUMNS)
        for r in records:
            writer.writerow([_csv_cell(cell) for cell in (
                r.get("id"), r.get("question"), r.get("answer"),
                "true" if r.get("abstained") else "false",
                _sources(r.get("citations")), _sources(r.get("closest")),
                r.get("mode"), r.get("model"), r.get("timings_ms", {}).get("total"),
                r.get("tokens", {}).get("prompt"), r.get("tokens", {}).get("completion"),
                r.get("tokens_per_s"), " ".join(r.get("flags") or []),
                json.dumps(r["extra"], ensure_ascii=False) if r.get("extra") else "",
            )])
    elif fmt == "md":
        buf.write("# Answers\n")
        for r in records:  # an id or a question with a line break must not end its heading
            answer = strip_controls(str(r.get("answer", ""))).strip()
            buf.write(f"\n## {_md_line(r.get('id'))}: {_md_line(r.get('question', ''))}\n\n"
                      f"{answer}\n")
            label, items = (("Closest sources", r.get("closest")) if r.get("abstained")
                            else ("Sources", r.get("citations")))
            if items:
                buf.write(f"\n**{label}**\n\n")
                for c in items:
                    heading = f" — {_md_line(c['heading'])}" if c.get("heading") else ""
                    buf.write(f"- [{c.get('n')}] {_md_code(c.get('path'))}"
                              f"{page_suffix(c.get('page'))}{heading}\n")
            total = r.get("timings_ms", {}).get("total")
            buf.write(f"\n<sub>{_md_line(r.get('mode'))} · {_md_line(r.get('model'))} · "
                      f"{total} ms</sub>\n")
    else:
        raise InputError(f"Cannot render format '{fmt}'.")
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8", newline="")
    os.replace(tmp, output)


# -- running -----------------------------------------------------------------------------------


def run_batch(
    questions_path: Path,
    output: Path,
    answer_fn: Callable[[BatchQuestion], Answer],
    *,
    fmt: str | None = None,
    progress: ProgressFn | None = None,
    on_answer: Callable[[BatchQuestion, Answer], None] | None = None,
    on_failure: Callable[[Failure], None] | None = None,
) -> BatchSummary:
    """Answer every question of ``questions_path`` not yet in ``output``; see the module doc.

    ``answer_fn`` answers one question (e.g. ``lambda q: pipeline.ask(q.question, id=q.id,
    kb=kb, mode=mode, model=model)``). Raises InputError for an unusable input or output.
    """
    t0 = time.perf_counter()
    if str(output) == "-":
        raise InputError("batch writes to a file it can resume from, not to standard output; "
                         "give a path such as answers.jsonl (and `cat` it).")
    output = Path(output)
    fmt = output_format(output, fmt)
    journal = journal_path(output, fmt)
    for path in {output, journal}:  # an existing one is resumed: force
        check_output_file(path, force=True, inputs=[questions_path])
    if output.exists() and _is_console(output):
        raise InputError(f"{output} is this process's own output, where the summary and "
                         "progress go too; give a separate file path.")
    questions, bad = read_questions(Path(questions_path))
    if not questions:  # nothing to answer: no output file is made
        return BatchSummary(total=0, bad_rows=bad, output=str(output))
    if fmt != "jsonl" and output.exists() and not journal.exists():
        raise InputError(f"{output} already exists and no unfinished run of it is recorded "
                         "(it is complete, or another file); remove it or choose another output, "
                         "or use a .jsonl output, which a rerun extends.")
    summary = BatchSummary(total=len(questions), bad_rows=bad, output=str(output))
    with _locked_append(journal) as fh:
        done = read_done(journal)
        for q in questions:
            previous = done.get(q.id, {}).get("question")
            if isinstance(previous, str) and _clean(previous) != q.question:
                raise InputError(
                    f"{journal} already answers id '{q.id}' with another question than line "
                    f"{q.line} asks; give the questions new ids or choose another output.")
        todo = [q for q in questions if q.id not in done]
        summary.skipped = len(questions) - len(todo)
        spent = 0.0
        if progress is not None:
            progress(0, len(todo), None)
        for i, q in enumerate(todo):
            started = time.perf_counter()
            try:
                result = answer_fn(q)
            except ApplianceError as exc:
                if not isinstance(exc, InputError):
                    raise
                _fail(summary, q, str(exc), on_failure)
            except Exception as exc:  # one bad question must not stop the batch
                _fail(summary, q, f"{type(exc).__name__}: {exc}", on_failure)
            else:
                record = result.to_json()
                if q.extra:
                    record["extra"] = q.extra
                _append(fh, record)
                done[q.id] = record
                summary.answered += 1
                summary.abstained += int(result.abstained)
                summary.latencies_ms.append((time.perf_counter() - started) * 1000)
                completion = result.tokens.get("completion", 0)
                if completion and result.tokens_per_s > 0:
                    summary.completion_tokens += completion
                    summary.generate_s += completion / result.tokens_per_s
                if on_answer is not None:
                    on_answer(q, result)
            spent += time.perf_counter() - started
            if progress is not None:
                finished = i + 1
                eta = spent / finished * (len(todo) - finished)
                progress(finished, len(todo), eta)
    if fmt != "jsonl":
        ordered = [done[q.id] for q in questions if q.id in done]
        render(ordered, output, fmt)
        if len(ordered) == len(questions):
            journal.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - t0
    return summary


def _is_console(path: Path) -> bool:
    """Whether ``path`` is the file standard output or error is redirected to."""
    try:
        target = os.stat(path)
    except OSError:
        return False
    for stream in (sys.stdout, sys.stderr):
        try:
            if os.path.samestat(target, os.fstat(stream.fileno())):
                return True
        except (AttributeError, OSError, ValueError):  # no real file descriptor
            continue
    return False


def _fail(
    summary: BatchSummary, q: BatchQuestion, error: str,
    on_failure: Callable[[Failure], None] | None,
) -> None:
    failure = Failure(q.id, q.line, error)
    summary.failed.append(failure)
    if on_failure is not None:
        on_failure(failure)
