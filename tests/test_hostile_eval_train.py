"""Hostile input files for ``eval``, ``eval-retrieval``, ``train-data check`` and ``train``.

Every bad input must end in one ApplianceError sentence (line numbers where the format is
line-based), quickly, without reading a huge file whole, without blocking on a pipe or a
device, and without overwriting files that are not the command's own.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance import files as files_module
from appliance.api import Appliance
from appliance.config import AnswerSettings, load_settings
from appliance.errors import ApplianceError, InputError
from appliance.evaluate.metrics import format_ok, schema_problem
from appliance.evaluate.retrieval import load_beir
from appliance.evaluate.runner import check_report_dir, load_eval_set, run_eval
from appliance.evaluate.squad import load_squad
from appliance.pipeline import Pipeline
from appliance.train.data import validate_chat_jsonl
from tests.conftest import run_main
from tests.fakes import FakeGenerator, HashEmbedder

SMOL = "smollm2-135m-instruct-q4_1"
GOOD_ROW = {"id": "ok", "question": "What is x?", "answers": ["y"]}
GOOD_CHAT = {"messages": [{"role": "user", "content": "hi"},
                          {"role": "assistant", "content": "hello"}]}
DEEP = "[" * 100_000 + "]" * 100_000


def jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def sparse(path: Path, size: int = 2 * 1024**3) -> Path:
    with path.open("wb") as fh:
        fh.write(b'{"id": "a"}\n')
    os.truncate(path, size)
    return path


def finishes(fn: Callable[[], Any], seconds: float = 10.0) -> BaseException | None:
    """Run ``fn`` in a daemon thread; the exception it raised (None if none). Fails the
    test when it is still running after ``seconds`` (a blocked read of a pipe)."""
    box: dict[str, BaseException | None] = {}

    def target() -> None:
        try:
            fn()
            box["exc"] = None
        except BaseException as exc:  # handed back to the test
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s (blocked?)"
    return box["exc"]


def unblock(fifo: Path) -> None:
    """Open a FIFO's write end without blocking, so a reader stuck on it (before the fix)
    gets end of file."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


def refused_as_not_a_regular_file(load: Callable[[Path], Any], where: Path) -> None:
    """``load`` refuses ``where`` made a FIFO (without blocking on it), then a link to
    ``/dev/zero`` (without reading forever), saying it is not a regular file."""
    if where.exists():
        where.unlink()
    os.mkfifo(where)
    try:
        exc = finishes(lambda: load(where))
    finally:
        unblock(where)
    assert isinstance(exc, InputError) and "not a regular file" in str(exc), exc
    where.unlink()
    where.symlink_to("/dev/zero")
    exc = finishes(lambda: load(where))
    assert isinstance(exc, InputError) and "not a regular file" in str(exc), exc
    where.unlink()


# -- eval sets: files ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["set.jsonl", "squad.json"])
def test_eval_set_refuses_a_huge_file_without_reading_it(tmp_path: Path, name: str) -> None:
    path = sparse(tmp_path / name)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"over the limit .*; (split|take)"):
        load_eval_set(path)
    assert time.perf_counter() - t0 < 2


def test_eval_set_deeply_nested_line_is_a_bad_row(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "set.jsonl", [GOOD_ROW, '{"id": "d", "question": "q", '
                                          f'"format": {DEEP}}}'])
    data = load_eval_set(path)
    assert [i.id for i in data.items] == ["ok"]
    assert [b.line for b in data.bad_rows] == [2] and "nests too deeply" in data.bad_rows[0].reason


def test_eval_set_rows_with_unpaired_surrogates_are_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n"
                    + '{"id": "s", "question": "What is \\ud800 x?", "answers": ["y"]}\n'
                    + '{"id": "t", "question": "Q?", "answers": ["y"], "note": "\\udc00"}\n'
                    + '{"id": "u\\ud800", "question": "Q?", "answers": ["y"]}\n',
                    encoding="utf-8")
    data = load_eval_set(path)
    assert [i.id for i in data.items] == ["ok"]
    assert [b.line for b in data.bad_rows] == [2, 3, 4]
    assert all("surrogate" in b.reason for b in data.bad_rows)


def test_eval_set_json_schema_formats_are_checked(tmp_path: Path) -> None:
    bad_schemas = [{"type": "string", "minLength": "x"}, {"type": "string", "pattern": "("},
                   {"enum": 5}, {"required": 5}, {"properties": [1]}, {"type": ["x"]},
                   {"anyOf": {"type": "string"}}, {"items": {"maximum": "high"}}]
    rows: list[Any] = [{**GOOD_ROW, "id": f"b{n}", "format": s}
                       for n, s in enumerate(bad_schemas)]
    rows.append({**GOOD_ROW, "format": {"type": "object", "required": ["a"],
                                        "properties": {"a": {"type": "integer"}}}})
    data = load_eval_set(jsonl(tmp_path / "set.jsonl", rows))
    assert [i.id for i in data.items] == ["ok"]
    assert [b.line for b in data.bad_rows] == list(range(1, len(bad_schemas) + 1))
    assert all("format" in b.reason for b in data.bad_rows)
    assert schema_problem({"type": "object", "properties": {"a": {"minimum": 1}}}) is None


def test_format_ok_survives_hostile_patterns_and_answers() -> None:
    t0 = time.perf_counter()  # catastrophic backtracking: must give up, not hang
    assert format_ok("The library opens at 9 in the morning and closes at 5 on weekdays!",
                     r"^(\w+\s?)*$") is False
    assert time.perf_counter() - t0 < 10
    assert format_ok(DEEP, {"type": "array"}) is False  # nesting beyond the JSON parser
    assert format_ok('"abc"', {"type": "string", "minLength": "x"}) is False
    assert format_ok('"abc"', {"type": "string", "pattern": "^a"}) is True


def test_eval_set_over_long_question_is_a_bad_row(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "set.jsonl", [{**GOOD_ROW, "id": "big", "question": "x " * 300},
                                          GOOD_ROW])
    data = load_eval_set(path, max_question_chars=100)
    assert [i.id for i in data.items] == ["ok"]
    assert data.bad_rows[0].line == 1 and "100" in data.bad_rows[0].reason


# -- eval sets: SQuAD ------------------------------------------------------------------------


def squad(path: Path, data: Any) -> Path:
    path.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    return path


def article(title: str, qas: list[Any], context: str = "Alpha is a letter.") -> dict[str, Any]:
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def qa(qid: Any, question: str = "What is alpha?", answers: tuple[str, ...] = ("a letter",),
       **more: Any) -> dict[str, Any]:
    return {"id": qid, "question": question,
            "answers": [{"text": a, "answer_start": 0} for a in answers], **more}


@pytest.mark.parametrize(("data", "field"), [
    ([1], r"data\[0\]"),
    ([{"title": "A", "paragraphs": ["x"]}], r"data\[0\]\.paragraphs\[0\]"),
    ([article("A", [5])], r"qas\[0\]"),
    ([article("A", [{"id": "x", "question": "q?", "answers": ["text"]}])], r"answers\[0\]"),
    ([article("A", [qa({"x": 1})])], r"qas\[0\]\.id"),
    ([article("A", [qa("i", is_impossible="false")])], r"is_impossible"),
    ([article("A", [qa("a1")]), article("A", [qa("a2")])], r"data\[1\]\.title.*repeats"),
    ([article("A", [qa("a1", "What is \ud800?")])], r"surrogate"),
])
def test_squad_file_with_a_bad_structure_names_the_field(tmp_path: Path, data: Any,
                                                         field: str) -> None:
    path = tmp_path / "squad.json"
    path.write_text(json.dumps({"data": data}), encoding="utf-8")
    with pytest.raises(ValueError, match=field):
        load_squad(path)
    with pytest.raises(InputError, match=field):
        load_eval_set(path, articles="all")


@pytest.mark.parametrize("data", [
    [article("A", [qa("a1"), qa("a1", "Other?")])],
    [article("A", [qa("a1")]), article("B", [qa("a1", "Other?")])],
])
def test_squad_eval_set_refuses_repeated_question_ids(tmp_path: Path, data: Any) -> None:
    path = squad(tmp_path / "squad.json", data)
    with pytest.raises(InputError, match="question id 'a1' repeats"):
        load_eval_set(path, articles="all")


def test_squad_file_encoding_nesting_and_missing_ids(tmp_path: Path) -> None:
    good = [article("A", [qa("a1"), qa(None, "What else?")]), article("B", [qa("b1")])]
    path = tmp_path / "squad.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"data": good}).encode())
    articles = load_squad(path)  # a BOM is fine
    assert [q.id for q in articles[0].questions] == ["a1", "A-0-1"]
    path.write_bytes(b'{"data": [\n{"title": "A\xff"}]}')
    with pytest.raises(InputError, match=r"not UTF-8 text \(line 2\)"):
        load_squad(path)
    path.write_text('{"data": ' + DEEP + "}", encoding="utf-8")
    with pytest.raises(ValueError, match="nest"):
        load_squad(path)


def test_eval_cli_refuses_a_squad_selection_without_questions_before_ingesting(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = squad(tmp_path / "squad.json", [{"title": "A", "paragraphs": [{"context": "x"}]},
                                           {"title": "B", "paragraphs": []}])
    code, text = run_main(capsys, "eval", str(path), "--articles", "all", "--modes", "base",
                          "-o", str(tmp_path / "report"))
    assert code == 2 and "no question" in text.lower() and "Traceback" not in text
    home = Path(os.environ["APPLIANCE_HOME"])
    assert not (home / "kb").exists() and not (home / "eval").exists()
    assert not (tmp_path / "report").exists()


# -- eval: the report folder -----------------------------------------------------------------


def eval_reply(messages: list[dict[str, str]]) -> str:
    return "It opens at 9 [1]." if "<source" in messages[-1]["content"] else "Maybe 9."


@pytest.fixture
def fake_app(tmp_path: Path) -> Iterator[Appliance]:
    app = Appliance(load_settings(home=tmp_path / "home"))
    app._embedder = HashEmbedder()  # type: ignore[assignment]
    yield app
    app.close()


def pipeline(app: Appliance, fail: bool = False) -> Pipeline:
    config = AnswerSettings(abstain_min_vector=0.2, abstain_min_keyword=1.0)
    return Pipeline(app, config=config,  # type: ignore[arg-type]
                    loader=lambda i: FakeGenerator(eval_reply, i, fail=fail))


@pytest.mark.parametrize(("name", "content"), [
    ("questions.jsonl", "my notes\n"),
    ("report.md", "# My own report\n"),
    ("report.html", "<html>mine</html>\n"),
    ("report.json", '{"my": "config"}\n'),
])
def test_run_eval_never_overwrites_another_programs_files(
        fake_app: Appliance, tmp_path: Path, name: str, content: str) -> None:
    out = tmp_path / "report"
    out.mkdir()
    (out / name).write_text(content, encoding="utf-8")
    data = load_eval_set(jsonl(tmp_path / "set.jsonl", [GOOD_ROW]))
    with pytest.raises(InputError, match=f"{name} .*not .*eval"):
        run_eval(pipeline(fake_app), data, out, modes=["base"], kb="none", model=SMOL)
    assert (out / name).read_text(encoding="utf-8") == content
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_run_eval_refuses_a_symlink_and_its_own_input_in_the_report_dir(
        fake_app: Appliance, tmp_path: Path) -> None:
    out = tmp_path / "report"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep\n", encoding="utf-8")
    (out / "answers-base.jsonl").symlink_to(target)
    data = load_eval_set(jsonl(tmp_path / "set.jsonl", [GOOD_ROW]))
    with pytest.raises(InputError, match="symlink"):
        run_eval(pipeline(fake_app), data, out, modes=["base"], kb="none", model=SMOL)
    assert target.read_text(encoding="utf-8") == "keep\n"
    inside = tmp_path / "own"
    inside.mkdir()
    own = jsonl(inside / "questions.jsonl", [GOOD_ROW, {**GOOD_ROW, "id": "two"}])
    before = own.read_bytes()
    with pytest.raises(InputError, match="input"):
        check_report_dir(inside, inputs=[own])
    assert own.read_bytes() == before
    with pytest.raises(InputError, match="is a file"):
        check_report_dir(target / "sub")


def test_run_eval_where_every_question_fails_reports_no_decision(
        fake_app: Appliance, tmp_path: Path) -> None:
    data = load_eval_set(jsonl(tmp_path / "set.jsonl", [GOOD_ROW]))
    with pytest.raises(ApplianceError, match="No question was answered"):
        run_eval(pipeline(fake_app, fail=True), data, tmp_path / "r", modes=["base"],
                 kb="none", model=SMOL)
    assert not (tmp_path / "r" / "report.json").exists()


# -- eval-retrieval (BEIR) -------------------------------------------------------------------


def beir(folder: Path, corpus: list[Any] | None = None, queries: list[Any] | None = None,
         qrels: str = "q1\td1\t1\n") -> Path:
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    jsonl(folder / "corpus.jsonl", corpus if corpus is not None else
          [{"_id": "d1", "title": "T", "text": "The ferry leaves hourly."}])
    jsonl(folder / "queries.jsonl", queries if queries is not None else
          [{"_id": "q1", "text": "when does the ferry leave"}])
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


def test_beir_refuses_pipes_devices_and_huge_files_quickly(tmp_path: Path) -> None:
    folder = beir(tmp_path / "b")
    corpus = folder / "corpus.jsonl"
    refused_as_not_a_regular_file(lambda _: load_beir(folder), corpus)
    sparse(corpus)
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="over the limit"):
        load_beir(folder)
    assert time.perf_counter() - t0 < 2


@pytest.mark.parametrize(("corpus", "queries", "qrels", "message"), [
    ([{"_id": {"a": 1}, "text": "x"}], None, "q1\td1\t1\n", r"corpus\.jsonl line 1: .*_id"),
    ([{"_id": None, "text": "x"}], None, "q1\td1\t1\n", r"corpus\.jsonl line 1: .*_id"),
    ([{"_id": "d1", "text": ["a"]}], None, "q1\td1\t1\n", r"corpus\.jsonl line 1: .*text"),
    (None, [{"_id": "q1", "text": {"a": 1}}], "q1\td1\t1\n", r"queries\.jsonl line 1: .*text"),
    (None, [{"_id": "q1", "text": "a"}, {"_id": "q1", "text": "b"}], "q1\td1\t1\n",
     r"queries\.jsonl line 2: .*repeats _id 'q1'"),
    ([{"_id": "d1", "text": "a"}, {"_id": 1, "text": "b"}, {"_id": "1", "text": "c"}], None,
     "q1\td1\t1\n", r"corpus\.jsonl line 3: .*repeats _id '1'"),
    ([{"_id": "d1", "text": "a\ud800"}], None, "q1\td1\t1\n", r"line 1: .*surrogate"),
    (['{"_id": "d1", "text": ' + DEEP + "}"], None, "q1\td1\t1\n", r"line 1: .*nest"),
    (None, None, "q1\td1\t1\nq1\td1\t2\n", r"test\.tsv line 2: .*line 1"),
])
def test_beir_bad_rows_are_named_by_file_and_line(
        tmp_path: Path, corpus: list[Any] | None, queries: list[Any] | None, qrels: str,
        message: str) -> None:
    folder = beir(tmp_path / "b", corpus, queries, qrels)
    with pytest.raises(InputError, match=message):
        load_beir(folder)


def test_beir_identical_repeated_judgements_are_fine(tmp_path: Path) -> None:
    data = load_beir(beir(tmp_path / "b", qrels="q1\td1\t1\nq1\td1\t1\n"))
    assert data.qrels == {"q1": {"d1": 1}}


# -- training data ---------------------------------------------------------------------------


def test_chat_data_refuses_pipes_devices_and_huge_files(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    refused_as_not_a_regular_file(validate_chat_jsonl, tmp_path / "chat.jsonl")
    with pytest.raises(InputError, match="folder"):
        validate_chat_jsonl(tmp_path)
    monkeypatch.setattr(files_module, "MAX_INPUT_BYTES", 1024)
    big = jsonl(tmp_path / "big.jsonl", [GOOD_CHAT] * 40)
    with pytest.raises(InputError, match=r"over the limit .*split"):
        validate_chat_jsonl(big)


def test_chat_data_huge_deep_and_surrogate_lines_are_line_issues(tmp_path: Path) -> None:
    huge = {"messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)},
                         {"role": "assistant", "content": "y"}]}
    surrogate = ('{"messages": [{"role": "user", "content": "hi \\ud800"}, '
                 '{"role": "assistant", "content": "x"}]}')
    path = jsonl(tmp_path / "d.jsonl", [GOOD_CHAT, huge, '{"messages": ' + DEEP + "}",
                                        surrogate])
    report = validate_chat_jsonl(path)
    assert [e.line for e in report.examples] == [1]
    by_line = {i.line: i for i in report.issues}
    assert by_line[2].kind == "too_long" and "MiB" in by_line[2].message
    assert by_line[3].kind == "json" and "nest" in by_line[3].message
    assert by_line[4].field == "messages[0].content" and "surrogate" in by_line[4].message


def test_train_data_check_of_an_empty_file_says_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for content in (b"", b"\xef\xbb\xbf", b"\n \n"):
        path = tmp_path / "empty.jsonl"
        path.write_bytes(content)
        code, text = run_main(capsys, "train-data", "check", str(path))
        assert code == 2 and "holds no examples" in text and "Traceback" not in text


def test_train_refuses_a_huge_example_before_loading_the_model(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = {"messages": [{"role": "user", "content": "word " * 60_000},
                        {"role": "assistant", "content": "ok"}]}
    path = jsonl(tmp_path / "d.jsonl", [GOOD_CHAT, big])
    t0 = time.perf_counter()
    code, text = run_main(capsys, "train", str(path), "--base", SMOL, "--epochs", "1",
                          "--max-steps", "1")
    assert code == 2 and "line 2" in text and "--max-len" in text, text
    assert time.perf_counter() - t0 < 20
    assert not (Path(os.environ["APPLIANCE_HOME"]) / "train").exists()


def test_check_report_dir_accepts_its_own_report_folder(fake_app: Appliance,
                                                        tmp_path: Path) -> None:
    from appliance.evaluate.report import write_reports

    data = load_eval_set(jsonl(tmp_path / "set.jsonl", [GOOD_ROW]))
    out = tmp_path / "report"
    report = run_eval(pipeline(fake_app), data, out, modes=["base"], kb="none", model=SMOL)
    write_reports(report, out)
    (out / "notes.txt").write_text("the user's own notes\n", encoding="utf-8")
    check_report_dir(out, inputs=[tmp_path / "set.jsonl"])  # a rerun may resume and replace
    again = run_eval(pipeline(fake_app), data, out, modes=["base"], kb="none", model=SMOL)
    assert again["modes"]["base"]["resumed"] == 1


def test_squad_loader_refuses_pipes_and_devices(tmp_path: Path) -> None:
    refused_as_not_a_regular_file(load_squad, tmp_path / "squad.json")
