"""Loaders: every format's sections, headings and pages, and every hostile file's reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.config import IngestSettings
from appliance.errors import DocumentError
from appliance.files import format_bytes
from appliance.ingest.chunking import Chunker
from appliance.ingest.loaders import load_document
from appliance.types import LoadedDocument
from tests.fakes import word_tokenizer
from tests.hostile import (
    GOOD_FILES,
    encrypt_pdf,
    make_hostile_corpus,
    make_pdf,
    write_zip_bomb_docx,
)

SETTINGS = IngestSettings()  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    started = time.perf_counter()
    expected = make_hostile_corpus(root)
    elapsed = time.perf_counter() - started
    assert elapsed < 10, f"corpus took {elapsed:.1f} s"
    return root, expected


def load(path: Path, **limits: object) -> LoadedDocument:
    settings = IngestSettings(**limits) if limits else SETTINGS  # type: ignore[arg-type]
    return load_document(path, settings)


def reason(path: Path, **limits: object) -> str:
    with pytest.raises(DocumentError) as info:
        load(path, **limits)
    message = info.value.message
    assert "\n" not in message and message
    return message


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def all_text(doc: LoadedDocument) -> str:
    return "\n".join(s.text for s in doc.sections)


# -- the corpus ------------------------------------------------------------------------------


def test_good_files_load_with_their_words(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    for name, word in GOOD_FILES.items():
        doc = load(root / name)
        assert word in all_text(doc), name


@pytest.mark.parametrize(
    "name",
    [
        "empty.txt", "binary.pdf", "binary.txt", "latin1.txt", "truncated.pdf",
        "encrypted.pdf", "scanned.pdf", "bomb.docx", "fake.docx", "huge_line.txt",
        "deep.html", "loop.md", "pipe.md",
    ],
)
def test_hostile_file_fails_fast_with_reason(
    corpus: tuple[Path, dict[str, str]], name: str
) -> None:
    root, expected = corpus
    started = time.perf_counter()
    message = reason(root / name)
    assert time.perf_counter() - started < 3
    assert expected[name] in message.lower(), message


def test_every_expected_failure_is_covered(corpus: tuple[Path, dict[str, str]]) -> None:
    root, expected = corpus
    for name, want in expected.items():  # includes secret.md when not root
        assert want in reason(root / name).lower(), name


# -- text ------------------------------------------------------------------------------------



def test_a_text_title_heads_the_text_instead_of_starting_it(tmp_path: Path) -> None:
    paragraph = " ".join(f"fact{i}" for i in range(70)) + "."
    doc = load(write(tmp_path, "imp.txt", f"Imperialism\n\n{paragraph}\n"))
    assert doc.title == "Imperialism"
    assert [(s.heading_path, s.text) for s in doc.sections] == [(("Imperialism",), paragraph)]
    # Chunked, the title is every chunk's heading, never a chunk of its own.
    chunks = Chunker(word_tokenizer(), max_tokens=64, overlap=8).chunk(doc)
    assert len(chunks) > 1 and all(c.heading == "Imperialism" for c in chunks)
    assert all("fact" in c.text for c in chunks)

def test_text_normalises_newlines_and_blank_lines(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    doc = load(root / "notes.txt")
    assert doc.kind == "text" and doc.title == "notes"
    assert len(doc.sections) == 1
    section = doc.sections[0]
    assert section.heading_path == () and section.page is None
    assert section.text == "Shopping notes.\nBuy marmaladeon and bread.\n\n\nThe end."


def test_text_encoding_errors(tmp_path: Path) -> None:
    assert reason(write(tmp_path, "a.txt", b"abc\xffdef")) == "invalid UTF-8 at byte 3"
    bom = write(tmp_path, "b.txt", b"\xef\xbb\xbfabc\xc3(")
    assert reason(bom) == "invalid UTF-8 at byte 6"
    assert reason(write(tmp_path, "c.txt", b"text\x00more")) == "binary content"
    assert reason(write(tmp_path, "d.txt", "x\x01\x02\x03\x04" * 50)) == "binary content"
    assert "UTF-16" in reason(write(tmp_path, "e.txt", "hello".encode("utf-16")))
    assert reason(write(tmp_path, "f.txt", "  \n\n \t\n")) == "no text found"


def test_text_with_some_controls_is_kept(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a.txt", "form\x0cfeed and a bell\x07 in a long line of text"))
    assert doc.sections[0].text == "form\x0cfeed and a bell in a long line of text"


def test_size_limit_is_checked_first(tmp_path: Path) -> None:
    path = write(tmp_path, "big.md", "x" * 3000)
    assert reason(path, max_file_bytes=1024) == (
        "2.9 KB, over the 1.0 KB limit (ingest.max_file_bytes)"
    )


def test_format_bytes() -> None:
    assert format_bytes(25 * 1024 * 1024) == "25.0 MB"
    assert format_bytes(200 * 1024 * 1024) == "200 MB"
    assert format_bytes(int(5.1 * 1024**3)) == "5.1 GB"
    assert format_bytes(12) == "12 bytes"


def test_unsupported_and_missing(tmp_path: Path) -> None:
    assert reason(write(tmp_path, "a.exe", "x")) == "unsupported file type '.exe'"
    assert reason(tmp_path / "missing.md") == "file not found"
    (tmp_path / "dir.md").mkdir()
    assert reason(tmp_path / "dir.md") == "not a regular file"


# -- markdown --------------------------------------------------------------------------------


def test_markdown_sections(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    doc = load(root / "guide.md")
    assert doc.kind == "markdown" and doc.title == "Appliance Guide"
    paths = [s.heading_path for s in doc.sections]
    assert paths == [
        ("Appliance Guide",),
        ("Appliance Guide", "Install"),
        ("Appliance Guide", "Install", "Offline"),
        ("Appliance Guide", "Usage"),  # a setext heading, level 2
    ]
    install = doc.sections[1].text
    assert "```sh\n# not a heading: inside a code block\nmake install\n```" in install
    assert "## Install" not in install  # heading lines are not section text


def test_markdown_front_matter_inline_titles_and_preamble(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x.md",
        "---\ntitle: 'From Front Matter'\ntags: [a]\n---\nPreamble text.\n\n"
        "# The *Big* `Title`\n\nBody.\n\n#### Deep\n\nDeeper.\n\n## Back up\n\nUp.\n",
    )
    doc = load(path)
    assert doc.title == "From Front Matter"
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        ((), "Preamble text."),
        (("The Big Title",), "Body."),
        (("The Big Title", "Deep"), "Deeper."),
        (("The Big Title", "Back up"), "Up."),
    ]
    assert "tags" not in all_text(doc)


def test_a_front_matter_title_heads_a_document_without_h1(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "proxy.md", "---\ntitle: Configuring the proxy\n---\n"
                     "Intro.\n\n## Ports\n\nUse 8080.\n"))
    assert [(s.heading_path, s.text) for s in doc.sections] == [
        (("Configuring the proxy",), "Intro."),
        (("Configuring the proxy", "Ports"), "Use 8080."),
    ]


def test_markdown_script_and_style_blocks_are_not_text(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "x.md", "# Page\n\nBefore.\n\n<script>\nalert('scriptword')\n"
                     "</script>\n\n<STYLE>p { color: red }</STYLE>\n\n<div>kept html</div>\n\n"
                     "After.\n"))
    text = all_text(doc)
    assert "Before." in text and "After." in text and "kept html" in text
    assert "scriptword" not in text and "color" not in text


def test_markdown_html_markup_and_comments_are_not_text(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "README.md",
                     '<p align="center">\n  <img src="https://x.example/logo.png" width="200">'
                     "\n  <br>A fast <b>tool</b>\n</p>\n\n<!-- internal:\nnot for readers -->\n\n"
                     "# Tool\n\nPress <kbd>Ctrl</kbd>+<kbd>C</kbd>.<br/> Keep `<div>` and "
                     "<https://x.example/docs>; x < y and y > z.\n\n"
                     "```html\n<b>in code</b>\n```\n"))
    text = all_text(doc)
    assert "A fast tool" in text and "Press Ctrl+C." in text
    for markup in ("align", "img", "logo.png", "<br", "kbd", "internal", "not for readers"):
        assert markup not in text, markup
    for kept in ("`<div>`", "<https://x.example/docs>", "x < y and y > z", "<b>in code</b>"):
        assert kept in text, kept


def test_markdown_title_falls_back_to_stem(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "my-notes.markdown", "## Only h2\n\ntext\n"))
    assert doc.title == "my-notes"
    assert doc.sections[0].heading_path == ("Only h2",)


def test_markdown_unclosed_comments_and_tags_are_quick(tmp_path: Path) -> None:
    path = write(tmp_path, "c.md", "# Page\n\nx " + "<!-- " * 100_000 + "\n\n<div>\n"
                 + "<a " * 100_000 + "\n")
    started = time.perf_counter()
    assert "x <!--" in all_text(load(path))  # an unclosed comment is text
    assert time.perf_counter() - started < 5


def test_markdown_pathological_nesting_is_quick(tmp_path: Path) -> None:
    path = write(tmp_path, "n.md", "> " * 50_000 + "quote\n\n" + "* " * 50_000 + "x\n")
    started = time.perf_counter()
    load(path)
    assert time.perf_counter() - started < 5


# -- rst -------------------------------------------------------------------------------------

RST = """\
==============
 Project Title
==============

Intro under the title.

Install
=======

Install text.

Details
-------

Detail text, with a literal::

    not a title
    -----------

Upgrade
=======

Upgrade text.
This line --------
is not followed by an adornment.

----

After a transition.

Short
==

Still upgrade text (underline too short).
"""


def test_rst_sections_by_adornment_order(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "doc.rst", RST))
    assert doc.kind == "rst" and doc.title == "Project Title"
    assert [s.heading_path for s in doc.sections] == [
        ("Project Title",),
        ("Project Title", "Install"),
        ("Project Title", "Install", "Details"),
        ("Project Title", "Upgrade"),
    ]
    assert "not a title" in doc.sections[2].text
    upgrade = doc.sections[3].text
    assert "After a transition." in upgrade and "Short\n==" in upgrade


def test_rst_wide_characters_count_double(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "cjk.rst", "日本語\n======\n\ntext\n"))
    assert doc.sections[0].heading_path == ("日本語",)


# -- html ------------------------------------------------------------------------------------


def test_html_sections_and_dropped_elements(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    doc = load(root / "page.html")
    assert doc.kind == "html" and doc.title == "Field Notes"
    assert [s.heading_path for s in doc.sections] == [
        ("Field Notes",),
        ("Field Notes", "Morning"),
        ("Field Notes", "Evening"),
    ]
    text = all_text(doc)
    for hidden in ("SCRIPTWORD", "NOSCRIPTWORD", "color: red"):
        assert hidden not in text
    assert doc.sections[0].text == "Observations of heliotropic plants."
    assert doc.sections[2].text == "first item\nsecond item\n\na1 | b1"


def test_html_charset_pre_and_title_fallback(tmp_path: Path) -> None:
    html = (
        '<html><head><meta charset="iso-8859-1"></head><body><h1>Caf\xe9</h1>'
        "<p>one\n   two</p><pre>  keep\n    indent</pre><p hidden>secret</p>"
        "<h3>Sub</h3><div>t<br>u</div></body></html>"
    )
    doc = load(write(tmp_path, "a.htm", html.encode("latin-1")))
    assert doc.title == "Café"
    assert doc.sections[0].text == "one two\n\n  keep\n    indent"
    assert doc.sections[1].heading_path == ("Café", "Sub")
    assert doc.sections[1].text == "t\nu"
    assert "secret" not in all_text(doc)


def test_an_html_title_heads_a_page_without_h1(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a.html", "<html><head><title>Release  notes</title></head>"
                     "<body><p>Intro.</p><h2>Fixes</h2><p>Fixed it.</p></body></html>"))
    assert [s.heading_path for s in doc.sections] == [
        ("Release notes",), ("Release notes", "Fixes")]


def test_html_without_charset_is_utf8_with_replacement(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a.html", b"<p>na\xc3\xafve \xff end</p>"))
    assert doc.sections[0].text == "naïve \ufffd end"
    assert doc.title == "a"


def test_html_depth_under_the_limit_is_read(tmp_path: Path) -> None:
    html = "<div>" * 1000 + "deep words" + "</div>" * 1000
    doc = load(write(tmp_path, "d.html", html))
    assert all_text(doc) == "deep words"


def test_html_empty(tmp_path: Path) -> None:
    assert reason(write(tmp_path, "e.html", "<html><head><title>x</title></head></html>")) == (
        "no text found"
    )


# -- pdf -------------------------------------------------------------------------------------


def test_pdf_pages_outline_and_title(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    doc = load(root / "manual.pdf")
    assert doc.kind == "pdf" and doc.title == "Appliance Manual"
    assert [(s.page, s.heading_path) for s in doc.sections] == [
        (1, ("Introduction",)),
        (2, ("Usage",)),
        (3, ("Troubleshooting",)),
    ]
    assert "pelicanoid" in doc.sections[0].text


def test_pdf_without_outline_or_title(tmp_path: Path) -> None:
    pdf = make_pdf([["first page"], [], ["third page"]])
    doc = load(write(tmp_path, "plain.pdf", pdf))
    assert doc.title == "plain"
    assert [(s.page, s.heading_path, s.text) for s in doc.sections] == [
        (1, (), "first page"),
        (3, (), "third page"),
    ]


def test_pdf_outline_shared_pages(tmp_path: Path) -> None:
    pdf = make_pdf([["a"], ["b"], ["c"]], outline=[("One", 0), ("Two", 2), ("Three", 2)])
    doc = load(write(tmp_path, "o.pdf", pdf))
    assert [s.heading_path for s in doc.sections] == [("One",), ("One",), ("Three",)]


def test_pdf_refusals(tmp_path: Path) -> None:
    pdf = make_pdf([["page"]] * 3)
    assert reason(write(tmp_path, "p.pdf", pdf), max_pages=2) == (
        "3 pages, over the 2 page limit (ingest.max_pages)"
    )
    empty_password = write(tmp_path, "e.pdf", encrypt_pdf(pdf, ""))
    assert reason(empty_password) == "encrypted PDF"
    garbage = write(tmp_path, "g.pdf", b"%PDF-1.4\nnothing here\n%%EOF\n")
    assert reason(garbage).startswith("truncated or corrupt PDF: ")
    assert reason(write(tmp_path, "h.pdf", b"<html>")) == "not a PDF (no %PDF header)"


# -- docx ------------------------------------------------------------------------------------


def test_docx_headings_title_and_tables(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    doc = load(root / "report.docx")
    assert doc.kind == "docx" and doc.title == "Quarterly Report"
    assert [s.heading_path for s in doc.sections] == [
        ("Quarterly Report",),
        ("Quarterly Report", "Findings"),
        ("Quarterly Report", "Findings", "Details"),
        ("Quarterly Report", "Summary"),
    ]
    assert doc.sections[2].text.endswith("region | count\ntablecellword | 42")
    assert all(s.page is None for s in doc.sections)


def test_docx_bombs(tmp_path: Path) -> None:
    ratio = tmp_path / "ratio.docx"
    write_zip_bomb_docx(ratio, 10 * 1024 * 1024)
    message = reason(ratio)
    assert "compression ratio" in message and "word/document.xml" in message
    total = tmp_path / "total.docx"
    write_zip_bomb_docx(total, 2 * 1024 * 1024)
    assert reason(total, max_decompressed_bytes=1024 * 1024) == (
        "docx would inflate to 2.0 MB, over the 1.0 MB limit (ingest.max_decompressed_bytes)"
    )


def test_docx_zip_without_word_document(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "z.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    assert reason(path).startswith("not a Word .docx file")


@pytest.mark.parametrize(("name", "content"), [
    ("list.md", "# Release checklist\n\n## Tag the release\n\n## Publish wheels\n"),
    ("list.rst", "Release checklist\n=================\n\nTag the release\n---------------\n\n"
                 "Publish wheels\n--------------\n"),
    ("list.html", "<html><body><h1>Release checklist</h1><h2>Tag the release</h2>"
                  "<h2>Publish wheels</h2></body></html>"),
])
def test_a_document_of_headings_alone_is_its_outline(tmp_path: Path, name: str,
                                                     content: str) -> None:
    doc = load(write(tmp_path, name, content))
    assert [s.text.split() for s in doc.sections] == [
        ["Release", "checklist", "Tag", "the", "release", "Publish", "wheels"]]
    chunks = Chunker(word_tokenizer(), max_tokens=64, overlap=8).chunk(doc)
    assert len(chunks) == 1 and "Publish wheels" in chunks[0].text


def test_headings_with_text_are_not_repeated_as_an_outline(tmp_path: Path) -> None:
    doc = load(write(tmp_path, "a.md", "# Guide\n\n## Install\n\nRun setup.\n\n## Empty\n"))
    assert all_text(doc) == "Run setup."
