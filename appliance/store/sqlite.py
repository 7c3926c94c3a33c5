"""A knowledge base: one SQLite file with documents, chunks, FTS5 and sqlite-vec tables.

The file is opened through apsw (the standard library's sqlite3 often cannot load
extensions). WAL mode lets readers work while one writer writes; writers wait up to the busy
timeout for each other. Every document is written in one transaction, so a crash leaves
each file either fully indexed or absent.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import numpy.typing as npt
import sqlite_vec

from appliance.errors import (
    EmbedderMismatchError,
    KnowledgeBaseError,
    KnowledgeBaseNotFoundError,
    StoreBusyError,
)
from appliance.store.schema import (
    FTS_TOKENIZER,
    SCHEMA_VERSION,
    add_cjk_terms,
    create_vector_table,
    foreign_file_error,
    migrate,
    schema_state,
)
from appliance.store.segment import has_cjk, index_text, query_terms
from appliance.types import Chunk, Embedder, fold_text

__all__ = ["ChunkRow", "DocumentRow", "KnowledgeBase", "fts_query", "fts_words", "query_words"]


def _one(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    """The first column of the first row of a query."""
    return conn.execute(sql, args).fetchall()[0][0]


def _rows(conn: apsw.Connection, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, args)]

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for
    from further had has have having he her here hers him his how i if in into is it its
    itself just me more most my no nor not of off on once only or other our out over own
    same she should so some such than that the their them then there these they this those
    through to too under until up very was we were what when where which while who whom
    why will with would you your
    """.split()
)

# "Lenin's", "don't", "we'll": the tokenizer makes "s", "t", "ll" of the endings, terms in
# a third of all English chunks (slow to score, near-zero weight); "vitamin D" keeps its "d"
_CLITIC = re.compile(r"(?<=\w)['\u2019](?:s|t|d|ll|m|re|ve)\b", re.IGNORECASE)


def query_words(text: str) -> list[str]:
    """The words of a query that carry its meaning, lowercased, in order, repeats kept.

    Common English words are dropped unless nothing else is left.
    """
    words = _words(text)
    return [w for w in words if w not in _STOPWORDS] or words


def has_content_words(text: str) -> bool:
    """Whether ``text`` has a word that is not a common English word (a stopword)."""
    return any(w not in _STOPWORDS for w in _words(text))


def _words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w.strip("_")]


def fts_query(text: str) -> str | None:
    """Turn free text into a safe FTS5 query: quoted words joined by OR.

    Quotes, operators, ``-``, ``*``, ``:`` and brackets in the input are never interpreted.
    Common English words are dropped unless nothing else is left, and so are the endings of
    possessives and contractions (the ``s`` of ``'s``, the ``t`` of ``n't``). None when no
    word remains.
    """
    return _or_query(fts_words(text))


def fts_words(text: str) -> list[str]:
    """The distinct words :func:`fts_query` searches for, in order (at most 64)."""
    return list(dict.fromkeys(query_words(_CLITIC.sub("", text))))[:64]


def _quoted(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def _or_query(words: Sequence[str]) -> str | None:
    return " OR ".join(_quoted(w) for w in words) if words else None


@dataclass(frozen=True)
class DocumentRow:
    """A document as stored."""

    id: int
    path: str
    sha256: str
    size: int
    mtime: float
    title: str
    kind: str
    collection: str
    chunk_count: int


@dataclass(frozen=True)
class ChunkRow:
    """A chunk joined with its document."""

    id: int
    document_id: int
    ord: int
    text: str
    heading: str
    page: int | None
    path: str
    title: str
    collection: str


class KnowledgeBase:
    """One knowledge base file. Use as a context manager, or call :meth:`close`.

    An existing file is migrated only when it is a knowledge base, or when it is empty (no
    tables) and ``create`` is set, as ingest does. Another program's database is refused
    with KnowledgeBaseError, and an empty file opened without ``create`` is reported as
    KnowledgeBaseNotFoundError; both are left unchanged.
    """

    def __init__(
        self,
        path: Path,
        *,
        create: bool = False,
        busy_timeout_ms: int = 60_000,
        readonly: bool = False,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self._tokenizer: Callable[..., Any] | None = None
        self._tables: dict[str, bool] = {}
        if not path.exists() and not create:
            # name the ones that do exist: the usual cause is a forgotten or misspelt --kb
            others = sorted(p.stem for p in path.parent.glob("*.sqlite")) \
                if path.parent.is_dir() else []
            listed = ", ".join(others[:8]) + (f" and {len(others) - 8} more"
                                              if len(others) > 8 else "")
            hint = (f"the existing ones are {listed} (choose one with --kb NAME), "
                    "or create it" if others else "create it")
            raise KnowledgeBaseNotFoundError(
                f"Knowledge base '{path.stem}' does not exist at {path}; "
                f"{hint} with `appliance ingest PATH --kb {path.stem}`."
            )
        if create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise KnowledgeBaseError(
                    f"Cannot create the folder {path.parent}: {exc.strerror or exc}; point "
                    "APPLIANCE_HOME at a folder you can write."
                ) from None
        flags = apsw.SQLITE_OPEN_READONLY if readonly else (
            apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        )
        try:
            self.conn = apsw.Connection(str(path), flags=flags)
            try:
                self._open(create=create, readonly=readonly, busy_timeout_ms=busy_timeout_ms)
            except BaseException:
                self.conn.close()
                raise
        except apsw.BusyError as exc:
            raise StoreBusyError(
                f"{path} is locked by another writer; wait for it to finish and retry."
            ) from exc
        except (apsw.NotADBError, apsw.CorruptError) as exc:
            raise KnowledgeBaseError(
                f"{path} is not a valid knowledge base ({exc}); restore it or remove it."
            ) from exc
        except apsw.CantOpenError as exc:
            raise KnowledgeBaseError(f"Cannot open {path}: {exc}; check permissions.") from exc

    def _open(self, *, create: bool, readonly: bool, busy_timeout_ms: int) -> None:
        """Set up a new connection; migrate (and so write) only a knowledge base, or an
        empty file when ``create`` asks for one. Nothing is written before the file has
        been found to be one of those."""
        path, conn = self.path, self.conn
        conn.set_busy_timeout(busy_timeout_ms)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        state = schema_state(conn)  # reads only: the checks below must come before any write
        if state == "foreign":
            raise foreign_file_error(str(path))
        if state == "empty" and (readonly or not create):
            # a zero-byte or table-less file (an interrupted first ingest): only the write
            # path may initialise it; reading it must leave it as it is
            raise KnowledgeBaseNotFoundError(
                f"Knowledge base '{path.stem}' at {path} is empty (no tables yet, perhaps from "
                f"an interrupted first ingest); fill it with `appliance ingest PATH --kb "
                f"{path.stem}` or remove the file."
            )
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA mmap_size={1 << 30}")
        version = 0 if state == "empty" else int(_one(conn, "PRAGMA user_version"))
        if version > SCHEMA_VERSION:
            raise KnowledgeBaseError(
                f"{path} was written by a newer appliance (schema {version}, this one "
                f"knows {SCHEMA_VERSION}); upgrade appliance to open it."
            )
        if version < SCHEMA_VERSION:
            if readonly:
                raise KnowledgeBaseError(
                    f"{path} needs a schema upgrade; open it once without read-only mode."
                )
            migrate(conn)

    # -- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> KnowledgeBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (checkpointing the WAL when this is the last one)."""
        self.conn.close()

    @property
    def name(self) -> str:
        """The knowledge base's name (file stem)."""
        return self.path.stem

    # -- meta and embedder -----------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        """All ``meta`` rows."""
        return {str(k): str(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def embedder_id(self) -> str | None:
        """Id of the embedder that made the vectors, or None before the first ingest."""
        return self.meta().get("embedder_id")

    def bind_embedder(self, embedder: Embedder) -> None:
        """Record ``embedder`` on a new knowledge base, or refuse a different one."""
        meta = self.meta()
        if "embedder_id" not in meta:
            with self.write():
                create_vector_table(self.conn, embedder.dim)
                self._set_meta("embedder_id", embedder.id)
                self._set_meta("embedder_dim", str(embedder.dim))
            return
        self.check_embedder(embedder)

    def check_embedder(self, embedder: Embedder) -> None:
        """Raise EmbedderMismatchError unless ``embedder`` made this knowledge base."""
        meta = self.meta()
        stored, dim = meta.get("embedder_id"), meta.get("embedder_dim")
        if stored is None:
            return
        if stored != embedder.id or dim != str(embedder.dim):
            raise EmbedderMismatchError(
                f"Knowledge base '{self.name}' was built with embedder '{stored}' ({dim} dims), "
                f"not '{embedder.id}' ({embedder.dim} dims); run `appliance kb reembed "
                f"{self.name}` to rebuild its vectors with the current embedder."
            )

    # -- writing ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction, taking the write lock at once (BEGIN IMMEDIATE)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except apsw.BusyError as exc:
            raise StoreBusyError(
                f"Knowledge base '{self.name}' is busy with another writer; retry when it is "
                "done (or raise store.busy_timeout_ms)."
            ) from exc
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def replace_document(
        self,
        *,
        path: str,
        sha256: str,
        size: int,
        mtime: float,
        title: str,
        kind: str,
        collection: str,
        chunks: Sequence[Chunk],
        vectors: npt.NDArray[np.float32],
    ) -> int:
        """Store a document and its chunks and vectors, replacing any earlier version."""
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        with self.write():
            self._delete_document(path)
            self.conn.execute(
                "INSERT INTO documents(path, sha256, size, mtime, title, kind, collection, "
                "chunk_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (path, sha256, size, mtime, title, kind, collection, len(chunks)),
            )
            doc_id = self.conn.last_insert_rowid()
            vecs = np.ascontiguousarray(vectors, dtype=np.float32)
            for chunk, vec in zip(chunks, vecs, strict=True):
                self.conn.execute(
                    "INSERT INTO chunks(document_id, ord, text, heading, page, start_offset, "
                    "end_offset, token_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (doc_id, chunk.order, chunk.text, chunk.heading, chunk.page, chunk.start,
                     chunk.end, chunk.token_count),
                )
                chunk_id = self.conn.last_insert_rowid()
                add_cjk_terms(self.conn, chunk_id, chunk.heading, chunk.text)
                self._insert_vector(chunk_id, vec.tobytes(), collection)
        return doc_id

    def _insert_vector(self, chunk_id: int, blob: bytes, collection: str) -> None:
        self.conn.execute(
            "INSERT INTO chunks_vec(rowid, embedding, collection) VALUES (?, ?, ?)",
            (chunk_id, blob, collection),
        )
        self.conn.execute(
            "INSERT INTO chunks_bin(rowid, embedding, collection) "
            "VALUES (?, vec_quantize_binary(?), ?)",
            (chunk_id, blob, collection),
        )

    def touch_document(self, path: str, mtime: float) -> None:
        """Record a new mtime for an unchanged document."""
        with self.write():
            self.conn.execute("UPDATE documents SET mtime = ? WHERE path = ?", (mtime, path))

    def remove_document(self, path: str) -> bool:
        """Delete a document with its chunks and vectors; False when it was not stored."""
        with self.write():
            return self._delete_document(path)

    def _delete_document(self, path: str) -> bool:
        row = self.conn.execute("SELECT id FROM documents WHERE path = ?", (path,)).fetchall()
        if not row:
            return False
        doc_id = row[0][0]
        if self._has_vec():
            for table in ("chunks_vec", "chunks_bin"):
                self.conn.execute(
                    f"DELETE FROM {table} WHERE rowid IN "
                    "(SELECT id FROM chunks WHERE document_id = ?)",
                    (doc_id,),
                )
        self.conn.execute("DELETE FROM chunks WHERE document_id = ?", (doc_id,))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
        return True

    def _has_vec(self) -> bool:
        return bool(
            self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'chunks_vec'"
            ).fetchall()
        )

    def reembed(
        self,
        embedder: Embedder,
        text_for: Callable[[ChunkRow], str],
        progress: Callable[[int, int], None] | None = None,
        batch: int = 256,
    ) -> int:
        """Rebuild every vector with ``embedder`` in one transaction; return chunks embedded.

        ``text_for`` gives the text to embed for a chunk (the same rule ingest used).
        """
        total = self.count("chunks")
        with self.write():
            self.conn.execute("DROP TABLE IF EXISTS chunks_vec")
            self.conn.execute("DROP TABLE IF EXISTS chunks_bin")
            create_vector_table(self.conn, embedder.dim)
            done = 0
            rows = list(self._iter_chunk_rows())
            for start in range(0, len(rows), batch):
                part = rows[start : start + batch]
                vecs = embedder.embed([text_for(r) for r in part])
                for row, vec in zip(part, vecs, strict=True):
                    self._insert_vector(
                        row.id, np.ascontiguousarray(vec, dtype=np.float32).tobytes(),
                        row.collection,
                    )
                done += len(part)
                if progress:
                    progress(done, total)
            self._set_meta("embedder_id", embedder.id)
            self._set_meta("embedder_dim", str(embedder.dim))
        return total

    # -- reading ---------------------------------------------------------------------------

    def count(self, table: str) -> int:
        """Rows in ``documents``, ``chunks``, ``chunks_fts``, ``chunks_vec``, ``chunks_bin``
        or ``chunks_cjk``."""
        if table not in {"documents", "chunks", "chunks_fts", "chunks_vec", "chunks_bin",
                         "chunks_cjk"}:
            raise ValueError(table)
        if table in ("chunks_vec", "chunks_bin") and not self._has_vec():
            return 0
        if table == "chunks_cjk" and not self._has_table(table):
            return 0
        return int(_one(self.conn, f"SELECT count(*) FROM {table}"))

    def document(self, path: str) -> DocumentRow | None:
        """The stored document with this path, if any."""
        rows = _rows(
            self.conn,
            "SELECT id, path, sha256, size, mtime, title, kind, collection, chunk_count "
            "FROM documents WHERE path = ?",
            (path,),
        )
        return DocumentRow(*rows[0]) if rows else None

    def documents(self, prefix: str | None = None) -> list[DocumentRow]:
        """All documents, or those whose path starts with ``prefix``."""
        sql = ("SELECT id, path, sha256, size, mtime, title, kind, collection, chunk_count "
               "FROM documents")
        args: tuple[Any, ...] = ()
        if prefix:
            sql += " WHERE substr(path, 1, length(?)) = ?"
            args = (prefix, prefix)
        return [DocumentRow(*r) for r in _rows(self.conn, sql + " ORDER BY path", args)]

    def _iter_chunk_rows(self, ids: Iterable[int] | None = None) -> Iterator[ChunkRow]:
        sql = ("SELECT c.id, c.document_id, c.ord, c.text, c.heading, c.page, d.path, d.title, "
               "d.collection FROM chunks c JOIN documents d ON d.id = c.document_id")
        if ids is None:
            yield from (ChunkRow(*r) for r in _rows(self.conn, sql + " ORDER BY c.id"))
            return
        id_list = list(ids)
        for start in range(0, len(id_list), 500):
            part = id_list[start : start + 500]
            marks = ",".join("?" * len(part))
            yield from (
                ChunkRow(*r) for r in _rows(self.conn, sql + f" WHERE c.id IN ({marks})", part)
            )

    def chunks(self, ids: Iterable[int]) -> dict[int, ChunkRow]:
        """Chunks by id, joined with their documents."""
        return {row.id: row for row in self._iter_chunk_rows(ids)}

    def vector_search(
        self,
        vector: npt.NDArray[np.float32],
        k: int,
        collection: str | None = None,
        *,
        prefilter_from: int = 20_000,
        oversample: int = 4,
    ) -> list[tuple[int, float]]:
        """The ``k`` nearest chunks as (chunk id, cosine similarity), best first.

        Up to ``prefilter_from`` chunks the float vectors are searched exactly. Above it,
        the sign bits (``chunks_bin``, 48 bytes a chunk) are searched by Hamming distance
        for ``k * oversample`` candidates, which are then rescored with their float vectors:
        an exact ranking of an approximate candidate set, several times faster.
        """
        if not self._has_vec():
            return []
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        k = max(1, min(int(k), 4096))
        size = self.chunk_count()
        if size > prefilter_from:
            depth = min(4096, k * max(1, oversample))
            ids = [cid for cid, _ in self._knn("chunks_bin", "vec_quantize_binary(?)", blob,
                                               depth, collection)]
            scored = self.similarities(vector, ids)
            return sorted(scored.items(), key=lambda item: item[1], reverse=True)[:k]
        return [(cid, 1.0 - d) for cid, d in self._knn("chunks_vec", "?", blob, k, collection)]

    def chunk_count(self) -> int:
        """Chunks in the knowledge base (microseconds: SQLite counts a small index)."""
        return int(_one(self.conn, "SELECT count(*) FROM chunks"))

    def _knn(
        self, table: str, probe: str, blob: bytes, k: int, collection: str | None
    ) -> list[tuple[int, float]]:
        sql = f"SELECT rowid, distance FROM {table} WHERE embedding MATCH {probe} AND k = ?"
        args: tuple[Any, ...] = (blob, k)
        if collection is not None:
            sql += " AND collection = ?"
            args += (collection,)
        return [(int(r), float(d)) for r, d in _rows(self.conn, sql, args)]

    def similarities(
        self, vector: npt.NDArray[np.float32], ids: Sequence[int]
    ) -> dict[int, float]:
        """Exact cosine similarity of ``vector`` to the stored vectors of chunks ``ids``."""
        out: dict[int, float] = {}
        if not ids or not self._has_vec():
            return out
        query = np.ascontiguousarray(vector, dtype=np.float32)
        ids = list(dict.fromkeys(ids))
        # vec0 answers `rowid = ?` by a direct lookup but `rowid IN (...)` by a slow path,
        # so the candidates are fetched one statement each (about 20 µs a row).
        blobs: list[bytes] = []
        found: list[int] = []
        for cid in ids:
            rows = _rows(self.conn, "SELECT embedding FROM chunks_vec WHERE rowid = ?", (cid,))
            if rows:
                found.append(cid)
                blobs.append(rows[0][0])
        if found:
            matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(found), -1)
            out.update(zip(found, (float(x) for x in matrix @ query), strict=True))
        return out

    def terms(self, text: str) -> list[str]:
        """``text`` as the keyword index sees it: its tokens, in order, folded and stemmed
        by the FTS5 tokenizer of ``chunks_fts`` (so "Running" and "runs" both give "run")."""
        if self._tokenizer is None:
            name, args = FTS_TOKENIZER
            self._tokenizer = self.conn.fts5_tokenizer(name, list(args))
        tokens = self._tokenizer(
            text.encode("utf-8"), apsw.FTS5_TOKENIZE_DOCUMENT, None,
            include_offsets=False, include_colocated=False,
        )
        return [str(t) for t in tokens]

    def keyword_search(
        self, text: str, k: int, collection: str | None = None, *,
        max_share: float | None = None, bound_from: int = 0,
    ) -> list[tuple[int, float]]:
        """The ``k`` best bm25 matches as (chunk id, relevance), best first.

        Relevance is FTS5's bm25 rank negated (higher is better). The query is free text,
        escaped by :func:`fts_query`. A query with Chinese, Japanese or Korean characters
        also searches ``chunks_cjk`` with its character pairs; a chunk found by both
        indexes keeps the better relevance.

        Above ``bound_from`` chunks, and only without a ``collection``, ``max_share``
        leaves out the query's words found in more of the chunks than that share (all are
        kept when no found word is rarer): bm25 weighs such a word little but scores each
        of its rows, so on a large knowledge base they take most of the time. Whether a
        word is that common is found by reading at most that many of its rows. (Within a
        collection a word common elsewhere may be rare, so there every word is searched.)

        The query is matched in :func:`~appliance.types.fold_text` form, as documents are
        stored; when that differs from the text as given, the text as given is matched too,
        for documents stored before text was folded (an unchanged file is not read again).
        """
        folded = fold_text(text)
        forms = [folded] if folded == text else [folded, text]
        best: dict[int, float] = {}
        for form in forms:
            words = fts_words(form)
            if max_share is not None and max_share < 1.0 and collection is None:
                words = self._uncommon(words, max_share, bound_from)
            found = self._match("chunks_fts", _or_query(words), k, collection)
            pairs = query_terms(form)
            if pairs and self._has_table("chunks_cjk"):
                found += self._match("chunks_cjk", _or_query(pairs), k, collection)
            for chunk_id, score in found:
                best[chunk_id] = max(score, best.get(chunk_id, score))
        return sorted(best.items(), key=lambda item: -item[1])[:k]

    def _uncommon(self, words: list[str], max_share: float, bound_from: int) -> list[str]:
        """``words`` without those in more than ``max_share`` of the chunks, when there
        are more than ``bound_from`` chunks. All of them when no word is found and rarer:
        a misspelt word alone must not stand for the query."""
        size = self.chunk_count()
        cap = int(max_share * size) + 1
        if not words or size <= bound_from or cap > size:
            return words
        sql = ("SELECT count(*) FROM (SELECT 1 FROM chunks_fts WHERE chunks_fts MATCH ? "
               "LIMIT ?)")
        found = {w: int(_one(self.conn, sql, (_quoted(w), cap))) for w in words}
        rare = [w for w in words if 0 < found[w] < cap]
        return rare or words

    def _match(
        self, table: str, query: str | None, k: int, collection: str | None
    ) -> list[tuple[int, float]]:
        if query is None:
            return []
        if collection is None:
            sql = f"SELECT rowid, rank FROM {table} WHERE {table} MATCH ? ORDER BY rank LIMIT ?"
            args: tuple[Any, ...] = (query, int(k))
        else:
            sql = (f"SELECT f.rowid, f.rank FROM {table} f JOIN chunks c ON c.id = f.rowid "
                   f"JOIN documents d ON d.id = c.document_id WHERE {table} MATCH ? "
                   "AND d.collection = ? ORDER BY f.rank LIMIT ?")
            args = (query, collection, int(k))
        return [(int(r), -float(s)) for r, s in _rows(self.conn, sql, args)]

    def _has_table(self, name: str) -> bool:
        """Whether the file has table ``name`` (a read-only file may predate a migration)."""
        if name not in self._tables:
            self._tables[name] = bool(self.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchall())
        return self._tables[name]

    # -- health ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Documents, chunks, file size and embedder, as ``kb stats --json`` prints them."""
        meta = self.meta()
        size = sum(
            p.stat().st_size
            for p in (self.path, Path(str(self.path) + "-wal"))
            if p.exists()
        )
        collections = {
            str(c): int(n)
            for c, n in self.conn.execute(
                "SELECT collection, count(*) FROM documents GROUP BY collection"
            )
        }
        return {
            "name": self.name,
            "path": str(self.path),
            "documents": self.count("documents"),
            "chunks": self.count("chunks"),
            "size_bytes": size,
            "embedder": meta.get("embedder_id"),
            "embedder_dim": int(meta["embedder_dim"]) if "embedder_dim" in meta else None,
            "schema_version": int(meta.get("schema_version", "0")),
            "collections": collections,
        }

    def check(self) -> list[str]:
        """Integrity problems, one sentence each; empty when the knowledge base is sound."""
        problems: list[str] = []
        result = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        if result != ["ok"]:
            problems += [f"integrity_check: {r}" for r in result[:10]]
        try:
            self.conn.execute(
                "INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)"
            )
        except apsw.Error as exc:
            problems.append(f"FTS index does not match the chunks: {exc}")
        chunks = self.count("chunks")
        fts = int(_one(self.conn, "SELECT count(*) FROM chunks_fts_docsize"))
        if fts != chunks:
            problems.append(f"{chunks} chunks but {fts} rows in the keyword index")
        problems += self._check_cjk()
        if self._has_vec():
            vec = self.count("chunks_vec")
            if vec != chunks:
                problems.append(f"{chunks} chunks but {vec} vectors")
            codes = self.count("chunks_bin")
            if codes != chunks:
                problems.append(f"{chunks} chunks but {codes} binary codes")
            orphans = self.conn.execute(
                "SELECT count(*) FROM chunks c WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks_vec v WHERE v.rowid = c.id)"
            ).fetchall()[0][0]
            if orphans:
                problems.append(f"{orphans} chunks have no vector")
        elif chunks:
            problems.append(f"{chunks} chunks but no vector table")
        bad_counts = self.conn.execute(
            "SELECT count(*) FROM documents d WHERE chunk_count != "
            "(SELECT count(*) FROM chunks c WHERE c.document_id = d.id)"
        ).fetchall()[0][0]
        if bad_counts:
            problems.append(f"{bad_counts} documents whose chunk count does not match")
        dupes = self.conn.execute(
            "SELECT count(*) FROM (SELECT document_id, ord FROM chunks "
            "GROUP BY document_id, ord HAVING count(*) > 1)"
        ).fetchall()[0][0]
        if dupes:
            problems.append(f"{dupes} duplicated chunks")
        return problems

    def _check_cjk(self) -> list[str]:
        """``chunks_cjk`` holds exactly the terms of the chunks with CJK text."""
        if not self._has_table("chunks_cjk"):
            return []
        try:
            self.conn.execute(
                "INSERT INTO chunks_cjk(chunks_cjk, rank) VALUES ('integrity-check', 1)")
        except apsw.Error as exc:
            return [f"CJK keyword index is damaged: {exc}"]
        def digest(terms: object) -> bytes:
            return hashlib.blake2b(str(terms).encode("utf-8"), digest_size=16).digest()

        stored = {int(r): digest(t) for r, t in self.conn.execute(
            "SELECT rowid, terms FROM chunks_cjk")}
        wrong = 0
        for chunk_id, heading, text in self.conn.execute("SELECT id, heading, text FROM chunks"):
            both = f"{heading}\n{text}"
            want = digest(index_text(both)) if has_cjk(both) else None
            if stored.pop(int(chunk_id), None) != want:
                wrong += 1
        problems = []
        if wrong:
            problems.append(f"{wrong} chunks whose CJK keyword terms are missing or stale")
        if stored:
            problems.append(f"{len(stored)} CJK keyword rows without a chunk")
        return problems

    def checkpoint(self) -> None:
        """Fold the WAL into the main file (used before copying the file)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
