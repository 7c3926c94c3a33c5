"""The Python API every front end uses: the CLI, the TUI and the scripts are thin layers on it.

>>> app = Appliance()                                   # doctest: +SKIP
>>> app.ingest([Path("docs")], kb="default")            # doctest: +SKIP
>>> app.search("how does the with statement call __exit__").hits[0].path  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw

from appliance.config import Settings, load_settings
from appliance.embed import OnnxEmbedder, load_embedder
from appliance.errors import InputError
from appliance.ingest.chunking import Chunker, embed_text
from appliance.ingest.runner import ProgressFn, discover
from appliance.ingest.runner import ingest as run_ingest
from appliance.models import Registry
from appliance.retrieve import QuestionLikelihoodReranker, Reranker, Retriever, SearchResult
from appliance.store import KnowledgeBase, list_kbs, open_kb, remove_kb
from appliance.types import UNSHOWABLE, IngestReport

__all__ = ["Appliance"]


class Appliance:
    """Settings, the model registry, the embedder and knowledge bases, loaded on demand."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._registry: Registry | None = None
        self._embedder: OnnxEmbedder | None = None
        self._retrievers: dict[str, Retriever] = {}
        self._reranker: Reranker | None = None

    # -- models ----------------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        """The model registry (packaged and user manifests)."""
        if self._registry is None:
            self._registry = Registry.load(self.settings)
        return self._registry

    @property
    def embedder(self) -> OnnxEmbedder:
        """The configured embedder, loaded once."""
        if self._embedder is None:
            self._embedder = load_embedder(self.settings, self.registry)
        return self._embedder

    def chunker(self) -> Chunker:
        """A chunker sized to the embedder's window."""
        ingest = self.settings.ingest
        size = min(ingest.chunk_tokens, self.embedder.max_tokens)
        return Chunker(self.embedder.tokenizer, size, ingest.chunk_overlap)

    # -- knowledge bases -------------------------------------------------------------------

    def open_kb(self, name: str, *, create: bool = False) -> KnowledgeBase:
        """Open a knowledge base of the data directory."""
        return open_kb(self.settings, name, create=create)

    def list_kbs(self) -> list[str]:
        """Names of the knowledge bases."""
        return list_kbs(self.settings)

    def ingest(
        self,
        paths: Sequence[Path],
        *,
        kb: str = "default",
        collection: str = "default",
        prune: bool = False,
        progress: ProgressFn | None = None,
    ) -> IngestReport:
        """Ingest files and folders into ``kb`` (created when missing).

        A knowledge base is not created for paths that hold no file to ingest (an empty
        folder, or only other file types), so a misspelt ``--kb`` leaves nothing behind.
        """
        for path in paths:
            if not os.path.lexists(path):
                raise InputError(f"{path} does not exist; check the path.")
        if UNSHOWABLE.search(collection):
            raise InputError(f"{collection!r} is not a usable collection name: give one in "
                             "UTF-8 without control characters.")
        self._retrievers.pop(kb, None)
        found = None
        if not os.path.lexists(self.settings.kb_path(kb)):
            started = time.perf_counter()
            found = discover(paths, self.settings.ingest.extensions)
            if not found[0]:
                return IngestReport(failed=found[1], seconds=time.perf_counter() - started)
        with self.open_kb(kb, create=True) as store:
            return run_ingest(
                store, paths, self.embedder, self.chunker(), self.settings.ingest,
                collection=collection, prune=prune, progress=progress, found=found,
            )

    def retriever(self, kb: str = "default") -> Retriever:
        """A retriever over ``kb``, kept open for later queries."""
        if kb not in self._retrievers:
            store = self.open_kb(kb)
            self._retrievers[kb] = Retriever(store, self.embedder, self.settings.retrieve,
                                             load_reranker=self.reranker)
        return self._retrievers[kb]

    def reranker(self) -> Reranker:
        """The reranker of the ``retrieve.rerank_model`` setting (loaded once, hash-checked),
        shared by every knowledge base's retriever."""
        if self._reranker is None:
            from appliance.generate import load_generator

            self._reranker = QuestionLikelihoodReranker(load_generator(
                self.settings, self.registry, self.settings.retrieve.rerank_model))
        return self._reranker

    def search(
        self,
        query: str,
        *,
        kb: str = "default",
        k: int | None = None,
        mode: str | None = None,
        collection: str | None = None,
        path_prefix: str | None = None,
        rerank: bool | None = None,
    ) -> SearchResult:
        """Search ``kb`` for ``query`` (``rerank``: default the ``retrieve.rerank`` setting)."""
        return self.retriever(kb).search(
            query, k=k, mode=mode, collection=collection, path_prefix=path_prefix,
            rerank=rerank,
        )

    def kb_stats(self, name: str) -> dict[str, Any]:
        """Documents, chunks, size and embedder of a knowledge base."""
        with self.open_kb(name) as store:
            return store.stats()

    def kb_check(self, name: str) -> list[str]:
        """Integrity problems of a knowledge base (empty when sound)."""
        with self.open_kb(name) as store:
            return store.check()

    def kb_remove(self, name: str) -> None:
        """Delete a knowledge base."""
        retriever = self._retrievers.pop(name, None)
        if retriever:
            retriever.close()
        remove_kb(self.settings, name)

    def kb_reembed(self, name: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild a knowledge base's vectors with the current embedder."""
        self._retrievers.pop(name, None)
        with self.open_kb(name) as store:
            return store.reembed(
                self.embedder, lambda row: embed_text(row.heading, row.text), progress
            )

    def close(self) -> None:
        """Close open knowledge bases."""
        for retriever in self._retrievers.values():
            try:
                retriever.close()
            except apsw.ThreadingViolationError:  # in use by another thread: it closes on exit
                continue
        self._retrievers.clear()
        if self._reranker is not None:
            self._reranker.close()
            self._reranker = None
