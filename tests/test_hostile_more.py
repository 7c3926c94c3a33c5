"""More hostile input: terminal control codes in names and text, file names and queries that
are not UTF-8, non-English text in the keyword index, spreadsheet formulas and line breaks in
batch outputs, odd names and settings. Fast: fakes only, no model is loaded."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import unicodedata
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.table import Table

from appliance.api import Appliance
from appliance.batch import read_questions, render
from appliance.cli._base import _Console, json_line, lit
from appliance.cli.commands import _snippet_lines
from appliance.config import IngestSettings, RetrieveSettings, load_settings, validate_kb_name
from appliance.errors import ConfigError, InputError, KnowledgeBaseError
from appliance.evaluate.squad import answer_in_text
from appliance.ingest.chunking import Chunker
from appliance.ingest.loaders import load_document
from appliance.ingest.runner import discover, ingest
from appliance.models.registry import valid_model_id
from appliance.pipeline import Pipeline, answer
from appliance.retrieve import Retriever
from appliance.retrieve.hybrid import MAX_QUERY_CHARS
from appliance.store import KnowledgeBase
from tests.conftest import run_main
from tests.fakes import FakeGenerator, HashEmbedder, make_kb, word_tokenizer

ESC_PATH = "/docs/evil\x1b[31mred\x1b]0;PWNED\x07\x9b2J\u202eeiv.md"
BAD_BYTE = os.fsdecode(b"n\xffame.md")  # a file name that is not UTF-8: '\udcff' inside


# -- the terminal --------------------------------------------------------------------------------


def test_console_drops_control_codes_of_names_and_text_but_keeps_its_own_styles() -> None:
    buf = io.StringIO()
    console = _Console(file=buf, force_terminal=True, color_system="standard", width=200)
    table = Table("name", "embedder")
    table.add_row(lit(ESC_PATH), lit("model\x1b]8;;http://x\x07id"))
    console.print(f"[bold]{lit(ESC_PATH)}[/] {lit('not UTF-8: ' + BAD_BYTE)}")
    console.print(ESC_PATH, markup=False)
    console.print(table)
    written = buf.getvalue()
    assert "\x1b[1m" in written  # Rich's bold is still there
    for code in ("\x1b]", "\x07", "\x9b", "\u202e", "\x1b[31m", "\udcff"):
        assert code not in written, repr(code)
    assert "evil[31mred]0;PWNED2Jeiv.md" in written and "n\ufffdame.md" in written


def test_error_sentences_do_not_drive_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    code, said = run_main(capsys, "ingest", "/nowhere/\x1b]0;PWNED\x07\x9b2J.md")
    assert code == 2 and "does not exist" in said
    assert "\x1b" not in said and "\x07" not in said and "\x9b" not in said


def test_json_line_escapes_terminal_codes_and_reads_back_the_same() -> None:
    data = {"path": ESC_PATH, "text": "Café 東京 🚀"}
    line = json_line(data)
    assert json.loads(line) == data
    assert "Café 東京 🚀" in line  # non-ASCII text stays readable
    assert not any(c in line for c in "\x1b\x07\x9b\u202e")


# -- names and settings -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["kb\n", "a" * 300, "a/b", "..", "-x", "a\x00b", ".hidden"])
def test_odd_knowledge_base_names_are_refused(name: str) -> None:
    with pytest.raises(InputError, match="not a valid knowledge base name"):
        validate_kb_name(name)


def test_a_name_with_a_trailing_line_break_creates_no_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.md").write_text("# A\n\nSome text.\n", encoding="utf-8")
    code, said = run_main(capsys, "ingest", str(tmp_path / "a.md"), "--kb", "nl\n")
    assert code == 2 and "not a valid knowledge base name" in said
    assert not (tmp_path / "home" / "kb").exists()
    assert not valid_model_id("model\n") and valid_model_id("model")


def test_a_section_that_is_not_a_table_beside_an_env_override_is_one_sentence(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tmp_path.joinpath("config.toml").write_text("retrieve = 5\n", encoding="utf-8")
    monkeypatch.setenv("APPLIANCE_RETRIEVE__K", "3")
    with pytest.raises(ConfigError, match=r"not a \[retrieve\] table"):
        load_settings(home=tmp_path)


def test_a_data_directory_below_a_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        load_settings(home=tmp_path / "file" / "home")


def test_a_knowledge_base_folder_that_cannot_be_made_is_a_knowledge_base_error(
        tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match="Cannot create the folder"):
        KnowledgeBase(tmp_path / "file" / "kb" / "x.sqlite", create=True)


@pytest.mark.parametrize("collection", ["a\x1b[31m", "a\x9b2J", "a\udcff"])
def test_unusable_collection_names_are_refused_before_anything_is_written(
        tmp_path: Path, collection: str) -> None:
    (tmp_path / "a.md").write_text("# A\n\nSome text.\n", encoding="utf-8")
    app = Appliance(load_settings(home=tmp_path / "home"))
    with pytest.raises(InputError, match="collection name"):
        app.ingest([tmp_path / "a.md"], kb="k", collection=collection)
    assert not (tmp_path / "home" / "kb").exists()


# -- file names that are not UTF-8 --------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_fails_alone_and_the_rest_is_ingested(
        tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / BAD_BYTE).write_text("# Bad\n\nbadly named file\n", encoding="utf-8")
    (docs / "good.md").write_text("# Good\n\nquokkaflux lives here\n", encoding="utf-8")
    found, failed, _ = discover([docs], [".md"])
    assert [os.path.basename(c.path) for c in found] == ["good.md"]
    assert len(failed) == 1 and "not UTF-8" in failed[0].reason
    emb = HashEmbedder()
    settings = IngestSettings.model_validate({})
    with KnowledgeBase(tmp_path / "k.sqlite", create=True) as kb:
        report = ingest(kb, [docs], emb, Chunker(word_tokenizer(), 64, 8), settings,
                        prune=True)
        assert report.added == 1 and len(report.failed) == 1
        assert [cid for cid, _ in kb.keyword_search("quokkaflux", 3)]


# -- documents ---------------------------------------------------------------------------------


def test_control_codes_in_titles_and_headings_are_dropped(tmp_path: Path) -> None:
    page = tmp_path / "h.html"
    page.write_text(
        "<html><head><title>T&#27;]0;TITLE&#7;</title></head><body>"
        "<h1>Head&#27;[31mRED &#8238;evil</h1><p>Body text \u0085about\u009b zorblat.</p>"
        "</body></html>", encoding="utf-8")
    doc = load_document(page, IngestSettings.model_validate({}))
    shown = [doc.title, *doc.sections[0].heading_path, doc.sections[0].text]
    assert doc.title == "T]0;TITLE" and doc.sections[0].heading_path == ("Head[31mRED evil",)
    assert not any(c in text for text in shown for c in "\x1b\x07\u202e\x85\x9b")


def test_soft_hyphens_and_decomposed_text_are_stored_as_typed(tmp_path: Path) -> None:
    page = tmp_path / "p.html"
    page.write_text("<h1>K&uuml;hl&shy;mittel</h1><p>Die K&uuml;hl&shy;mittel&shy;pumpe "
                    "l&auml;uft.</p>", encoding="utf-8")
    doc = load_document(page, IngestSettings.model_validate({}))
    assert doc.sections[0].text == "Die Kühlmittelpumpe läuft."
    assert doc.sections[0].heading_path == ("Kühlmittel",)
    nfd = tmp_path / "ko.txt"
    nfd.write_text(unicodedata.normalize("NFD", "서울은 한국의 수도입니다. Café"), encoding="utf-8")
    text = load_document(nfd, IngestSettings.model_validate({})).sections[0].text
    assert text == "서울은 한국의 수도입니다. Café"  # composed (NFC)


def test_keyword_search_matches_soft_hyphens_and_decomposed_queries(tmp_path: Path) -> None:
    with make_kb(tmp_path / "k.sqlite", {"/de.txt": "Die Kühlmittelpumpe läuft leise.",
                                     "/ko.txt": "서울은 한국의 수도입니다."}) as kb:
        decomposed = unicodedata.normalize("NFD", "Kühlmittelpumpe")
        for query in ("Kühl\u00admittel\u00adpumpe", decomposed):
            assert [cid for cid, _ in kb.keyword_search(query, 3)] == [1], query
        assert [cid for cid, _ in kb.keyword_search(unicodedata.normalize("NFD", "서울"), 3)] == [2]
    # the retrieval evaluation's hit criterion compares in the stored form too
    assert answer_in_text(["Kühl\u00admittel\u00adpumpe"], "Die Kühlmittelpumpe läuft.")
    assert answer_in_text([unicodedata.normalize("NFD", "서울")], "서울은")


def test_text_stored_before_folding_is_still_found_as_it_was(tmp_path: Path) -> None:
    """A knowledge base written before documents were folded keeps its text (an unchanged
    file is not read again): a query copied from that text must still match it."""
    raw = "Die Kühl\u00admittel\u00adpumpe läuft leise."
    with make_kb(tmp_path / "k.sqlite", {"/de.txt": raw}) as kb:  # stored as given, not folded
        assert [cid for cid, _ in kb.keyword_search("Kühl\u00admittel\u00adpumpe", 3)] == [1]
        assert kb.keyword_search("Kühlmittelpumpe", 3) == []  # re-ingest the changed file


# -- queries -----------------------------------------------------------------------------------


def test_a_query_that_is_not_utf8_or_too_long_is_refused_before_any_work(tmp_path: Path) -> None:
    emb = HashEmbedder()
    kb = make_kb(tmp_path / "k.sqlite", {"/a.txt": "pump maintenance"})  # emb counts queries only
    with contextlib.closing(Retriever(kb, emb, RetrieveSettings())) as retriever:
        for mode in ("hybrid", "vector", "keyword"):
            with pytest.raises(InputError, match="not UTF-8"):
                retriever.search("pump\udcff", mode=mode)
            with pytest.raises(InputError, match="over the limit"):
                retriever.search("pump " * (MAX_QUERY_CHARS // 5 + 1), mode=mode)
        assert emb.calls == 0
        assert retriever.search("pump " * 4000, k=1).hits  # 20,000 characters are fine


def test_a_question_that_is_not_utf8_is_refused_before_the_model(tmp_path: Path) -> None:
    gen = FakeGenerator("Blue [1].")
    with pytest.raises(InputError, match="not UTF-8"):
        answer("why\udcff?", generator=gen, settings=load_settings(home=tmp_path), mode="base")
    assert gen.calls == []


def test_ask_refuses_a_question_that_is_not_utf8_before_loading_a_model(
        tmp_path: Path) -> None:
    loaded: list[str] = []

    def load(model_id: str) -> FakeGenerator:
        loaded.append(model_id)
        return FakeGenerator("Blue [1].", model_id)

    app = Appliance(load_settings(home=tmp_path))
    pipe = Pipeline(app, loader=load)
    try:
        for question in ("why\udcff?", "x" * (app.settings.answer.max_question_chars + 1)):
            with pytest.raises(InputError):
                pipe.ask(question, mode="base")
        assert loaded == []
    finally:
        pipe.close()
        app.close()


def test_a_query_file_with_a_huge_line_names_it_before_searching(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("pump\n" + "x" * (MAX_QUERY_CHARS + 1) + "\n", encoding="utf-8")
    code, said = run_main(capsys, "search", "--queries", str(queries), "--kb", "none")
    assert code == 2 and "Line 2 of" in said and "over the limit" in said
    assert "does not exist" not in said  # refused before the knowledge base is opened


def test_snippets_of_wide_characters_fit_the_terminal() -> None:
    text = "日本の首都は東京です。" * 40
    lines = _snippet_lines(text, 40)
    assert len(lines) == 2 and lines[-1].endswith("…")
    assert all(cell_len(line) <= 40 for line in lines), [cell_len(x) for x in lines]
    assert _snippet_lines("short text", 40) == ["short text"]


# -- batch outputs -----------------------------------------------------------------------------


def _record(rid: str, question: str, answer_text: str, path: str = "/d/a.md") -> dict[str, object]:
    return {"id": rid, "question": question, "answer": answer_text, "abstained": False,
            "citations": [{"n": 1, "path": path, "heading": "H\nx", "chunk_id": 1,
                           "score": 1.0}],
            "closest": [], "mode": "rag", "model": "m", "timings_ms": {"total": -5.0},
            "tokens": {"prompt": 1, "completion": 1}, "tokens_per_s": 1.0, "flags": []}


def test_csv_cells_that_would_be_formulas_are_text(tmp_path: Path) -> None:
    out = tmp_path / "a.csv"
    render([_record("=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "@SUM(A1)\x1b]0;x\x07"),
            _record("-1", "-x", "\tTab")], out, "csv")
    rows = list(csv.DictReader(out.open(encoding="utf-8", newline="")))
    assert rows[0]["id"] == "'=HYPERLINK(\"http://x\")"
    assert rows[0]["question"] == "'+cmd|' /C calc'!A0"
    assert rows[0]["answer"] == "'@SUM(A1)]0;x"  # control codes gone too
    assert rows[1]["id"] == "-1" and rows[1]["total_ms"] == "-5.0"  # numbers stay numbers
    assert rows[1]["question"] == "'-x" and rows[1]["answer"] == "'\tTab"
    # an answer file is a question file: the quote is read away again
    questions, bad = read_questions(out)
    assert not bad
    assert [(q.id, q.question) for q in questions] == [
        ("=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0"), ("-1", "-x")]


def test_markdown_headings_and_code_spans_survive_line_breaks_and_backticks(
        tmp_path: Path) -> None:
    out = tmp_path / "a.md"
    render([_record("a\x1b]0;x\x07\n# injected", "what\n| is\n x?", "Text\x9b.",
                    path="/d/``odd`.md")], out, "md")
    text = out.read_text(encoding="utf-8")
    assert "\n## a]0;x # injected: what | is x?\n" in text
    assert "\n# injected" not in text and "\x1b" not in text and "\x9b" not in text
    assert "- [1] ```/d/``odd`.md``` — H x\n" in text


def test_markdown_code_spans_keep_the_spaces_of_a_path(tmp_path: Path) -> None:
    out = tmp_path / "a.md"
    render([_record("q1", "what?", "Text.", path="/d/My  Report .md")], out, "md")
    assert "- [1] `/d/My  Report .md` — H x\n" in out.read_text(encoding="utf-8")


def test_tui_printable_shows_a_byte_that_is_not_utf8_as_a_replacement_character() -> None:
    from appliance.tui.sources import printable

    assert printable("n" + BAD_BYTE) == "nn\ufffdame.md"


def test_a_path_prefix_is_a_folder_not_the_start_of_a_name(tmp_path: Path) -> None:
    """`search --path-prefix /docs` searches under /docs, not /docs2 as well."""
    emb = HashEmbedder()
    texts = {"/docs/a.txt": "pump maintenance schedule", "/docs2/b.txt": "pump maintenance log",
             "/docs": "pump maintenance notes"}
    kb = make_kb(tmp_path / "k.sqlite", texts, emb)
    with contextlib.closing(Retriever(kb, emb, RetrieveSettings())) as retriever:
        for prefix in ("/docs", "/docs/"):
            paths = {h.path for h in retriever.search("pump maintenance", k=5,
                                                      path_prefix=prefix).hits}
            assert "/docs2/b.txt" not in paths and "/docs/a.txt" in paths, prefix
        assert {h.path for h in retriever.search("pump", k=5, path_prefix="/docs2/b.txt").hits
                } == {"/docs2/b.txt"}


@pytest.mark.parametrize("query", ["\u200b", "\u200b\u200d \ufeff", "\u00ad\u2060"])
def test_a_query_of_invisible_characters_is_empty(tmp_path: Path, query: str) -> None:
    emb = HashEmbedder()
    kb = make_kb(tmp_path / "k.sqlite", {"/a.txt": "pump maintenance"})  # emb counts queries only
    with contextlib.closing(Retriever(kb, emb, RetrieveSettings())) as retriever:
        with pytest.raises(InputError, match="empty"):
            retriever.search(query)
        assert emb.calls == 0
    gen = FakeGenerator("Blue [1].")  # a question too: the model is never asked
    with pytest.raises(InputError, match="empty"):
        answer(query, generator=gen, settings=load_settings(home=tmp_path), mode="base")
    assert gen.calls == []
