"""Files at a knowledge base's path that are not knowledge bases: another program's SQLite
database is refused and left byte-for-byte unchanged; an empty file (zero bytes, or no
tables) is left alone by every read and initialised only by ingest."""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import pytest

from appliance.config import load_settings
from appliance.errors import KnowledgeBaseError, KnowledgeBaseNotFoundError
from appliance.ingest.chunking import Chunker
from appliance.ingest.runner import ingest
from appliance.store import KnowledgeBase, open_kb
from appliance.store.schema import SCHEMA_VERSION, migrate, schema_state
from tests.conftest import run_cli, unwrapped
from tests.fakes import HashEmbedder

FOREIGN = "is not an appliance knowledge base (it holds other tables)"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _side_files(path: Path) -> list[Path]:
    return [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal"))
            if p.exists()]


def _foreign_db(path: Path, *, user_version: int = 0, meta: str | None = None) -> Path:
    """Another program's database: a table ``foo`` with a row, and optionally its own
    ``meta`` table (``meta`` is the CREATE TABLE body) and ``user_version``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE foo(a INTEGER, b TEXT); INSERT INTO foo VALUES (1, 'x')")
    if meta is not None:
        conn.execute(f"CREATE TABLE meta({meta})")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.close()
    return path


def _kb_dir(home: Path) -> Path:
    folder = home / "kb"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.parametrize(
    ("user_version", "meta"),
    [
        (0, None),
        (1, None),  # would look like a schema-1 knowledge base by user_version alone
        (99, None),  # would look like one from a newer appliance
        (0, "key TEXT PRIMARY KEY, value TEXT"),  # its own key/value meta, no marker row
        (0, "id INTEGER, data BLOB"),  # a meta of another shape
    ],
)
@pytest.mark.parametrize("mode", ["read", "readonly", "create"])
def test_foreign_database_is_refused_and_unchanged(
    tmp_path: Path, user_version: int, meta: str | None, mode: str
) -> None:
    path = _foreign_db(tmp_path / "other.sqlite", user_version=user_version, meta=meta)
    before = _digest(path)
    with pytest.raises(KnowledgeBaseError, match="choose another --kb name") as info:
        KnowledgeBase(path, create=mode == "create", readonly=mode == "readonly")
    assert FOREIGN in info.value.message and str(path) in info.value.message
    assert not isinstance(info.value, KnowledgeBaseNotFoundError)
    assert _digest(path) == before
    assert _side_files(path) == []


def test_migrate_refuses_a_foreign_database(tmp_path: Path) -> None:
    path = _foreign_db(tmp_path / "other.sqlite")
    before = _digest(path)
    conn = apsw.Connection(str(path))
    try:
        assert schema_state(conn) == "foreign"
        with pytest.raises(KnowledgeBaseError, match="not an appliance knowledge base"):
            migrate(conn)
    finally:
        conn.close()
    assert _digest(path) == before


def test_cli_refuses_a_foreign_database(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = _foreign_db(_kb_dir(home) / "other.sqlite")
    before = _digest(path)
    for args in (("kb", "stats", "other"), ("kb", "check", "other"),
                 ("search", "anything", "--kb", "other")):
        proc = run_cli(*args, home=home)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert FOREIGN in unwrapped(proc.stderr)
        assert "Traceback" not in proc.stderr and "schema_version" not in proc.stdout
        assert _digest(path) == before, args
    conn = apsw.Connection(str(path))
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    conn.close()
    assert names == ["foo"]


@pytest.mark.parametrize("kind", ["zero-byte", "no-tables"])
@pytest.mark.parametrize("readonly", [False, True])
def test_empty_file_is_not_written_by_a_read(tmp_path: Path, kind: str, readonly: bool) -> None:
    path = tmp_path / "zero.sqlite"
    if kind == "zero-byte":
        path.write_bytes(b"")
    else:  # a valid header but no schema, as a creation that never committed can leave
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA user_version = 3")
        conn.close()
    before = _digest(path)
    with pytest.raises(KnowledgeBaseNotFoundError, match="is empty") as info:
        KnowledgeBase(path, readonly=readonly)
    assert "appliance ingest" in info.value.message
    assert _digest(path) == before
    assert _side_files(path) == []


def test_cli_reads_leave_a_zero_byte_file_empty(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = _kb_dir(home) / "zero.sqlite"
    path.write_bytes(b"")
    for args in (("kb", "stats", "zero"), ("kb", "check", "zero"),
                 ("search", "anything", "--kb", "zero")):
        proc = run_cli(*args, home=home)
        assert proc.returncode == 3, (args, proc.stdout, proc.stderr)
        assert "is empty" in unwrapped(proc.stderr) and "Traceback" not in proc.stderr
        assert path.stat().st_size == 0, args
    assert _side_files(path) == []


@pytest.mark.parametrize("kind", ["zero-byte", "no-tables"])
def test_ingest_initialises_an_empty_file(tmp_path: Path, kind: str) -> None:
    settings = load_settings(home=tmp_path / "home")
    path = settings.kb_path("zero")
    path.parent.mkdir(parents=True)
    if kind == "zero-byte":
        path.write_bytes(b"")
    else:
        conn = apsw.Connection(str(path))
        conn.execute("PRAGMA user_version = 3")  # ignored: nothing was ever migrated
        conn.close()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.md").write_text("# Otters\n\nSea otters hold hands while they sleep.\n")
    emb = HashEmbedder()
    with open_kb(settings, "zero", create=True) as store:  # as Appliance.ingest opens it
        report = ingest(store, [docs], emb, Chunker(emb.tokenizer, 128, 16), settings.ingest)
    assert report.added == 1 and not report.failed
    with open_kb(settings, "zero") as store:
        stats = store.stats()
        assert stats["documents"] == 1 and stats["schema_version"] == SCHEMA_VERSION
        assert stats["embedder"] == emb.id and store.check() == []
        assert store.keyword_search("otters sleep", 3)


def test_a_knowledge_base_is_still_opened_and_read(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    with KnowledgeBase(path, create=True) as kb:
        assert schema_state(kb.conn) == "kb"
    before = _digest(path)
    with KnowledgeBase(path, readonly=True) as kb:
        assert kb.stats()["schema_version"] == SCHEMA_VERSION
    with KnowledgeBase(path) as kb:
        assert kb.check() == []
    assert _digest(path) == before


def test_a_name_differing_only_in_case_is_refused_for_a_new_kb(tmp_path: Path) -> None:
    from appliance.config import load_settings
    from appliance.errors import InputError
    from appliance.store import open_kb

    settings = load_settings(home=tmp_path)
    open_kb(settings, "Tiny", create=True).close()
    with pytest.raises(InputError, match="differs from 'tiny' only in case"):
        open_kb(settings, "tiny", create=True)
    assert not settings.kb_path("tiny").exists()
    open_kb(settings, "Tiny", create=True).close()  # the existing one still opens
