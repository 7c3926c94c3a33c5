"""Numbered schema migrations of a knowledge base (``PRAGMA user_version``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import apsw

from appliance.errors import KnowledgeBaseError
from appliance.store.segment import has_cjk, index_text

__all__ = [
    "CJK_TOKENIZE",
    "FTS_TOKENIZE",
    "FTS_TOKENIZER",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SchemaState",
    "add_cjk_terms",
    "create_vector_table",
    "foreign_file_error",
    "migrate",
    "schema_state",
]

FTS_TOKENIZER = ("porter", ("unicode61", "remove_diacritics", "2"))
"""The FTS5 tokenizer of ``chunks_fts`` and its arguments: Porter stemming over unicode61."""
FTS_TOKENIZE = " ".join((FTS_TOKENIZER[0], *FTS_TOKENIZER[1]))
"""The same tokenizer as FTS5's ``tokenize=`` option spells it. Migration 1 keeps its own
literal (a numbered migration never changes); a test checks that the two agree."""


def _m1(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE meta(
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        CREATE TABLE documents(
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            path        TEXT NOT NULL UNIQUE,
            sha256      TEXT NOT NULL,
            size        INTEGER NOT NULL,
            mtime       REAL NOT NULL,
            title       TEXT NOT NULL,
            kind        TEXT NOT NULL,
            collection  TEXT NOT NULL DEFAULT 'default',
            chunk_count INTEGER NOT NULL DEFAULT 0,
            ingested_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
        );
        CREATE INDEX documents_collection ON documents(collection);
        CREATE TABLE chunks(
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            document_id  INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            ord          INTEGER NOT NULL,
            text         TEXT NOT NULL,
            heading      TEXT NOT NULL DEFAULT '',
            page         INTEGER,
            start_offset INTEGER NOT NULL,
            end_offset   INTEGER NOT NULL,
            token_count  INTEGER NOT NULL,
            UNIQUE(document_id, ord)
        );
        CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, heading,
            content='chunks', content_rowid='id',
            tokenize='porter unicode61 remove_diacritics 2'
        );
        CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
        END;
        CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading)
            VALUES ('delete', old.id, old.text, old.heading);
        END;
        """
    )


def _m2(conn: apsw.Connection) -> None:
    """Binary codes of the vectors (``chunks_bin``) for a fast prefilter on large bases."""
    has_vec = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'chunks_vec'").fetchall()
    if not has_vec:
        return  # created with the float table once an embedder is bound
    dim = int(conn.execute("SELECT value FROM meta WHERE key = 'embedder_dim'").fetchall()[0][0])  # type: ignore[arg-type]
    _create_binary_table(conn, dim)
    conn.execute(
        "INSERT INTO chunks_bin(rowid, embedding, collection) "
        "SELECT rowid, vec_quantize_binary(embedding), collection FROM chunks_vec"
    )


CJK_TOKENIZE = "unicode61 remove_diacritics 2"
"""The tokenizer of ``chunks_cjk``: no stemming, the pairs are whole terms."""


def _m3(conn: apsw.Connection) -> None:
    """``chunks_cjk``: the characters and character pairs (:mod:`appliance.store.segment`)
    of the chunks that contain Chinese, Japanese or Korean, for keyword search inside text
    written without spaces. Rows are written by the store with their chunks and deleted by
    a trigger; the index keeps its own copy of the terms (chunks without such text have no
    row), so it needs no SQLite newer than FTS5's contentless deletes."""
    conn.execute(
        f"""
        CREATE VIRTUAL TABLE chunks_cjk USING fts5(terms, tokenize='{CJK_TOKENIZE}');
        CREATE TRIGGER chunks_cjk_delete AFTER DELETE ON chunks BEGIN
            DELETE FROM chunks_cjk WHERE rowid = old.id;
        END;
        """
    )
    for chunk_id, heading, text in conn.execute("SELECT id, heading, text FROM chunks").fetchall():
        add_cjk_terms(conn, int(chunk_id), str(heading), str(text))  # type: ignore[arg-type]


def add_cjk_terms(conn: apsw.Connection, chunk_id: int, heading: str, text: str) -> None:
    """Index the chunk's CJK terms in ``chunks_cjk`` when it has such text."""
    both = f"{heading}\n{text}"
    if has_cjk(both):
        conn.execute(
            "INSERT INTO chunks_cjk(rowid, terms) VALUES (?, ?)", (chunk_id, index_text(both))
        )


MIGRATIONS: list[Callable[[apsw.Connection], None]] = [_m1, _m2, _m3]
SCHEMA_VERSION = len(MIGRATIONS)


SchemaState = Literal["empty", "kb", "foreign"]
"""What a SQLite file holds, as :func:`schema_state` tells it."""


def schema_state(conn: apsw.Connection) -> SchemaState:
    """Whether the open file is a knowledge base, without writing to it.

    ``"kb"``: it has the ``meta`` table with a ``schema_version`` row. Migration 1 creates
    that table and every migration writes that row in the transaction that bumps
    ``user_version``, so each knowledge base, at any schema version, has both.
    ``"empty"``: it holds no schema object (a new or zero-byte file, or one whose first
    migration never committed), so migrating it loses nothing. ``"foreign"``: anything
    else, another program's database, which must be left alone.
    """
    names = {
        str(name)
        for (name,) in conn.execute("SELECT name FROM sqlite_master")
        if not str(name).startswith("sqlite_")  # SQLite's own (sqlite_stat1, ...)
    }
    if not names:
        return "empty"
    if "meta" not in names:
        return "foreign"
    try:
        marker = conn.execute(
            "SELECT 1 FROM meta WHERE key = 'schema_version'"
        ).fetchall()
    except apsw.SQLError:  # a ``meta`` of some other shape (not a table, other columns)
        return "foreign"
    return "kb" if marker else "foreign"


def foreign_file_error(path: str) -> KnowledgeBaseError:
    """The error for a file at a knowledge base's path that holds another program's tables."""
    return KnowledgeBaseError(
        f"{path} is not an appliance knowledge base (it holds other tables); choose another "
        "--kb name or move the file."
    )


def migrate(conn: apsw.Connection) -> int:
    """Apply every migration newer than the file's ``user_version``; return the old version.

    Each migration runs in its own transaction together with the version bump. An empty
    file starts from migration 1 whatever its ``user_version``; a file that holds tables
    but is not a knowledge base (:func:`schema_state`) is refused with KnowledgeBaseError
    and left unchanged.
    """
    state = schema_state(conn)
    if state == "foreign":
        raise foreign_file_error(conn.db_filename("main"))
    current = int(conn.execute("PRAGMA user_version").fetchall()[0][0])  # type: ignore[arg-type]
    if state == "empty":
        current = 0
    for number in range(current + 1, SCHEMA_VERSION + 1):
        with conn:
            MIGRATIONS[number - 1](conn)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                (str(number),),
            )
    return current


def _create_binary_table(conn: apsw.Connection, dim: int) -> None:
    conn.execute(
        f"CREATE VIRTUAL TABLE chunks_bin USING vec0(embedding bit[{int(dim)}], collection text)"
    )


def create_vector_table(conn: apsw.Connection, dim: int) -> None:
    """Create ``chunks_vec`` (unit vectors of ``dim`` floats, cosine distance) and
    ``chunks_bin`` (their sign bits, searched by Hamming distance as a prefilter)."""
    conn.execute(
        f"CREATE VIRTUAL TABLE chunks_vec USING vec0("
        f"embedding float[{int(dim)}] distance_metric=cosine, collection text)"
    )
    _create_binary_table(conn, dim)
