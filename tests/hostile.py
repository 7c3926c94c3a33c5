"""A hostile-input corpus for ingest tests, generated on the fly (nothing binary is committed).

``make_hostile_corpus(root)`` writes good files (whose distinctive words are in
``GOOD_FILES``) and bad ones, and returns ``{file name: expected reason substring}`` for
every file that must be skipped. Reasons are lowercase substrings of the one-line reason
that ``load_document`` (or, for the last three, the runner's file discovery) gives.

Files that discovery, not ``load_document``, must reject:

- ``loop.md``: a symlink loop (``loop.md -> loop_back -> loop.md``; ``loop_back`` has no
  ingestible extension, so only ``loop.md`` is reported).
- ``pipe.md``: a FIFO. Opening it for reading would block forever, so it also proves that
  nothing opens a file before checking it is a regular one.
- ``secret.md``: mode 000, "permission denied". Only written when not running as root:
  root reads such a file anyway, and no other honest way to make a file unreadable to
  root exists without privileges we should not assume (immutable flags, other mounts).
"""

from __future__ import annotations

import io
import os
import random
import struct
import time
import zlib
from pathlib import Path

from appliance.config import IngestSettings
from appliance.types import LoadedDocument, Section

__all__ = [
    "GOOD_FILES",
    "buggy_loader",
    "crashing_loader",
    "encrypt_pdf",
    "greedy_loader",
    "limits_loader",
    "make_docx",
    "make_hostile_corpus",
    "make_pdf",
    "noisy_loader",
    "sleepy_loader",
    "write_zip_bomb_docx",
]

# good file name -> a word that only that file contains
GOOD_FILES: dict[str, str] = {
    "guide.md": "quokkaflux",
    "notes.txt": "marmaladeon",
    "page.html": "heliotropic",
    "manual.pdf": "pelicanoid",
    "report.docx": "saxophrase",
}

_MIB = 1024 * 1024


# ---------------------------------------------------------------------------------------
# PDF by hand: a few text pages, an outline and an Info title, with exact xref offsets
# ---------------------------------------------------------------------------------------


def _pdf_string(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1") + b")"


def make_pdf(
    pages: list[list[str]],
    *,
    title: str | None = None,
    outline: list[tuple[str, int]] | None = None,
) -> bytes:
    """A valid PDF whose page ``i`` shows the lines ``pages[i]`` in Helvetica.

    ``outline`` lists top-level bookmarks as (title, 0-based page); ``title`` goes in the
    Info dictionary. Offsets in the xref table are computed, so pypdf reads it strictly.
    """
    outline = outline or []
    n_pages = len(pages)
    # object numbers: 1 catalog, 2 pages, 3 font, 4 info, 5 outlines,
    # then per page (page, contents), then outline items
    page_obj = [6 + 2 * i for i in range(n_pages)]
    content_obj = [7 + 2 * i for i in range(n_pages)]
    first_item = 6 + 2 * n_pages
    item_obj = [first_item + i for i in range(len(outline))]

    objects: dict[int, bytes] = {}
    catalog = b"<< /Type /Catalog /Pages 2 0 R"
    if outline:
        catalog += b" /Outlines 5 0 R /PageMode /UseOutlines"
    objects[1] = catalog + b" >>"
    kids = b" ".join(b"%d 0 R" % n for n in page_obj)
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, n_pages)
    objects[3] = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
    objects[4] = b"<< /Producer (appliance tests)" + (
        b" /Title " + _pdf_string(title) if title else b""
    ) + b" >>"
    if outline:
        objects[5] = b"<< /Type /Outlines /First %d 0 R /Last %d 0 R /Count %d >>" % (
            item_obj[0], item_obj[-1], len(outline)
        )
    else:
        objects[5] = b"<< /Type /Outlines /Count 0 >>"
    for i, lines in enumerate(pages):
        ops = [b"BT", b"/F1 14 Tf", b"72 720 Td", b"16 TL"]
        for line in lines:
            ops.append(_pdf_string(line) + b" Tj T*")
        ops.append(b"ET")
        stream = b"\n".join(ops)
        objects[page_obj[i]] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % content_obj[i]
        )
        objects[content_obj[i]] = (
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
        )
    for j, (name, page) in enumerate(outline):
        item = b"<< /Title " + _pdf_string(name) + b" /Parent 5 0 R"
        if j > 0:
            item += b" /Prev %d 0 R" % item_obj[j - 1]
        if j + 1 < len(outline):
            item += b" /Next %d 0 R" % item_obj[j + 1]
        item += b" /Dest [%d 0 R /Fit] >>" % page_obj[page]
        objects[item_obj[j]] = item

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(out)
        out += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref = len(out)
    size = max(objects) + 1
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for number in range(1, size):
        out += b"%010d 00000 n \n" % offsets[number]
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 4 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        size, xref
    )
    return bytes(out)


def encrypt_pdf(data: bytes, user_password: str) -> bytes:
    """``data`` encrypted with RC4-128 (pypdf needs no crypto package for that)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, "owner-secret", algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
# DOCX: a good one with python-docx, and zip bombs written by hand
# ---------------------------------------------------------------------------------------


def make_docx(path: Path) -> None:
    """A small Word document: Title, two heading levels, paragraphs and a table."""
    import docx

    document = docx.Document()
    document.core_properties.title = "Metadata Title Of Report"
    document.add_heading("Quarterly Report", 0)
    document.add_paragraph("This report covers the saxophrase initiative.")
    document.add_heading("Findings", 1)
    document.add_paragraph("The findings mention lanternfish counts.")
    document.add_heading("Details", 2)
    document.add_paragraph("Deeper detail about gravimetric sampling.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text = "region"
    table.cell(0, 1).text = "count"
    table.cell(1, 0).text = "tablecellword"
    table.cell(1, 1).text = "42"
    document.add_heading("Summary", 1)
    document.add_paragraph("All done.")
    document.save(str(path))


def _local_header(name: bytes, crc: int, csize: int, usize: int) -> bytes:
    """A zip local file header for a deflated member."""
    return struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize, len(name), 0
    ) + name


def write_zip_bomb_docx(path: Path, inflated_bytes: int) -> int:
    """Write a .docx whose ``word/document.xml`` inflates to ``inflated_bytes`` of XML.

    The deflate stream is real (zipfile would inflate it all, CRC included): one MiB of
    spaces is compressed once after a full flush, which resets the compressor, so the same
    compressed block can be repeated. Writing a 3 GB bomb takes about a second (most of
    it the CRC) and about 3 MB of disk. Returns the size on disk.
    """
    unit_len = _MIB
    unit = b" " * unit_len
    head = (
        b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
        b'<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
        b"<w:body>"
    )
    units = max(1, -(-(inflated_bytes - len(head)) // unit_len))
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    head_z = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    unit_z = comp.compress(unit) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(unit) + comp.flush(zlib.Z_FULL_FLUSH)
    assert again == unit_z, "deflate did not reset after a full flush"
    tail_z = comp.flush(zlib.Z_FINISH)
    usize = len(head) + units * unit_len
    csize = len(head_z) + units * len(unit_z) + len(tail_z)
    crc = zlib.crc32(head)
    for _ in range(units):
        crc = zlib.crc32(unit, crc)

    content_types = (
        b'<?xml version="1.0" encoding="UTF-8"?>'
        b'<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        b'<Default Extension="xml" ContentType="application/xml"/>'
        b'<Override PartName="/word/document.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>'
    )
    small = zlib.compressobj(9, zlib.DEFLATED, -15)
    ct_z = small.compress(content_types) + small.flush()

    central = bytearray()
    with open(path, "wb") as fh:
        entries = [
            (b"[Content_Types].xml", zlib.crc32(content_types), len(ct_z), len(content_types)),
            (b"word/document.xml", crc, csize, usize),
        ]
        for name, e_crc, e_csize, e_usize in entries:
            offset = fh.tell()
            fh.write(_local_header(name, e_crc, e_csize, e_usize))
            if name == b"word/document.xml":
                fh.write(head_z)
                block = unit_z * 64
                full, rest = divmod(units, 64)
                for _ in range(full):
                    fh.write(block)
                fh.write(unit_z * rest)
                fh.write(tail_z)
            else:
                fh.write(ct_z)
            central += struct.pack(
                "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21,
                e_crc, e_csize, e_usize, len(name), 0, 0, 0, 0, 0, offset,
            ) + name
        cd_offset = fh.tell()
        fh.write(central)
        fh.write(struct.pack(
            "<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
            cd_offset, 0,
        ))
        return fh.tell()


# ---------------------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------------------

GOOD_MARKDOWN = """\
# Appliance Guide

Intro paragraph about the appliance.

## Install

Run the installer; the quokkaflux step comes first.

```sh
# not a heading: inside a code block
make install
```

### Offline

No network is needed.

Usage
-----

Ask questions.
"""

GOOD_HTML = """\
<!DOCTYPE html>
<html><head><title>Field Notes</title><style>p { color: red }</style>
<script>var hidden = "SCRIPTWORD";</script></head>
<body>
<h1>Field Notes</h1>
<p>Observations of <b>heliotropic</b> plants.</p>
<h2>Morning</h2>
<p>Leaves turn east.</p><noscript>NOSCRIPTWORD</noscript>
<h2>Evening</h2>
<ul><li>first item</li><li>second item</li></ul>
<table><tr><td>a1</td><td>b1</td></tr></table>
</body></html>
"""


def _good_pdf() -> bytes:
    return make_pdf(
        [
            ["Appliance Manual", "The pelicanoid chapter begins here."],
            ["Second page about saxophones and seagulls."],
            ["Third page: troubleshooting."],
        ],
        title="Appliance Manual",
        outline=[("Introduction", 0), ("Usage", 1), ("Troubleshooting", 2)],
    )


def make_hostile_corpus(root: Path) -> dict[str, str]:
    """Write the good and bad files under ``root``; return {bad file name: reason substring}.

    Takes about a second and 56 MB of disk (the 50 MB one-line text file is most of it).
    """
    root.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str] = {}

    # good files
    (root / "guide.md").write_text(GOOD_MARKDOWN, encoding="utf-8")
    (root / "notes.txt").write_text(
        "\ufeffShopping notes.\r\nBuy marmaladeon and bread.   \r\n\r\n\r\n\r\n\r\nThe end.\r\n",
        encoding="utf-8",
    )
    (root / "page.html").write_text(GOOD_HTML, encoding="utf-8")
    good_pdf = _good_pdf()
    (root / "manual.pdf").write_bytes(good_pdf)
    make_docx(root / "report.docx")

    # bad files load_document refuses
    (root / "empty.txt").write_bytes(b"")
    expected["empty.txt"] = "empty file"

    noise = random.Random(1234).randbytes(64 * 1024)
    (root / "binary.pdf").write_bytes(noise)
    expected["binary.pdf"] = "not a pdf"

    (root / "binary.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00" + noise)
    expected["binary.txt"] = "binary content"

    (root / "latin1.txt").write_bytes("Caf\u00e9 cr\u00e8me, na\u00efve text.\n".encode("latin-1"))
    expected["latin1.txt"] = "invalid utf-8 at byte 3"

    (root / "truncated.pdf").write_bytes(good_pdf[: len(good_pdf) // 2])
    expected["truncated.pdf"] = "truncated or corrupt pdf"

    (root / "encrypted.pdf").write_bytes(encrypt_pdf(good_pdf, "secret"))
    expected["encrypted.pdf"] = "encrypted pdf"

    (root / "scanned.pdf").write_bytes(make_pdf([[], []], title="Scan"))
    expected["scanned.pdf"] = "no text found"

    write_zip_bomb_docx(root / "bomb.docx", 3 * 1024 * _MIB)
    expected["bomb.docx"] = "ingest.max_decompressed_bytes"

    (root / "fake.docx").write_text("I am not a zip archive.\n", encoding="utf-8")
    expected["fake.docx"] = "not a word .docx file"

    with open(root / "huge_line.txt", "wb") as fh:
        block = (b"word " * (_MIB // 5 + 1))[:_MIB]
        for _ in range(50):
            fh.write(block)
    expected["huge_line.txt"] = "ingest.max_file_bytes"

    depth = 100_000
    (root / "deep.html").write_text(
        "<html><body>" + "<div>" * depth + "deep" + "</div>" * depth + "</body></html>",
        encoding="utf-8",
    )
    expected["deep.html"] = "nested too deeply"

    # bad files the runner's discovery refuses before any loader runs
    os.symlink("loop_back", root / "loop.md")
    os.symlink("loop.md", root / "loop_back")
    expected["loop.md"] = "symlink loop"

    os.mkfifo(root / "pipe.md")
    expected["pipe.md"] = "not a regular file"

    if os.geteuid() != 0:
        secret = root / "secret.md"
        secret.write_text("# Secret\n\nunreadable\n", encoding="utf-8")
        secret.chmod(0)
        expected["secret.md"] = "permission denied"

    return expected


# ---------------------------------------------------------------------------------------
# test-only loaders for LoaderSandbox(loader=...): module-level so the worker can import them
# ---------------------------------------------------------------------------------------


def _doc(text: str) -> LoadedDocument:
    return LoadedDocument(title="hook", kind="text", sections=[Section(text)])


def sleepy_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Sleeps for the number of seconds written in the file, then returns a document."""
    time.sleep(float(path.read_text()))
    return _doc("slept")


def greedy_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Allocates memory 64 MiB at a time, up to twice the memory limit."""
    hoard = [bytearray(64 * _MIB) for _ in range(2 * settings.max_memory_bytes // (64 * _MIB))]
    return _doc(f"hoarded {len(hoard)} blocks")


def crashing_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Kills its own process with the signal number written in the file (a segfault stand-in)."""
    os.kill(os.getpid(), int(path.read_text()))
    time.sleep(10)
    return _doc("unreachable")


def noisy_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Prints to stdout and stderr (as careless parsers do), then loads the file normally."""
    import sys

    from appliance.ingest.loaders import load_document

    print("noise on stdout " * 1000)
    print("noise on stderr", file=sys.stderr)
    os.write(1, b"raw noise on fd 1\n" * 1000)
    return load_document(path, settings)


def buggy_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Fails the way a bug would."""
    raise ValueError("bad value in the parser\nsecond line")


def limits_loader(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Reports the worker's address-space limit and process id."""
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return _doc(f"{soft} {os.getpid()}")


if __name__ == "__main__":  # time the corpus: python tests/hostile.py
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        bad = make_hostile_corpus(Path(tmp))
        print(f"{len(bad)} bad files written in {time.perf_counter() - started:.2f} s")
