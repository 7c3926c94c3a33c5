"""The demo corpus: CPython's reference topics (``pydoc_data.topics``), available offline.

Each of the 79 topics is written as a reStructuredText file (their headings use rst
adornments), so the demo exercises the real loaders, chunker, embedder and store.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_QUESTIONS", "write_pydoc_corpus"]

SAMPLE_QUESTIONS = [
    "How does the with statement call __exit__?",
    "What does the nonlocal statement do?",
    "Which exception does a failing assert statement raise?",
    "What is the capital of Australia?",
    "What does the pass statement do?",
]
"""Answerable from the corpus, except the fourth, which shows the answer admitting it."""


def write_pydoc_corpus(target: Path) -> int:
    """Write every pydoc topic to ``target/<topic>.rst``; return how many files changed.

    Files whose content is already identical are left alone, so their mtime (and the
    knowledge base's unchanged-file shortcut) survives repeated demo runs.
    """
    from pydoc_data.topics import topics

    target.mkdir(parents=True, exist_ok=True)
    changed = 0
    for name, text in sorted(topics.items()):
        path = target / f"{name}.rst"
        data = text.rstrip() + "\n"
        if path.is_file() and path.read_text(encoding="utf-8") == data:
            continue
        path.write_text(data, encoding="utf-8")
        changed += 1
    return changed
