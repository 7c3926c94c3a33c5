"""Ingest: find files, read them in a sandbox, chunk, embed and store one document at a time.

Incremental by content hash: unchanged files are skipped, changed files replaced, and with
``prune`` files that vanished from the given folders are removed. Each document is written
in one transaction, so a crash or kill loses at most the document in flight and a rerun
resumes where it stopped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.config import IngestSettings
from appliance.errors import DocumentError, InputError
from appliance.files import format_bytes, unpaired_surrogate
from appliance.ingest.chunking import Chunker, embed_text
from appliance.ingest.loaders import path_reason
from appliance.ingest.sandbox import LoaderSandbox
from appliance.store import KnowledgeBase
from appliance.types import Embedder, FailedFile, IngestReport

__all__ = ["Candidate", "Found", "discover", "ingest"]

ProgressFn = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Candidate:
    """A file found for ingest, with the root it was found under (for pruning)."""

    path: str
    root: str


Found = tuple[list[Candidate], list[FailedFile], list[str]]
"""What :func:`discover` finds: files to ingest, files that cannot be, folder roots walked."""


def discover(paths: Sequence[Path], extensions: Sequence[str]) -> Found:
    """Files to ingest under ``paths``, files that cannot be, and the folder roots walked.

    Folders are walked without following symlinked folders (no cycles); hidden entries are
    skipped; only ``extensions`` are taken from folders. Files named explicitly are taken
    whatever their extension is, if a loader supports it. A file reached twice (a folder
    given both directly and through a symlink, or a hard link) is taken once, under the
    first path found.
    """
    exts = {e.lower() for e in extensions}
    found: dict[str, Candidate] = {}
    seen: set[tuple[int, int]] = set()
    failed: list[FailedFile] = []
    roots: list[str] = []

    def consider(path: str, root: str, explicit: bool) -> None:
        if not explicit and os.path.splitext(path)[1].lower() not in exts:
            return
        if unpaired_surrogate(path) is not None:  # a byte of the name is not UTF-8
            failed.append(FailedFile(path, "the file name is not UTF-8 text (a knowledge base "
                                           "stores names as text); rename the file"))
            return
        try:
            st = os.stat(path)
        except OSError as exc:
            failed.append(FailedFile(path, path_reason(exc)))
            return
        if not stat.S_ISREG(st.st_mode):
            failed.append(FailedFile(path, "not a regular file"))
            return
        if explicit and os.path.splitext(path)[1].lower() not in exts:
            failed.append(
                FailedFile(path, f"unsupported file type (supported: {', '.join(sorted(exts))})")
            )
            return
        if path in found or (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        found[path] = Candidate(path, root)

    for given in paths:
        path = os.path.abspath(os.fspath(given))
        try:
            st = os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ENOENT and not os.path.islink(path):
                raise InputError(f"{given} does not exist; check the path.") from exc
            failed.append(FailedFile(path, path_reason(exc)))
            continue
        if stat.S_ISDIR(st.st_mode):
            roots.append(path)
            for dirpath, dirnames, filenames in os.walk(path, onerror=None):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        consider(os.path.join(dirpath, name), path, explicit=False)
        else:
            consider(path, path, explicit=True)
    return list(found.values()), failed, roots


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ingest(
    kb: KnowledgeBase,
    paths: Sequence[Path],
    embedder: Embedder,
    chunker: Chunker,
    settings: IngestSettings,
    *,
    collection: str = "default",
    prune: bool = False,
    progress: ProgressFn | None = None,
    found: Found | None = None,
) -> IngestReport:
    """Bring ``kb`` up to date with the files under ``paths``; return the report.

    ``found`` is :func:`discover`'s result for ``paths`` when the caller already walked
    them (so a large tree is walked once)."""
    started = time.perf_counter()
    report = IngestReport()
    kb.bind_embedder(embedder)
    candidates, failed, roots = found or discover(paths, settings.extensions)
    report.failed.extend(failed)
    total = len(candidates)
    with LoaderSandbox(settings) as sandbox:
        for done, cand in enumerate(candidates):
            if progress:
                progress(done, total, cand.path)
            try:
                outcome = _ingest_one(kb, cand.path, embedder, chunker, sandbox, settings,
                                      collection)
            except DocumentError as exc:
                report.failed.append(FailedFile(cand.path, exc.message))
                continue
            except OSError as exc:
                report.failed.append(FailedFile(cand.path, path_reason(exc)))
                continue
            kind, n = outcome
            report.chunks += n
            if kind == "unchanged":
                report.unchanged += 1
            elif kind == "added":
                report.added += 1
            else:
                report.updated += 1
        if progress:
            progress(total, total, "")
    if prune:
        seen = {c.path for c in candidates} | {f.path for f in report.failed}
        for root in roots:
            if unpaired_surrogate(root) is not None:  # nothing under it can be stored
                continue
            for doc in kb.documents(prefix=root.rstrip(os.sep) + os.sep):
                if doc.path not in seen and not os.path.exists(doc.path):
                    kb.remove_document(doc.path)
                    report.removed += 1
    report.seconds = time.perf_counter() - started
    return report


def _ingest_one(
    kb: KnowledgeBase,
    path: str,
    embedder: Embedder,
    chunker: Chunker,
    sandbox: LoaderSandbox,
    settings: IngestSettings,
    collection: str,
) -> tuple[str, int]:
    st = os.stat(path)
    if st.st_size > settings.max_file_bytes:
        raise DocumentError(
            f"{format_bytes(st.st_size)}, over the {format_bytes(settings.max_file_bytes)} limit "
            "(ingest.max_file_bytes)"
        )
    digest = _sha256(path)
    existing = kb.document(path)
    if existing is not None and existing.sha256 == digest and existing.collection == collection:
        if existing.mtime != st.st_mtime:
            kb.touch_document(path, st.st_mtime)
        return ("unchanged", 0)
    doc = sandbox.load(Path(path))
    chunks = chunker.chunk(doc)
    if not chunks:
        raise DocumentError("no text found")
    vectors = embedder.embed([embed_text(c.heading, c.text) for c in chunks])
    kb.replace_document(
        path=path,
        sha256=digest,
        size=st.st_size,
        mtime=st.st_mtime,
        title=doc.title,
        kind=doc.kind,
        collection=collection,
        chunks=chunks,
        vectors=vectors,
    )
    return ("added" if existing is None else "updated", len(chunks))
