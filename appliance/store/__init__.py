"""Knowledge bases: one SQLite file each under the data directory's ``kb/`` folder."""

from __future__ import annotations

from appliance.config import Settings
from appliance.errors import InputError, KnowledgeBaseNotFoundError
from appliance.store.sqlite import (
    ChunkRow,
    DocumentRow,
    KnowledgeBase,
    fts_query,
    has_content_words,
    query_words,
)

__all__ = [
    "ChunkRow",
    "DocumentRow",
    "KnowledgeBase",
    "fts_query",
    "has_content_words",
    "list_kbs",
    "open_kb",
    "query_words",
    "remove_kb",
]


def open_kb(
    settings: Settings, name: str, *, create: bool = False, readonly: bool = False
) -> KnowledgeBase:
    """Open the knowledge base ``name`` in the data directory.

    Creating one whose name differs from an existing one only in case is refused: the two
    files would be one on a FAT or exFAT USB stick, where bundles travel.
    """
    path = settings.kb_path(name)
    if create and not path.exists():
        twin = next((other for other in list_kbs(settings)
                     if other.lower() == name.lower() and other != name), None)
        if twin is not None:
            raise InputError(f"Knowledge base '{twin}' already exists and differs from '{name}' "
                             "only in case (one file on a FAT or exFAT stick); use "
                             f"'{twin}' or another name.")
    return KnowledgeBase(
        path,
        create=create,
        readonly=readonly,
        busy_timeout_ms=settings.store.busy_timeout_ms,
    )


def list_kbs(settings: Settings) -> list[str]:
    """Names of the knowledge bases in the data directory, sorted."""
    if not settings.kb_dir.is_dir():
        return []
    return sorted(p.stem for p in settings.kb_dir.glob("*.sqlite") if p.is_file())


def remove_kb(settings: Settings, name: str) -> None:
    """Delete a knowledge base file with its WAL and shared-memory files."""
    path = settings.kb_path(name)
    if not path.exists():
        raise KnowledgeBaseNotFoundError(
            f"Knowledge base '{name}' does not exist; `appliance kb list` shows the existing ones."
        )
    for suffix in ("", "-wal", "-shm"):
        target = path.with_name(path.name + suffix)
        if target.exists():
            target.unlink()
