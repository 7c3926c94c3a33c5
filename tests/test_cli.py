"""The CLI's error contract: one actionable sentence, a non-zero exit, tracebacks on --debug."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.cli import cli
from tests.conftest import run_cli, run_main, unwrapped


def test_missing_kb_is_one_sentence(tmp_path: Path) -> None:
    proc = run_cli("search", "anything", "--kb", "nope", home=tmp_path)
    assert proc.returncode == 3
    assert "does not exist" in proc.stderr and "appliance ingest" in proc.stderr
    assert "Traceback" not in proc.stderr
    debug = run_cli("--debug", "search", "anything", "--kb", "nope", home=tmp_path)
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_bad_kb_name_and_missing_path(tmp_path: Path) -> None:
    proc = run_cli("ingest", str(tmp_path), "--kb", "../evil", home=tmp_path)
    assert proc.returncode == 2 and "not a valid knowledge base name" in proc.stderr
    proc = run_cli("ingest", str(tmp_path / "missing"), home=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_bad_setting_is_reported(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("[ingest]\nchunk_tokens = 5\n")
    proc = run_cli("kb", "list", home=tmp_path)
    assert proc.returncode == 2 and "ingest.chunk_tokens" in proc.stderr
    (tmp_path / "config.toml").write_text("[generate]\nthreads = 10000\n")  # would never end
    proc = run_cli("kb", "list", home=tmp_path)
    assert proc.returncode == 2 and "generate.threads" in proc.stderr


def test_help_lists_commands(tmp_path: Path) -> None:
    proc = run_cli("--help", home=tmp_path)
    assert proc.returncode == 0
    for command in ("ingest", "search", "kb", "models", "demo"):
        assert command in proc.stdout


def test_kb_list_empty(tmp_path: Path) -> None:
    proc = run_cli("kb", "list", home=tmp_path)
    assert proc.returncode == 0 and "No knowledge bases" in proc.stdout


def test_markup_in_documents_queries_and_names_prints_literally(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "a[").mkdir(parents=True)  # the path reads a[/b].md
    (docs / "a[" / "b].md").write_text(
        "# Prompts [/]\n\nLlama 2 prompts about quokkas look like <s>[INST] hi [/INST] and "
        "code indexes them as x[i] or d[bold].\n", encoding="utf-8")
    home = tmp_path / "home"
    assert run_cli("ingest", str(docs), "--kb", "m", home=home).returncode == 0
    proc = run_cli("search", "quokkas [/]", "--kb", "m", home=home)
    assert proc.returncode == 0, proc.stderr
    for literal in ("a[/b].md", "Prompts [/]", "[INST] hi [/INST]", "x[i]", "d[bold]",
                    "quokkas [/]"):
        assert literal in proc.stdout, literal
    for args in (("kb", "stats", "[/]"), ("search", "x", "--kb", "[/x]")):
        proc = run_cli(*args, home=home)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "not a valid knowledge base name" in proc.stderr and "[/" in proc.stderr


def test_small_input_mistakes_are_one_sentence(tmp_path: Path) -> None:
    def said(*args: str, home: Path) -> tuple[int, str]:
        proc = run_cli(*args, home=home)
        return proc.returncode, unwrapped(proc.stderr)

    home_file = tmp_path / "home-file"
    home_file.write_text("not a folder")
    code, text = said("kb", "list", home=home_file)
    assert code == 2 and "is a file, not a folder" in text
    home = tmp_path / "home"
    code, text = said("kb", "remove", "nosuch", home=home)  # no prompt for what is not there
    assert code == 3 and "does not exist" in text and "[y/N]" not in text
    queries = tmp_path / "q.txt"
    queries.write_text("\n  \n", encoding="utf-8")
    code, text = said("search", "--queries", str(queries), "--kb", "x", home=home)
    assert code == 2 and "holds no query" in text
    code, text = said("search", "also this", "--queries", str(queries), home=home)
    assert code == 2 and "not both" in text


def test_kb_list_shows_good_knowledge_bases_beside_a_broken_one(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\nQuokkas live on Rottnest Island.\n", encoding="utf-8")
    home = tmp_path / "home"
    assert run_cli("ingest", str(docs), "--kb", "good", home=home).returncode == 0
    (home / "kb" / "broken.sqlite").write_bytes(b"garbage" * 100)
    proc = run_cli("kb", "list", home=home)
    assert proc.returncode == 3 and "good" in proc.stdout and "unreadable" in proc.stdout


def test_ctrl_c_says_what_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    @cli.command("interrupt-me", hidden=True)
    def interrupt_me() -> None:
        raise KeyboardInterrupt

    try:
        code, said = run_main(capsys, "interrupt-me")
    finally:
        cli.commands.pop("interrupt-me")
    assert code == 130 and "everything committed so far is kept" in said


def test_tui_without_a_terminal_says_so_instead_of_hanging(tmp_path: Path) -> None:
    proc = run_cli("tui", home=tmp_path, timeout=60)  # stdout is a pipe here
    assert proc.returncode == 2 and "needs a terminal" in unwrapped(proc.stderr)


def test_search_shows_the_page_of_a_pdf_hit(tmp_path: Path) -> None:
    from tests.hostile import make_pdf

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "manual.pdf").write_bytes(make_pdf(
        [["Safety first."], ["The pump is serviced every 400 hours by the crew."]]))
    home = tmp_path / "home"
    assert run_cli("ingest", str(docs), "--kb", "p", home=home).returncode == 0
    proc = run_cli("search", "pump serviced hours", "--kb", "p", "--k", "1", home=home)
    assert proc.returncode == 0 and "manual.pdf p. 2" in proc.stdout


def test_models_list_shows_whole_ids_and_which_modes_each_generator_answers(
        tmp_path: Path) -> None:
    user = tmp_path / "models"
    user.mkdir()
    (user / "manifest.toml").write_text(
        '[[model]]\nid = "my-tuned-model-with-a-rather-long-name-q8_0"\nrole = "generator"\n'
        'format = "gguf"\nfile = "gone.gguf"\nsha256 = "' + "0" * 64 + '"\ndefault = true\n'
        'lineage = { base = "qwen2.5-coder-0.5b-instruct-q4_k_m" }\n', encoding="utf-8")
    proc = run_cli("models", "list", home=tmp_path, check=True)  # COLUMNS=120
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    assert rows["qwen2.5-coder-0.5b-instruct-q4_k_m"].rstrip().endswith("base/rag")
    mine = rows["my-tuned-model-with-a-rather-long-name-q8_0"]  # whole, not cut with …
    assert "missing" in mine and mine.rstrip().endswith("ft/hybrid")
    assert "ft/hybrid" not in rows["qwen2.5-coder-0.5b-grounded-q8_0"]  # the user's default won
    assert "embedder" in rows["minilm-l6-v2-int8"].split("packaged")[1]


def test_config_shows_each_settings_value_and_where_it_came_from(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"  # the test's APPLIANCE_HOME
    home.mkdir()
    (home / "config.toml").write_text("[generate]\nn_ctx = 2048\nthreads = 2\n[answer]\nk = 3\n")
    monkeypatch.setenv("APPLIANCE_GENERATE__THREADS", "1")  # the environment wins
    code, said = run_main(capsys, "config", "--json", "--changed")
    assert code == 0, said
    data = json.loads(said)
    rows = {r["key"]: r for r in data["settings"]}
    assert set(rows) == {"generate.n_ctx", "generate.threads"}  # answer.k = 3 is the default
    assert rows["generate.n_ctx"] | {"description": ""} == {
        "key": "generate.n_ctx", "value": 2048, "default": 4096, "source": "config.toml",
        "description": ""}
    assert rows["generate.threads"]["source"] == "APPLIANCE_GENERATE__THREADS"
    assert rows["generate.threads"]["value"] == 1
    assert data["config_file"] == str(home / "config.toml") and data["config_file_exists"]

    code, said = run_main(capsys, "config")
    assert code == 0 and "retrieve.fusion" in said and "Context window in tokens." in said
    code, said = run_main(capsys, "config", "--json")
    every = {r["key"]: r for r in json.loads(said)["settings"]}
    assert every["answer.k"]["source"] == "config.toml" and every["answer.k"]["value"] == 3
    assert every["ingest.chunk_tokens"]["source"] == "default"
    assert all(r["description"] for r in every.values())  # each field documents itself
