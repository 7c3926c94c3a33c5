"""The CLI as a first-time user meets it at an 80-column terminal: help that is whole and
has examples, output that fits, errors that name the fix, exit codes that README states."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from appliance.cli import cli
from tests.conftest import REPO, run_cli, run_main, unwrapped
from tests.test_squad import SHARED

LONG_HEADING = "Maintenance schedule for the primary coolant circulation pump assembly"


def run80(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """``appliance ARGS`` in a subprocess at an 80-column terminal width; standard input is
    ``stdin`` (empty: at its end at once)."""
    env = {**os.environ, "APPLIANCE_HOME": str(home), "COLUMNS": "80"}
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=REPO, input=stdin or "")


@pytest.fixture(scope="module")
def kb_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory with knowledge base 'plant' (two documents deep in a long path)
    and the empty knowledge base 'hollow'."""
    root = tmp_path_factory.mktemp("ux")
    docs = root / "documents" / "engineering-department" / "maintenance-manuals-2024"
    docs.mkdir(parents=True)
    (docs / "coolant-pump.md").write_text(
        f"# {LONG_HEADING}\n\n" + "The pump must be serviced every 500 operating hours by "
        "a certified technician, who replaces the seal kit at every second service and "
        "records the bearing temperature in the log book kept beside the pump. " * 3,
        encoding="utf-8")
    (docs / "boiler.md").write_text("# Boiler\n\nThe boiler pressure must stay between 1.0 "
                                    "and 1.5 bar.\n", encoding="utf-8")
    home = root / "home"
    run_cli("ingest", str(docs), "--kb", "plant", home=home, check=True)
    (root / "empty.md").write_text("\n", encoding="utf-8")
    assert run_cli("ingest", str(root / "empty.md"), "--kb", "hollow",
                   home=home).returncode == 4
    assert (home / "kb" / "hollow.sqlite").exists()  # a file was found: the KB is made
    return home


def test_ingest_of_a_folder_with_nothing_to_ingest_says_so_and_creates_nothing(
        tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8\xff")
    proc = run80("ingest", str(folder), "--kb", "typo", home=tmp_path / "home")
    said = unwrapped(proc.stderr)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"No file to ingest was found in {folder}" in said and ".pdf" in said, said
    assert "added" not in proc.stdout  # no table of zeros
    assert not (tmp_path / "home" / "kb" / "typo.sqlite").exists()
    listed = run_cli("kb", "list", home=tmp_path / "home", check=True)
    assert "typo" not in listed.stdout


# -- help --------------------------------------------------------------------------------------


def _groups(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            found += _groups(cmd, (*path, name))
    return found


def test_command_lists_never_cut_a_description_short(capsys: pytest.CaptureFixture[str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    groups = _groups(cli)
    assert ("kb",) in groups and ("models",) in groups and ("train-data",) in groups
    for path in groups:
        code, text = run_main(capsys, *path, "--help")
        assert code == 0 and "Commands:" in text, path
        commands = text.split("Commands:", 1)[1]
        assert "..." not in commands, (path, commands)
    code, text = run_main(capsys, "--help")
    assert "Answer a question from a knowledge base, with citations." in text
    code, text = run_main(capsys, "models", "--help")
    assert "List, verify, add, remove and build" in text  # not just "List and verify"


@pytest.mark.parametrize("command", [("ingest",), ("search",), ("ask",), ("batch",), ("eval",)])
def test_main_commands_show_an_example(capsys: pytest.CaptureFixture[str],
                                       command: tuple[str, ...]) -> None:
    code, text = run_main(capsys, *command, "--help")
    assert code == 0 and "Example" in text
    assert re.search(rf"Example[^:]*: appliance {command[0]} \S", text), text


def test_search_mode_help_says_what_each_mode_is(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_main(capsys, "search", "--help")
    assert code == 0 and "Default search mode." not in text
    assert "keyword: FTS5 bm25" in text and "hybrid: both" in text


# -- search ------------------------------------------------------------------------------------


def test_search_fits_80_columns_and_keeps_the_path_whole(kb_home: Path) -> None:
    proc = run80("search", "how often is the pump serviced", "--kb", "plant", "--k", "2",
                 home=kb_home)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    path = next(line for line in lines if line.strip().startswith("1. "))
    assert path.strip().endswith("maintenance-manuals-2024/coolant-pump.md")  # whole
    assert Path(path.strip()[3:]).is_file()
    others = [line for line in lines if line.strip()[:3] not in ("1. ", "2. ")]
    assert all(len(line) <= 80 for line in others), "\n".join(others)
    assert any(LONG_HEADING in line for line in lines)  # the heading is not cut either
    assert any(line.strip().startswith("score 0.") for line in lines)  # its own line here


def test_search_says_when_a_collection_or_the_whole_kb_is_missing(
        kb_home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_HOME", str(kb_home))
    code, text = run_main(capsys, "search", "pump", "--kb", "plant", "--collection", "manulas")
    assert code == 2 and "no collection 'manulas'" in text and "(it has: default)" in text
    code, text = run_main(capsys, "search", "pump", "--kb", "hollow")
    assert code == 0 and "holds no documents yet" in text
    assert "appliance ingest PATH --kb hollow" in text
    code, text = run_main(capsys, "search", "pump")  # no --kb: 'default' does not exist
    assert code == 3 and "the existing ones are hollow, plant" in text
    assert "--kb NAME" in text and "appliance ingest PATH --kb default" in text


def test_missing_kb_in_an_empty_data_directory_names_only_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_main(capsys, "kb", "check", "nope")
    assert code == 3 and "existing ones" not in text
    assert "create it with `appliance ingest PATH --kb nope`" in text


# -- kb ----------------------------------------------------------------------------------------


def test_kb_stats_reads_as_a_user_would_write_it(kb_home: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_HOME", str(kb_home))
    code, text = run_main(capsys, "kb", "stats", "plant")
    assert code == 0
    assert "size_bytes" not in text and "{'" not in text  # no raw keys, no Python dict
    assert re.search(r"size \d+(\.\d)? (KB|MB)", text), text
    assert "collections default (2 documents)" in text
    assert "(384 dimensions)" in text
    code, text = run_main(capsys, "kb", "stats", "plant", "--json")  # JSON is unchanged
    assert json.loads(text)["size_bytes"] > 0


def test_kb_remove_without_a_terminal_says_pass_yes(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nQuokkas live on Rottnest Island.\n", encoding="utf-8")
    home = tmp_path / "home"
    run_cli("ingest", str(docs), "--kb", "keepme", home=home, check=True)
    kb_file = home / "kb" / "keepme.sqlite"
    proc = run80("kb", "remove", "keepme", home=home)  # stdin at its end: a script
    said = unwrapped(proc.stderr)
    assert proc.returncode == 2 and "pass --yes" in said and "Aborted" not in said
    assert kb_file.is_file()
    proc = run80("kb", "remove", "keepme", home=home, stdin="n\n")
    said = unwrapped(proc.stderr)
    assert proc.returncode == 1 and "Nothing was removed." in said
    assert "(1 document," in said and str(kb_file) in said  # what would be deleted
    assert kb_file.is_file()
    proc = run80("kb", "remove", "keepme", home=home, stdin="y\n")  # a piped yes still works
    assert proc.returncode == 0 and not kb_file.exists()


# -- answers -----------------------------------------------------------------------------------


def test_batch_summary_fits_and_a_finished_rerun_shows_no_zero_latency(
        kb_home: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.txt"
    questions.write_text("What is the capital of Australia?\n", encoding="utf-8")
    output = tmp_path / "answers.jsonl"
    args = ("batch", str(questions), "-o", str(output), "--kb", "plant", "--mode", "rag",
            "--model", "smollm2-135m-instruct-q4_1")
    first = run80(*args, home=kb_home)  # abstains on retrieval: nothing is generated
    assert first.returncode == 0, first.stderr
    assert "1 answered (1 of them abstained)" in first.stdout
    assert "nothing generated" in first.stdout and "0.0 tokens/s" not in first.stdout
    assert all(len(line) <= 80 for line in first.stdout.splitlines()[1:])
    again = run80(*args, home=kb_home)
    assert again.returncode == 0 and "1 already done" in again.stdout
    assert "nothing left to answer" in again.stdout and "p50 0.0 s" not in again.stdout


def test_a_model_that_is_not_a_generator_is_named_plainly(
        kb_home: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_HOME", str(kb_home))
    code, text = run_main(capsys, "ask", "pump?", "--kb", "plant", "--model",
                          "minilm-l6-v2-int8")
    assert code == 5 and "a embedder" not in text
    assert "'minilm-l6-v2-int8' is not a generator (its role is embedder)" in text


def test_eval_without_its_kb_is_one_sentence(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_main(capsys, "eval", str(REPO / "examples/eval/pydoc-eval.jsonl"),
                          "--kb", "nope", "--modes", "rag", "--limit", "1",
                          "-o", str(tmp_path / "report"))
    assert code == 3 and "--kb nope`; rag and hybrid need it (or run only --modes base)." in text
    assert "`. (" not in text


# -- feedback, training data ---------------------------------------------------------------------


def test_feedback_export_of_nothing_says_how_to_get_ratings(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run_main(capsys, "feedback", "export", "-o", str(tmp_path / "fb.jsonl"))
    assert code == 0 and "wrote 0 examples" in text
    assert "no rated answers yet" in text and "appliance tui" in text and "F7" in text


def test_train_data_check_counts_lines_and_says_ok(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    good = json.dumps({"messages": [{"role": "user", "content": "hi"},
                                    {"role": "assistant", "content": "hello"}]})
    data = tmp_path / "ok.jsonl"
    data.write_text(good + "\n", encoding="utf-8")
    code, text = run_main(capsys, "train-data", "check", str(data))
    assert code == 0 and ": 1 line: 1 valid" in text and "ready for `appliance train`" in text
    data.write_text(good + "\nnot json\n", encoding="utf-8")
    code, text = run_main(capsys, "train-data", "check", str(data))
    assert code == 2 and ": 2 lines: 1 valid, 1 invalid" in text  # not "2 examples"
    assert "ready for" not in text


# -- doctor ------------------------------------------------------------------------------------


def test_doctor_gives_model_sizes_in_the_units_of_models_list(tmp_path: Path) -> None:
    from appliance.config import load_settings
    from appliance.files import format_bytes
    from appliance.models.registry import Registry

    proc = run_cli("doctor", "--no-smoke", "--json", "--model", "smollm2-135m-instruct-q4_1",
                   home=tmp_path / "home")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    registry = Registry.load(load_settings(home=tmp_path / "home"))
    total = sum(e.path.stat().st_size for e in registry)
    assert f"{format_bytes(total)}, every sha256 matches" in checks["models"]["detail"]


# -- README ------------------------------------------------------------------------------------


def _error_classes() -> list[type]:
    from appliance.errors import ApplianceError

    found, todo = [], [ApplianceError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo += cls.__subclasses__()
    return found


def test_readme_and_help_state_every_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    match = re.search(r"non-zero exit code \((.*?)\)\.", readme, re.S)
    assert match, "README's CLI section no longer lists the exit codes"
    _, help_text = run_main(capsys, "--help")
    stated = " ".join(match.group(1).split())
    codes = {cls.exit_code for cls in _error_classes()} | {1, 2, 70, 130}  # + click, main()
    for code in sorted(codes):
        assert re.search(rf"\b{code} ", stated), (code, stated)
        assert re.search(rf"\b{code} ", help_text.split("Exit codes:", 1)[1]), code


def test_readme_cli_table_names_every_required_option() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `appliance ([^`]*)`", readme, re.M)
    assert len(rows) > 10
    checked = 0
    for row in rows:
        cmd: click.Command = cli
        for word in row.split():
            if not isinstance(cmd, click.Group) or word not in cmd.commands:
                break
            cmd = cmd.commands[word]
        if isinstance(cmd, click.Group):
            continue
        for param in cmd.params:
            if isinstance(param, click.Option) and param.required:
                assert any(opt in row for opt in param.opts), (row, param.opts)
                checked += 1
    assert checked >= 4  # batch -o, train --base, grounded --squad and -o, feedback -o, ...


def test_grounded_output_keeps_the_path_whole_and_names_what_went_unused(
        tmp_path: Path) -> None:
    squad = SHARED
    if not squad.is_file():
        pytest.skip("the shared SQuAD file is not on this machine")
    output = tmp_path / ("a-rather-long-folder-name-for-training-data" * 2) / "grounded.jsonl"
    output.parent.mkdir()
    proc = run80("train-data", "grounded", "--squad", str(squad), "-o", str(output),
                 "--limit", "20", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 20 examples to {output}\n" in proc.stdout  # one line, not wrapped
    assert "\nskipped " not in proc.stdout
    assert re.search(r"questions not used +\d+ \(beyond --limit", proc.stdout), proc.stdout


@pytest.mark.parametrize(("name", "content", "said"), [
    ("empty.txt", "", "holds no question to answer;"),
    ("bad.jsonl", '{"question": ""}\n{broken\n', "(every row was bad, see above)"),
])
def test_batch_with_no_question_to_answer_says_so_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: str,
        said: str) -> None:
    questions = tmp_path / name
    questions.write_text(content, encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    code, text = run_main(capsys, "batch", str(questions), "-o", str(out))
    assert code == 2 and said in text and "nothing left to answer" not in text, text
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_a_new_knowledge_base_walks_the_folder_once(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.api
    import appliance.ingest.runner as runner
    from appliance.api import Appliance
    from appliance.config import load_settings

    walks: list[int] = []
    real = runner.discover

    def counted(*args: Any, **kwargs: Any) -> Any:
        walks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(appliance.api, "discover", counted)
    monkeypatch.setattr(runner, "discover", counted)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nQuokkas live on Rottnest Island.\n", encoding="utf-8")
    app = Appliance(load_settings(home=tmp_path / "home"))
    try:
        assert app.ingest([docs], kb="new").added == 1 and len(walks) == 1
        assert app.ingest([docs], kb="new").unchanged == 1 and len(walks) == 2  # KB exists
    finally:
        app.close()
