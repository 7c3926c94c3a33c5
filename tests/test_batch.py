"""Batch files: reading every format and bad-row kind, output formats, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from appliance.batch import (
    BatchQuestion,
    journal_path,
    output_format,
    read_done,
    read_questions,
    run_batch,
)
from appliance.errors import InputError, ModelNotFoundError
from appliance.types import Answer, Citation

REPO = Path(__file__).resolve().parent.parent


def fake_answer(q: BatchQuestion) -> Answer:
    abstain = "capital" in q.question.lower()
    cites = [] if abstain else [Citation(1, "/d/a.md", "A", 3, 0.016)]
    closest = [Citation(1, "/d/a.md", "A", 3, 0.016)] if abstain else []
    return Answer(
        id=q.id, question=q.question,
        answer="I could not find this in the documents." if abstain else f"Yes: {q.id} [1].",
        abstained=abstain, citations=cites, closest=closest, mode="rag", model="fake",
        timings_ms={"embed": 1.0, "search": 1.0, "prompt": 0.1, "generate": 5.0, "total": 7.1},
        tokens={"prompt": 100, "completion": 0 if abstain else 10},
        tokens_per_s=0.0 if abstain else 50.0,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


# -- reading -------------------------------------------------------------------------------


def test_read_txt(tmp_path: Path) -> None:
    qs, bad = read_questions(write(tmp_path / "q.txt", """
        What is A?

          What is   B?\t
        """))
    assert [(q.id, q.question, q.line) for q in qs] == [("q1", "What is A?", 1),
                                                       ("q3", "What is B?", 3)]
    assert bad == []


def test_read_jsonl_every_bad_row_kind(tmp_path: Path) -> None:
    qs, bad = read_questions(write(tmp_path / "q.jsonl", """
        {"id": "a", "question": "First?", "answers": ["x"], "answerable": true}
        {"question": "No id?"}
        {"id": "c", "question": "   "}
        {"id": "d", "question": "broken"
        {"id": "e"}
        [1, 2]
        {"id": "a", "question": "Duplicate?"}
        {"id": 7, "question": "Numeric id?"}
        {"id": "h", "question": 12}

        {"id": "i", "question": "Last?"}
        {"id": true, "question": "Boolean id?"}
        """))
    assert [(q.id, q.question, q.line) for q in qs] == [
        ("a", "First?", 1), ("q2", "No id?", 2), ("7", "Numeric id?", 8), ("i", "Last?", 11)]
    assert qs[0].extra == {"answers": ["x"], "answerable": True}
    reasons = {b.line: b.reason for b in bad}
    assert reasons[3] == "empty question"
    assert reasons[4].startswith("broken JSON")
    assert reasons[5] == "missing field 'question'"
    assert reasons[6].startswith("expected a JSON object")
    assert reasons[7].startswith("duplicate id 'a'")
    assert reasons[9].startswith("question must be text")
    assert reasons[12] == "field 'id' must be a string or a whole number"
    assert str(bad[0]).startswith("line 3:")


def test_deep_json_and_surrogates_are_bad_rows_and_the_rest_is_answered(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    qfile = tmp_path / "q.jsonl"
    qfile.write_text('{"id": "a", "question": "First?"}\n'
                     f'{{"id": "b", "question": "Deep?", "meta": {deep}}}\n'
                     '{"id": "c", "question": "What is \\ud800?"}\n'
                     '{"id": "d", "question": "Q?", "meta": {"x": ["\\udc00"]}}\n'
                     '{"id": "e", "question": "Last?"}\n', encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    summary = run_batch(qfile, out, fake_answer)
    reasons = {b.line: b.reason for b in summary.bad_rows}
    assert "nests too deeply" in reasons[2]
    assert reasons[3].startswith("field 'question' holds an unpaired surrogate (\\ud800)")
    assert reasons[4].startswith("field 'meta' holds an unpaired surrogate (\\udc00)")
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "e"]


def test_a_question_file_that_is_a_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "q.txt"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):
        read_questions(fifo)


def test_read_csv(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Question", "topic"])
        w.writerow(["x1", "What is A?", "letters"])
        w.writerow(["", "Multi\nline question?", "t"])
        w.writerow(["x3", "", "t"])
        w.writerow(["x4"])
        w.writerow(["x1", "Dup?", "t"])
        w.writerow([])
        w.writerow(["x7", "Last?"])
    qs, bad = read_questions(path)
    assert [(q.id, q.question, q.line) for q in qs] == [
        ("x1", "What is A?", 2), ("q3", "Multi line question?", 3), ("x7", "Last?", 9)]
    assert qs[0].extra == {"topic": "letters"}
    assert [(b.line, b.reason.split(" (")[0]) for b in bad] == [
        (5, "empty question"), (6, "missing column 'question'"), (7, "duplicate id 'x1'")]


def test_a_line_of_control_characters_is_an_empty_question(tmp_path: Path) -> None:
    qs, bad = read_questions(write(tmp_path / "q.txt", "\x00\x00\nWhat\x1b[2J is A?\n"))
    assert [(q.id, q.question) for q in qs] == [("q2", "What[2J is A?")]
    assert [(b.line, b.reason) for b in bad] == [(1, "empty question")]


def test_csv_with_a_quote_left_open_is_a_bad_row_not_a_merged_question(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_text('question,id\nFirst?,1\n"Unterminated?,2\nThird?,3\n', encoding="utf-8")
    qs, bad = read_questions(path)
    assert [(q.id, q.question) for q in qs] == [("1", "First?")]
    assert len(bad) == 1 and bad[0].line == 3 and "unexpected end of data" in bad[0].reason


def test_csv_without_question_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no 'question' column"):
        read_questions(write(tmp_path / "q.csv", "id,text\n1,hello\n"))


@pytest.mark.parametrize("name", ["q.pdf", "q"])
def test_unknown_input_type(tmp_path: Path, name: str) -> None:
    with pytest.raises(InputError, match="unknown question file type"):
        read_questions(write(tmp_path / name, "x\n"))


def test_missing_and_non_utf8_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_questions(tmp_path / "nope.txt")
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe bad\n")
    with pytest.raises(InputError, match="line 2"):
        read_questions(tmp_path / "bad.txt")


def test_output_format() -> None:
    assert output_format(Path("a.jsonl")) == "jsonl"
    assert output_format(Path("a.CSV")) == "csv"
    assert output_format(Path("a.md")) == "md"
    assert output_format(Path("a.out"), "markdown") == "md"
    with pytest.raises(InputError, match="--format"):
        output_format(Path("a.out"))
    with pytest.raises(InputError):
        output_format(Path("a.jsonl"), "xml")


# -- running -------------------------------------------------------------------------------


def _questions(tmp_path: Path, n: int = 6) -> Path:
    lines = [f"Question number {i}?" for i in range(1, n + 1)]
    lines[2] = "What is the capital of Australia?"
    return write(tmp_path / "q.txt", "\n".join(lines) + "\n")


def test_jsonl_run_summary_progress_and_resume(tmp_path: Path) -> None:
    qfile = _questions(tmp_path)
    out = tmp_path / "out" / "answers.jsonl"
    seen: list[tuple[int, int, float | None]] = []
    summary = run_batch(qfile, out, fake_answer, progress=lambda d, t, e: seen.append((d, t, e)))
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"q{i}" for i in range(1, 7)]
    assert records[0]["citations"][0]["path"] == "/d/a.md"
    assert summary.answered == 6 and summary.abstained == 1 and summary.failed == []
    assert summary.skipped == 0 and summary.p50_ms >= 0 and summary.p95_ms >= summary.p50_ms
    assert summary.tokens_per_s == pytest.approx(50.0)
    assert seen[0] == (0, 6, None) and seen[-1][:2] == (6, 6) and seen[-1][2] == 0
    again = run_batch(qfile, out, fake_answer)
    assert again.answered == 0 and again.skipped == 6
    assert len(out.read_text().splitlines()) == 6


def test_failures_are_counted_and_retried(tmp_path: Path) -> None:
    qfile = _questions(tmp_path)
    out = tmp_path / "a.jsonl"

    def flaky(q: BatchQuestion) -> Answer:
        if q.id in ("q2", "q5"):
            raise RuntimeError("llama_decode returned -1")
        return fake_answer(q)

    summary = run_batch(qfile, out, flaky)
    assert summary.answered == 4 and [f.id for f in summary.failed] == ["q2", "q5"]
    assert "RuntimeError" in summary.failed[0].error and summary.failed[0].line == 2
    rerun = run_batch(qfile, out, fake_answer)
    assert rerun.answered == 2 and rerun.skipped == 4
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert sorted(ids) == [f"q{i}" for i in range(1, 7)] and len(set(ids)) == 6


def test_systemic_errors_stop_the_batch(tmp_path: Path) -> None:
    def broken(q: BatchQuestion) -> Answer:
        raise ModelNotFoundError("No model 'x' is registered.")

    with pytest.raises(ModelNotFoundError):
        run_batch(_questions(tmp_path), tmp_path / "a.jsonl", broken)


def test_extra_fields_are_kept(tmp_path: Path) -> None:
    qfile = write(tmp_path / "q.jsonl", '{"id": "k", "question": "Q?", "answers": ["a"]}\n')
    out = tmp_path / "a.jsonl"
    run_batch(qfile, out, fake_answer)
    assert json.loads(out.read_text())["extra"] == {"answers": ["a"]}


def test_torn_last_line_is_cut_and_redone(tmp_path: Path) -> None:
    qfile = _questions(tmp_path, 3)
    out = tmp_path / "a.jsonl"
    good = json.dumps(fake_answer(BatchQuestion("q1", "Question number 1?", 1)).to_json())
    torn = good + "\n" + '{"id": "q2", "question": "Quest'
    out.write_text(torn, encoding="utf-8")
    assert set(read_done(out, repair=False)) == {"q1"} and out.read_text() == torn  # a check
    assert set(read_done(out)) == {"q1"}
    assert out.read_text().endswith("}\n")
    summary = run_batch(qfile, out, fake_answer)
    assert summary.skipped == 1 and summary.answered == 2
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["q1", "q2", "q3"]


def test_a_file_that_is_not_a_batch_output_is_left_alone(tmp_path: Path) -> None:
    qs = write(tmp_path / "q.txt", "What is A?\n")
    pretty = tmp_path / "report.json"
    pretty.write_text('{\n "id": "x",\n "question": "hi"\n}', encoding="utf-8")
    text = tmp_path / "notes.jsonl"
    text.write_text("my notes, no newline at the end", encoding="utf-8")
    for path in (pretty, text):
        before = path.read_bytes()
        with pytest.raises(InputError, match="not a batch output"):
            run_batch(qs, path, fake_answer)
        assert path.read_bytes() == before  # nothing cut, nothing appended


def test_output_must_be_a_regular_file_other_than_the_input(tmp_path: Path) -> None:
    qs = write(tmp_path / "q.jsonl", '{"id": "a", "question": "What is A?"}\n')
    with pytest.raises(InputError, match="is an input of this command"):
        run_batch(qs, qs, fake_answer)
    with pytest.raises(InputError, match="not to standard output"):
        run_batch(qs, Path("-"), fake_answer, fmt="jsonl")
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="not a regular file"):  # reading it back would hang
        run_batch(qs, fifo, fake_answer)
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_batch(qs, qs / "out.jsonl", fake_answer)


def test_resume_refuses_an_id_that_now_asks_another_question(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    run_batch(write(tmp_path / "q.txt", "What is A?\n"), out, fake_answer)
    again = run_batch(write(tmp_path / "q.txt", "What   is A?\n"), out, fake_answer)
    assert again.skipped == 1  # the same question, spaced differently
    before = out.read_bytes()
    with pytest.raises(InputError, match="id 'q1' with another question than line 1"):
        run_batch(write(tmp_path / "q.txt", "What is the capital of France?\n"), out,
                  fake_answer)
    assert out.read_bytes() == before


@pytest.mark.parametrize("fmt", ["csv", "md"])
def test_csv_and_markdown_outputs_use_a_journal(tmp_path: Path, fmt: str) -> None:
    qfile = _questions(tmp_path)
    out = tmp_path / f"answers.{fmt}"
    calls: list[str] = []

    def stop_after_three(q: BatchQuestion) -> Answer:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(q.id)
        return fake_answer(q)

    with pytest.raises(KeyboardInterrupt):
        run_batch(qfile, out, stop_after_three)
    journal = journal_path(out, fmt)
    assert journal.name == f"answers.{fmt}.partial.jsonl" and not out.exists()
    assert len(journal.read_text().splitlines()) == 3
    summary = run_batch(qfile, out, fake_answer)
    assert summary.skipped == 3 and summary.answered == 3 and not journal.exists()
    text = out.read_text(encoding="utf-8")
    if fmt == "csv":
        rows = list(csv.DictReader(text.splitlines()))
        assert [r["id"] for r in rows] == [f"q{i}" for i in range(1, 7)]
        assert rows[0]["citations"] == "[1] /d/a.md > A" and rows[2]["abstained"] == "true"
    else:
        assert text.startswith("# Answers") and text.count("\n## ") == 6
        assert "**Closest sources**" in text and "`/d/a.md`" in text
    with pytest.raises(InputError, match="already exists"):  # finished: not redone, not lost
        run_batch(qfile, out, fake_answer)
    assert out.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("fmt", ["csv", "md"])
def test_outputs_name_the_page_of_a_pdf_source(tmp_path: Path, fmt: str) -> None:
    def pdf_answer(q: BatchQuestion) -> Answer:
        rec = fake_answer(q)
        for c in [*rec.citations, *rec.closest]:
            c.path, c.page = "/d/manual.pdf", 7
        return rec

    out = tmp_path / f"answers.{fmt}"
    run_batch(_questions(tmp_path), out, pdf_answer)
    text = out.read_text(encoding="utf-8")
    expected = "[1] /d/manual.pdf p. 7 > A" if fmt == "csv" else "`/d/manual.pdf` p. 7 — A"
    assert text.count(expected) == 6


def test_a_second_writer_is_refused(tmp_path: Path) -> None:
    import fcntl

    out = tmp_path / "a.jsonl"
    with out.open("ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        with pytest.raises(InputError, match="Another batch"):
            run_batch(_questions(tmp_path), out, fake_answer)


_KILL_SCRIPT = """
import os, sys, time
sys.path.insert(0, {repo!r})
sys.path.insert(0, {tests!r})
from test_batch import fake_answer
from appliance.batch import run_batch

def slow(q):
    if q.id == "q4":
        os.kill(os.getpid(), 9)  # kill -9 while this question is in flight
    return fake_answer(q)

run_batch(sys.argv[1], sys.argv[2], slow)
"""


def test_kill_9_loses_at_most_the_question_in_flight(tmp_path: Path) -> None:
    qfile = _questions(tmp_path, 8)
    out = tmp_path / "a.jsonl"
    script = tmp_path / "kill.py"
    script.write_text(_KILL_SCRIPT.format(repo=str(REPO), tests=str(REPO / "tests")))
    proc = subprocess.run([sys.executable, str(script), str(qfile), str(out)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9, proc.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["q1", "q2", "q3"]
    summary = run_batch(qfile, out, fake_answer)
    assert summary.skipped == 3 and summary.answered == 5
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert ids == [f"q{i}" for i in range(1, 9)]


def test_an_output_that_is_our_own_stdout_is_refused(tmp_path: Path) -> None:
    qs = write(tmp_path / "q.txt", "What is A?\n")
    captured = tmp_path / "captured.jsonl"
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from appliance.batch import run_batch
        from appliance.errors import InputError
        try:
            run_batch(Path(sys.argv[1]), Path(sys.argv[2]), None, fmt="jsonl")
        except InputError as exc:
            sys.exit(f"refused: {exc}")
        """)
    for target, reason in ((captured, "own output"), (Path("/dev/stdout"), "symlink")):
        with captured.open("w") as fh:  # `appliance batch q.txt -o TARGET > captured.jsonl`
            proc = subprocess.run([sys.executable, "-c", code, str(qs), str(target)],
                                  stdout=fh, cwd=REPO, stderr=subprocess.PIPE, text=True)
        assert proc.returncode == 1 and reason in proc.stderr, proc.stderr
        assert captured.read_text() == ""
