"""Read one document into a title, a kind and sections under their heading paths.

Every loader treats its input as hostile: sizes, pages and decompressed bytes are checked
before a parser sees the file, nothing recurses on the document's structure, and every
parser failure becomes a :class:`DocumentError` with a one-line reason for the ingest
report. Time and memory limits are the sandbox's job (``appliance.ingest.sandbox``).

Formats: ``.txt``, ``.md``/``.markdown``, ``.rst``, ``.html``/``.htm``, ``.pdf``, ``.docx``.
"""

from __future__ import annotations

import codecs
import errno
import functools
import io
import os
import re
import stat
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance.config import IngestSettings
from appliance.errors import DocumentError
from appliance.files import format_bytes
from appliance.types import LoadedDocument, Section, fold_text, strip_controls

__all__ = ["LOADERS", "load_document"]

# ---------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------

_SAMPLE = 64 * 1024  # characters/bytes looked at by the binary-content heuristic
_CONTROL_SHARE = 0.10  # share of control characters that means "binary"
_UNDECODABLE_SHARE = 0.30  # share of undecodable bytes (as U+FFFD) that means "binary"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")  # C0 controls except \t \n \f \r, DEL
_TRAILING_WS = re.compile(r"[ \t\f\v\u00a0]+$", re.MULTILINE)
_MANY_BLANKS = re.compile(r"\n{4,}")
_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_INLINE_WS = re.compile(r"\s+")


def _short(exc: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, shortened, for a reason line."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MEMORY_MESSAGES = ("memory allocation failed", "insufficient memory", "out of memory")


def _raise_if_memory(exc: BaseException) -> None:
    """Re-raise C-level allocation failures (lxml, zlib) as MemoryError for the sandbox."""
    if isinstance(exc, MemoryError):
        raise exc
    if any(m in str(exc).lower() for m in _MEMORY_MESSAGES):
        raise MemoryError(str(exc)) from exc


def _tidy(text: str) -> str:
    """Light whitespace normalisation that keeps paragraphs.

    Newlines become ``\\n``, control characters (other than tab, newline and form feed)
    go, trailing spaces go, runs of more than two blank lines become two, and leading and
    trailing blank lines are dropped.
    """
    text = _NEWLINES.sub("\n", text)
    text = _CONTROL.sub("", text)
    text = _TRAILING_WS.sub("", text)
    text = _MANY_BLANKS.sub("\n\n\n", text)
    return text.strip("\n")


def _looks_binary(text: str) -> bool:
    sample = text[:_SAMPLE]
    if not sample:
        return False
    controls = len(_CONTROL.findall(sample))
    return (
        controls / len(sample) > _CONTROL_SHARE
        or sample.count("\ufffd") / len(sample) > _UNDECODABLE_SHARE
    )


def _decode_utf8(data: bytes) -> str:
    """Decode ``data`` strictly as UTF-8 (a BOM is allowed), refusing binary content."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("UTF-16 encoded text; save it as UTF-8")
    offset = 3 if data.startswith(codecs.BOM_UTF8) else 0
    if b"\x00" in data:
        raise DocumentError("binary content")
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        if _looks_binary(data[offset : offset + _SAMPLE].decode("utf-8", "replace")):
            raise DocumentError("binary content") from None
        raise DocumentError(f"invalid UTF-8 at byte {exc.start + offset}") from None
    if _looks_binary(text):
        raise DocumentError("binary content")
    return text


def path_reason(exc: OSError) -> str:
    """One-line reason for an OSError met while opening or reading a file."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.EISDIR:
        return "not a regular file"
    return _short(exc)


def _too_big(size: int, limit: int) -> DocumentError:
    return DocumentError(
        f"{format_bytes(size)}, over the {format_bytes(limit)} limit (ingest.max_file_bytes)"
    )


def _read_bytes(path: Path, settings: IngestSettings) -> bytes:
    """The file's bytes, after checking it is a regular, non-empty file within the size limit.

    The file is opened non-blocking and checked again after opening, so a FIFO swapped in
    after the first check cannot block the reader.
    """
    limit = settings.max_file_bytes
    try:
        st = os.stat(path)
    except OSError as exc:
        raise DocumentError(path_reason(exc)) from None
    if not stat.S_ISREG(st.st_mode):
        raise DocumentError("not a regular file")
    if st.st_size > limit:
        raise _too_big(st.st_size, limit)
    if st.st_size == 0:
        raise DocumentError("empty file")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise DocumentError(path_reason(exc)) from None
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise DocumentError("not a regular file")
            data = fh.read(limit + 1)
    except OSError as exc:
        raise DocumentError(path_reason(exc)) from None
    if len(data) > limit:
        raise _too_big(len(data), limit)
    if not data:
        raise DocumentError("empty file")
    return data


class _Sections:
    """Collects sections under a heading path kept by level."""

    def __init__(self) -> None:
        self._sections: list[Section] = []
        self._stack: list[tuple[int, str]] = []
        self._outline: list[str] = []

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(title for _, title in self._stack)

    @property
    def sections(self) -> list[Section]:
        """The sections with text; a document of headings alone (a checklist, a skeleton
        page) is one section of its headings, so it is searchable rather than empty."""
        if self._sections or not self._outline:
            return self._sections
        return [Section(_tidy("\n".join(self._outline)), ())]

    def heading(self, level: int, title: str) -> None:
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, title))
        if title.strip():
            self._outline.append(title)

    def add(self, text: str, page: int | None = None, path: tuple[str, ...] | None = None) -> None:
        text = _tidy(text)
        if text.strip():
            self._sections.append(Section(text, self.path if path is None else path, page))


def _title_heads(title: str, sections: list[Section]) -> list[Section]:
    """``sections`` under ``title``, for a title declared outside the text (YAML front
    matter, ``<title>``) of a document without a level-1 heading: otherwise no chunk's
    heading path, so neither search channel, would see it."""
    title = _INLINE_WS.sub(" ", title).strip()[:300]
    if not title:
        return sections
    return [Section(s.text, (title, *s.heading_path), s.page) for s in sections]


def _document(title: str, kind: str, sections: list[Section], path: Path) -> LoadedDocument:
    if not sections:
        raise DocumentError("no text found")
    title = _INLINE_WS.sub(" ", title).strip() or path.stem
    return LoadedDocument(title=title[:300], kind=kind, sections=sections)


# ---------------------------------------------------------------------------------------
# plain text
# ---------------------------------------------------------------------------------------


def _text_title(text: str) -> tuple[str, str] | None:
    """A first line that stands alone (short, then a blank line) is the document's title:
    (title, the text after it), else None."""
    lines = text.lstrip("\n").split("\n", 2)
    if len(lines) == 3 and not lines[1].strip() and lines[2].strip():
        first = lines[0].strip()
        if 0 < len(first) <= 120 and not first.endswith((".", ",", ";", ":")):
            return first, lines[2]
    return None


def _load_text(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    text = _decode_utf8(data)
    out = _Sections()
    found = _text_title(text)
    if found is not None:
        # The title heads the text, as a markdown "# Title" does: it is every chunk's
        # heading path, not a line of body text (alone, it would become a chunk of its own).
        title, text = found
        out.heading(1, title)
    out.add(text)
    return _document(found[0] if found else path.stem, "text", out.sections, path)


# ---------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------

_FRONT_MATTER_END = re.compile(r"^(?:---|\.\.\.)[ \t]*$", re.MULTILINE)
_FRONT_MATTER_TITLE = re.compile(r"^title:[ \t]*(.+?)[ \t]*$", re.MULTILINE)
_YAML_KEY = re.compile(r"^[A-Za-z_][\w-]*[ \t]*:")
_HIDDEN_HTML = re.compile(r"\s*<(?:script|style|noscript|template)\b", re.IGNORECASE)


def _split_front_matter(lines: list[str]) -> tuple[int, str]:
    """Lines taken by a leading YAML front matter block, and its ``title:`` if any."""
    if len(lines) < 3 or lines[0].rstrip() != "---" or not _YAML_KEY.match(lines[1]):
        return 0, ""
    for i in range(2, min(len(lines), 200)):
        if _FRONT_MATTER_END.match(lines[i]):
            match = _FRONT_MATTER_TITLE.search("\n".join(lines[1:i]))
            title = match.group(1).strip("'\"") if match else ""
            return i + 1, title
    return 0, ""


@functools.cache
def _markdown(inline: bool) -> Any:
    """A CommonMark parser; without ``inline``, one that only finds the block structure."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark")
    # The inline pass is not needed to find headings; skipping it keeps pathological
    # emphasis or link syntax from costing time.
    return md if inline else md.disable(["inline", "text_join"])


def _markdown_inline_text(md: Any, source: str) -> str:
    """Plain text of an inline markdown fragment (a heading's title)."""
    parts: list[str] = []
    for block in md.parseInline(source[:1000]):
        for tok in block.children or ():
            if tok.type in ("text", "code_inline", "image"):
                parts.append(tok.content)
            elif tok.type in ("softbreak", "hardbreak"):
                parts.append(" ")
    return _INLINE_WS.sub(" ", "".join(parts)).strip()


_TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>")


def _drop_markup(text: str) -> str:
    """``text`` without HTML tags and complete ``<!-- -->`` comments (found with
    ``str.find``: a regular expression for comments is quadratic on a line of unclosed
    ``<!--``)."""
    kept: list[str] = []
    pos = 0
    while (start := text.find("<!--", pos)) >= 0:
        end = text.find("-->", start + 4)
        if end < 0:
            break
        kept.append(text[pos:start])
        pos = end + 3
    kept.append(text[pos:])
    return _TAG.sub("", "".join(kept))


_CODE_SPAN = re.compile(r"(`+[^`]*`+)")


def _drop_inline_tags(line: str) -> str:
    """``line`` without inline HTML tags (``<kbd>``, ``<br/>``, ``</span>``), code spans
    left as written; autolinks such as ``<https://...>`` are not tags and stay."""
    parts = _CODE_SPAN.split(line)
    return "".join(part if i % 2 else _drop_markup(part) for i, part in enumerate(parts))


def _load_markdown(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    text = _NEWLINES.sub("\n", _decode_utf8(data))
    lines = text.split("\n")
    skip, title = _split_front_matter(lines)
    body = "\n".join([""] * skip + lines[skip:])  # keep line numbers aligned

    headings: list[tuple[int, int, int, str]] = []  # (start line, end line, level, raw title)
    tokens = _markdown(inline=False).parse(body)
    for tok in tokens:
        if tok.type == "html_block" and tok.map:
            start, end = tok.map
            if _HIDDEN_HTML.match(tok.content) or tok.content.lstrip().startswith("<!--"):
                # a <script> or <style> block is code for a browser, a comment is for authors
                lines[start:end] = [""] * (end - start)
            else:  # a README's <p align="center"><img src=...>: its text, not its markup
                lines[start:end] = [_drop_markup(line) for line in lines[start:end]]
        elif tok.type == "inline" and tok.map and "<" in tok.content:
            start, end = tok.map
            lines[start:end] = [_drop_inline_tags(line) for line in lines[start:end]]
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map and i + 1 < len(tokens):
            level = int(tok.tag[1:])
            headings.append((tok.map[0], tok.map[1], level, tokens[i + 1].content))

    inline = _markdown(inline=True)
    out = _Sections()
    first_h1 = ""
    cursor = skip
    for start, end, level, raw in headings:
        out.add("\n".join(lines[cursor:start]))
        name = _markdown_inline_text(inline, raw) or raw.strip()
        if level == 1 and not first_h1:
            first_h1 = name
        out.heading(level, name)
        cursor = end
    out.add("\n".join(lines[cursor:]))
    sections = out.sections if first_h1 else _title_heads(title, out.sections)
    return _document(title or first_h1, "markdown", sections, path)


# ---------------------------------------------------------------------------------------
# reStructuredText (by the adornment rules; docutils is never used: its directives can
# include files and run code)
# ---------------------------------------------------------------------------------------

_RST_ADORNMENT = re.compile(r"^([!-/:-@\[-`{-~])\1*[ \t]*$")


def _width(text: str) -> int:
    """Column width as rst counts it: wide East Asian characters take two, combining none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def _adornment(line: str) -> str | None:
    """The adornment character if ``line`` is a line of one repeated punctuation mark."""
    match = _RST_ADORNMENT.match(line)
    return match.group(1) if match else None


def _load_rst(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    text = _NEWLINES.sub("\n", _decode_utf8(data))
    lines = text.split("\n")
    n = len(lines)
    styles: list[tuple[str, bool]] = []  # adornment styles in order of first appearance
    out = _Sections()
    doc_title = ""
    body_start = 0
    i = 0
    prev_blank = True  # a title needs a blank line (or a title, or the start) before it
    while i < n:
        line = lines[i]
        found: tuple[int, str, str, bool] | None = None  # (lines used, title, char, overline)
        over = _adornment(line)
        if prev_blank and over and i + 2 < n:
            # overline + title (may be inset) + underline of the same character and length
            title_line = lines[i + 1]
            under = lines[i + 2]
            if (
                title_line.strip()
                and not _adornment(title_line)
                and _adornment(under) == over
                and len(under.rstrip()) == len(line.rstrip())
                and len(line.rstrip()) >= _width(title_line.rstrip())
            ):
                found = (3, title_line.strip(), over, True)
        if (
            found is None
            and prev_blank
            and line.strip()
            and not line[0].isspace()
            and i + 1 < n
            and not _adornment(line)
        ):
            char = _adornment(lines[i + 1])
            if char and len(lines[i + 1].rstrip()) >= _width(line.rstrip()):
                found = (2, line.strip(), char, False)
        if found is None:
            prev_blank = not line.strip()
            i += 1
            continue
        used, title, char, overline = found
        out.add("\n".join(lines[body_start:i]))
        style = (char, overline)
        if style not in styles:
            styles.append(style)
        out.heading(styles.index(style) + 1, title)
        if not doc_title:
            doc_title = title
        i += used
        body_start = i
        prev_blank = True  # a title may directly follow another title
    out.add("\n".join(lines[body_start:]))
    return _document(doc_title, "rst", out.sections, path)


# ---------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------

_META_CHARSET = re.compile(
    rb"""<meta[^>]{0,512}?charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]{1,40})"""
    rb"""|<\?xml[^>]{0,200}?encoding\s*=\s*["']([A-Za-z0-9_.:-]{1,40})""",
    re.IGNORECASE,
)
# As the HTML standard says: these labels mean windows-1252.
_HTML_ALIASES = {"iso8859-1": "cp1252", "latin-1": "cp1252", "ascii": "cp1252"}
_DROP = frozenset(
    "script style noscript template head svg math iframe object embed canvas".split()
)
_PARAGRAPH = frozenset(  # blocks separated by a blank line
    """address article aside blockquote body center details dialog div dl fieldset figure
    footer form header hgroup hr main nav ol p pre section table ul""".split()
)
_BLOCK = frozenset(  # blocks on a line of their own
    "br caption dd dt figcaption li summary tbody tfoot thead tr".split()
)
_CELL = frozenset(("td", "th"))
_HEADING = {f"h{i}": i for i in range(1, 7)}


def _html_text(data: bytes) -> str:
    """Decode HTML bytes: a BOM, else a meta charset, else UTF-8 (with replacement)."""
    for bom, codec in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return data[len(bom) :].decode(codec, "replace")
    codec = "utf-8"
    match = _META_CHARSET.search(data[:4096])
    if match:
        label = (match.group(1) or match.group(2)).decode("ascii").lower()
        try:
            codec = codecs.lookup(label).name
        except LookupError:
            codec = "utf-8"
        codec = _HTML_ALIASES.get(codec, codec)
        if codec.startswith("utf-16"):  # a meta label cannot be right about UTF-16 here
            codec = "utf-8"
    return data.decode(codec, "replace")


def _load_html(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    import lxml.html
    from lxml import etree

    text = _html_text(data)
    if "\x00" in text or _looks_binary(text):
        raise DocumentError("binary content")
    # huge_tree lifts libxml2's 256-level depth limit to 2048 (and its 10 MB text-node
    # limit); deeper documents stop the parser, which we report instead of keeping the
    # part before it.
    parser = lxml.html.HTMLParser(
        encoding="utf-8", huge_tree=True, remove_comments=True, remove_pis=True
    )
    try:
        root = etree.fromstring(text.encode("utf-8", "replace"), parser)
    except (etree.Error, ValueError) as exc:
        _raise_if_memory(exc)
        raise DocumentError(f"unreadable HTML: {_short(exc)}") from None
    for entry in parser.error_log:
        if entry.type_name == "ERR_NO_MEMORY":
            raise MemoryError(entry.message)
        if "depth" in entry.message.lower():
            raise DocumentError("HTML nested too deeply (the parser stops at 2048 levels)")
        if entry.type_name == "ERR_RESOURCE_LIMIT":
            raise DocumentError(f"HTML over a parser limit: {_short(entry.message)}")
    if root is None:
        raise DocumentError("no text found")

    title = ""
    head_title = root.find("head/title")
    if head_title is not None:
        title = head_title.text_content() if hasattr(head_title, "text_content") else ""

    text_out = _HtmlText()
    walker = etree.iterwalk(root, events=("start", "end"))
    for event, el in walker:
        tag = el.tag.lower() if isinstance(el.tag, str) else ""
        skipped = not tag or tag in _DROP or el.get("hidden") is not None
        if event == "start":
            if skipped:
                walker.skip_subtree()  # its "end" event still comes, and handles its tail
                continue
            text_out.start(tag)
            if el.text:
                text_out.text(el.text)
        else:
            if not skipped:
                text_out.end(tag)
            if el.tail:
                text_out.text(el.tail)
    sections = text_out.finish()
    if not text_out.first_h1:
        sections = _title_heads(title, sections)
    return _document(title or text_out.first_h1, "html", sections, path)


class _HtmlText:
    """Turns a stream of start/end/text events into sections (no recursion anywhere)."""

    def __init__(self) -> None:
        self.out = _Sections()
        self.buf: list[str] = []  # text of the current section
        self.heading: list[str] | None = None  # text of the heading being read
        self.level = 0
        self.pre = 0  # depth of <pre> elements we are inside
        self.breaks = 0  # newlines owed before the next text
        self.first_h1 = ""

    def _break(self, newlines: int) -> None:
        self.breaks = max(self.breaks, newlines)

    def text(self, piece: str) -> None:
        target = self.heading if self.heading is not None else self.buf
        if not self.pre:
            piece = _INLINE_WS.sub(" ", piece)
            if self.breaks or not target or target[-1].endswith("\n"):
                piece = piece.lstrip(" ")
            if not piece:
                return
        if self.breaks and target:
            target.append("\n" * self.breaks)
        self.breaks = 0
        target.append(piece)

    def start(self, tag: str) -> None:
        if tag in _HEADING and self.heading is None:
            self.out.add("".join(self.buf))
            self.buf, self.heading, self.level, self.breaks = [], [], _HEADING[tag], 0
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _BLOCK:
            self._break(1)
        elif tag in _CELL and not self.breaks and self.buf:
            self.text(" | ")
        if tag == "pre":
            self.pre += 1

    def end(self, tag: str) -> None:
        if tag in _HEADING and self.heading is not None and _HEADING[tag] == self.level:
            name = _INLINE_WS.sub(" ", "".join(self.heading)).strip()
            self.heading, self.breaks = None, 0
            if name:
                self.out.heading(self.level, name)
                if self.level == 1 and not self.first_h1:
                    self.first_h1 = name
        elif tag in _PARAGRAPH:
            self._break(2)
        elif tag in _BLOCK:
            self._break(1)
        if tag == "pre" and self.pre:
            self.pre -= 1

    def finish(self) -> list[Section]:
        if self.heading is not None:  # a heading left open at the end of the document
            self.buf.extend(self.heading)
        self.out.add("".join(self.buf))
        return self.out.sections


# ---------------------------------------------------------------------------------------
# PDF
# ---------------------------------------------------------------------------------------

_MAX_OUTLINE = 10_000


def _pdf_outline(reader: Any) -> list[tuple[int, tuple[str, ...]]]:
    """(0-based page, heading path) of each outline entry, in document order; [] on trouble."""
    try:
        outline = reader.outline
    except MemoryError:
        raise
    except Exception:
        return []
    entries: list[tuple[int, tuple[str, ...]]] = []
    current: list[str] = []
    stack: list[tuple[list[Any], int, int]] = [(outline, 0, 0)]
    while stack and len(entries) < _MAX_OUTLINE:
        items, index, depth = stack.pop()
        if index >= len(items):
            continue
        stack.append((items, index + 1, depth))
        item = items[index]
        if isinstance(item, list):
            if depth < 64:
                stack.append((item, 0, depth + 1))
            continue
        try:
            title = _INLINE_WS.sub(" ", str(item.title or "")).strip()
            page = reader.get_destination_page_number(item)
        except MemoryError:
            raise
        except Exception:
            continue
        current = [*current[:depth], title]
        if page is not None and page >= 0 and title:
            entries.append((page, tuple(t for t in current if t)))
    entries.sort(key=lambda e: e[0])  # stable: document order within a page
    return entries


def _pdf_error(exc: BaseException) -> DocumentError:
    _raise_if_memory(exc)
    if isinstance(exc, RecursionError):
        return DocumentError("corrupt PDF: structure nested too deeply")
    return DocumentError(f"truncated or corrupt PDF: {_short(exc)}")


def _load_pdf(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    if b"%PDF-" not in data[:1024]:
        raise DocumentError("not a PDF (no %PDF header)")
    if b"%%EOF" not in data:
        raise DocumentError("truncated or corrupt PDF: no %%EOF marker (the file is cut short)")
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        encrypted = reader.is_encrypted
    except MemoryError:
        raise
    except Exception as exc:
        raise _pdf_error(exc) from None
    if encrypted:
        # Refused even when an empty password would open it: such files are usually
        # copy-protected on purpose, and decrypting them needs optional crypto packages.
        raise DocumentError("encrypted PDF")
    try:
        pages = len(reader.pages)
    except MemoryError:
        raise
    except Exception as exc:
        raise _pdf_error(exc) from None
    if pages > settings.max_pages:
        raise DocumentError(
            f"{pages} pages, over the {settings.max_pages} page limit (ingest.max_pages)"
        )
    if pages == 0:
        raise DocumentError("no pages in PDF")

    title = ""
    try:
        meta = reader.metadata
        if meta is not None and meta.title:
            title = str(meta.title)
    except MemoryError:
        raise
    except Exception:
        title = ""

    outline = _pdf_outline(reader)
    out = _Sections()
    pos = 0
    path_here: tuple[str, ...] = ()
    last_error: BaseException | None = None
    for number in range(pages):
        while pos < len(outline) and outline[pos][0] <= number:
            path_here = outline[pos][1]
            pos += 1
        try:
            text = reader.pages[number].extract_text() or ""
        except MemoryError:
            raise
        except Exception as exc:  # one unreadable page does not sink the document
            last_error = exc
            continue
        out.add(text, page=number + 1, path=path_here)
    if not out.sections and last_error is not None:
        raise _pdf_error(last_error)
    if not out.sections:
        raise DocumentError("no text found (a scanned PDF needs OCR first)")
    return _document(title, "pdf", out.sections, path)


# ---------------------------------------------------------------------------------------
# DOCX
# ---------------------------------------------------------------------------------------

_BOMB_MEMBER = 1024 * 1024  # members larger than this must not compress better than ...
_BOMB_RATIO = 100  # ... this ratio
_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def _check_zip(data: bytes, settings: IngestSettings) -> None:
    """Refuse archives that are not zips or would inflate too far, before anything inflates.

    The declared sizes are what zipfile (and so python-docx) will produce at most: it stops
    a member at its declared size and checks the CRC, so forged headers cannot exceed them.
    """
    if not data.startswith(b"PK\x03\x04"):
        raise DocumentError("not a Word .docx file (not a zip archive)")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise DocumentError(f"not a valid .docx: {_short(exc)}") from None
    total = sum(info.file_size for info in infos)
    if total > settings.max_decompressed_bytes:
        raise DocumentError(
            f"docx would inflate to {format_bytes(total)}, over the "
            f"{format_bytes(settings.max_decompressed_bytes)} limit "
            "(ingest.max_decompressed_bytes)"
        )
    for info in infos:
        if info.file_size > _BOMB_MEMBER:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > _BOMB_RATIO:
                raise DocumentError(
                    f"docx member {info.filename[:80]} has a compression ratio of "
                    f"{ratio:.0f}:1 (over {_BOMB_RATIO}:1, a zip bomb?)"
                )
    if not any(info.filename == "[Content_Types].xml" for info in infos):
        raise DocumentError("not a Word .docx file (a zip without [Content_Types].xml)")


def _table_text(table: Any) -> str:
    """A table as one line per row, cells joined by `` | ``; nested tables follow as rows.

    Rows are read from their ``w:tc`` elements, so a merged cell is read once.
    """
    from docx.table import _Cell

    lines: list[str] = []
    pending = [table]
    while pending and len(lines) < 100_000:
        current = pending.pop(0)
        for row in current.rows:
            cells: list[str] = []
            for tc in row._tr.tc_lst:
                cell = _Cell(tc, current)
                text = _INLINE_WS.sub(" ", cell.text).strip()
                if text:
                    cells.append(text)
                pending.extend(cell.tables)
            if cells:
                lines.append(" | ".join(cells))
    return "\n".join(lines)


def _load_docx(path: Path, data: bytes, settings: IngestSettings) -> LoadedDocument:
    _check_zip(data, settings)
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except MemoryError:
        raise
    except Exception as exc:
        _raise_if_memory(exc)
        raise DocumentError(f"not a valid .docx: {_short(exc)}") from None

    out = _Sections()
    buf: list[str] = []
    title = ""
    try:
        for item in document.iter_inner_content():
            if isinstance(item, Table):
                table = _table_text(item)
                if table:
                    buf.append(table)
                continue
            para = item
            text = para.text
            try:
                style = para.style.name if para.style is not None else ""
            except (KeyError, AttributeError, ValueError):
                style = ""
            level: int | None = None
            if style == "Title":
                level = 0
            else:
                match = _HEADING_STYLE.match(style or "")
                if match:
                    level = int(match.group(1))
            name = _INLINE_WS.sub(" ", text).strip()
            if level is not None and name:
                out.add("\n\n".join(buf))
                buf = []
                out.heading(level, name)
                if not title and level <= 1:
                    title = name
            elif name:
                buf.append(text)
        out.add("\n\n".join(buf))
        if not title:
            core = document.core_properties.title
            title = str(core) if core else ""
    except MemoryError:
        raise
    except DocumentError:
        raise
    except Exception as exc:
        _raise_if_memory(exc)
        raise DocumentError(f"not a valid .docx: {_short(exc)}") from None
    return _document(title, "docx", out.sections, path)


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------

Loader = Callable[[Path, bytes, IngestSettings], LoadedDocument]

LOADERS: dict[str, Loader] = {
    ".txt": _load_text,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".rst": _load_rst,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
}


def load_document(path: Path, settings: IngestSettings) -> LoadedDocument:
    """Read the file at ``path`` into a :class:`LoadedDocument`, dispatching on its extension.

    Raises :class:`DocumentError` with a one-line reason for anything that cannot be read
    (missing, not a regular file, too large, empty, binary, invalid encoding, corrupt,
    encrypted, a decompression bomb, too many pages, no text). ``MemoryError`` is left to
    propagate (the sandbox reports it against ``ingest.max_memory_bytes``).
    """
    path = Path(path)
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise DocumentError(f"unsupported file type '{path.suffix or path.name}'")
    data = _read_bytes(path, settings)
    try:
        return _showable(loader(path, data, settings), path)
    except RecursionError:
        raise DocumentError("document structure nested too deeply") from None


_C1 = re.compile("[\x80-\x9f]")


def _heading(text: str) -> str:
    return fold_text(" ".join(strip_controls(text).split()))


def _showable(doc: LoadedDocument, path: Path) -> LoadedDocument:
    """``doc`` as it is stored: text in :func:`fold_text` form; no control character
    (an HTML ``&#27;`` entity, a PDF outline string) in its title or headings, which are
    shown and written to answer files, nor a C1 control code in its text (C0 ones are gone
    already); headings on one line."""
    sections = [
        Section(text, tuple(_heading(h) for h in s.heading_path), s.page)
        for s in doc.sections
        if (text := _C1.sub("", fold_text(s.text))).strip()
    ]
    return _document(_heading(doc.title) or _heading(path.stem), doc.kind, sections, path)
