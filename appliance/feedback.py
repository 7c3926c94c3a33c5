"""Feedback on answers, kept durably in the data directory and exported as training data.

Each rating is one JSON line appended to ``feedback.jsonl`` in the data directory (beside
the ``kb/`` folder of knowledge bases) and fsync'd before :meth:`FeedbackStore.add`
returns, so a crash never loses a saved rating; a line torn by a crash mid-write is skipped
when reading. Rating the same answer again appends a new line; the latest one counts.

:meth:`FeedbackStore.export_chat_jsonl` writes the chat JSONL that ``appliance train``
reads: one ``{"messages": [system, user, assistant]}`` per rated answer, built with the
pipeline's own prompts (numbered sources for ``rag``/``hybrid`` answers), the assistant
turn being the corrected answer when one was typed, else the answer when it was marked
good. Answers marked bad without a correction teach nothing and are skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from appliance.errors import InputError
from appliance.generate import RETRIEVAL_MODES, build_base_prompt, build_rag_prompt
from appliance.types import Answer, Hit

__all__ = ["ExportReport", "FeedbackRecord", "FeedbackSource", "FeedbackStore", "feedback_path"]

Rating = Literal["good", "bad"]
FILE_NAME = "feedback.jsonl"


def feedback_path(home: Path) -> Path:
    """Where the feedback of a data directory lives."""
    return home / FILE_NAME


@dataclass(frozen=True)
class FeedbackSource:
    """A numbered source the model saw, kept so the prompt can be rebuilt for training."""

    n: int
    chunk_id: int
    path: str
    heading: str
    text: str


@dataclass(frozen=True)
class FeedbackRecord:
    """One rating of one answer."""

    answer_key: str
    """Identifies the rated answer (one question asked once); the latest rating wins."""
    rating: Rating
    question: str
    answer: str
    mode: str
    model: str
    kb: str
    correction: str = ""
    abstained: bool = False
    sources: list[FeedbackSource] = field(default_factory=list)
    created: str = ""

    @classmethod
    def from_answer(
        cls, answer: Answer, *, rating: Rating, kb: str, answer_key: str | None = None,
        correction: str = "", sources: Sequence[Hit] | Sequence[FeedbackSource] = (),
    ) -> FeedbackRecord:
        """A record for a pipeline ``Answer``; ``sources`` are the numbered sources the
        model saw (the pipeline's hits, in rank order)."""
        kept: list[FeedbackSource] = []
        for i, s in enumerate(sources, start=1):
            if isinstance(s, Hit):
                kept.append(FeedbackSource(i, s.chunk_id, s.path, s.heading, s.text))
            elif isinstance(s, FeedbackSource):
                kept.append(s)
        return cls(
            answer_key=answer_key or uuid.uuid4().hex, rating=rating, question=answer.question,
            answer=answer.answer, mode=answer.mode, model=answer.model, kb=kb,
            correction=correction.strip(), abstained=answer.abstained, sources=kept,
        )

    def to_json(self) -> dict[str, Any]:
        """The record as stored (one JSON line)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeedbackRecord:
        """Read a stored record (unknown keys are ignored)."""
        sources = [FeedbackSource(**s) for s in data.get("sources", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["sources"] = sources
        return cls(**known)

    def messages(self) -> list[dict[str, str]] | None:
        """The chat example this rating teaches, or None when it teaches nothing."""
        target = self.correction or (self.answer if self.rating == "good" else "")
        if not target.strip():
            return None
        if self.mode in RETRIEVAL_MODES:
            numbers = [s.n for s in self.sources]
            if numbers != list(range(1, len(numbers) + 1)):
                return None  # the numbered sources cannot be rebuilt faithfully
            hits = [Hit(chunk_id=s.chunk_id, path=s.path, title="", heading=s.heading,
                        text=s.text, score=0.0) for s in self.sources]
            # A zero token counter keeps every source whole: the text the model saw.
            prompt = build_rag_prompt(self.question, hits, count_tokens=lambda _t: 0,
                                      n_ctx=1 << 30, max_tokens=0)
        else:
            prompt = build_base_prompt(self.question)
        # The system message and the question's own user turn (a prompt's few-shot turns,
        # if it has any, are the same for every example and are not repeated).
        system = [m for m in prompt.messages[:1] if m["role"] == "system"]
        user = [m for m in prompt.messages if m["role"] == "user"][-1:]
        return [*system, *user, {"role": "assistant", "content": target.strip()}]


@dataclass
class ExportReport:
    """What an export wrote and what it left out."""

    written: int = 0
    skipped_bad: int = 0
    """Marked bad without a corrected answer."""
    skipped_sources: int = 0
    """Retrieval answers whose numbered sources were not recorded."""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FeedbackStore:
    """The append-only feedback file of one data directory (safe across threads)."""

    def __init__(self, home: Path) -> None:
        self.path = feedback_path(home)
        self._lock = threading.Lock()

    def add(self, record: FeedbackRecord) -> FeedbackRecord:
        """Append ``record`` (stamped with the time) and fsync it; returns what was stored."""
        if not record.created:
            created = datetime.now(UTC).isoformat(timespec="seconds")
            record = FeedbackRecord.from_json({**record.to_json(), "created": created})
        line = json.dumps(record.to_json(), ensure_ascii=False) + "\n"
        with self._lock:
            new = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            if new:
                _fsync_dir(self.path.parent)
        return record

    def __iter__(self) -> Iterator[FeedbackRecord]:
        """Every stored rating in order (a torn or foreign line is skipped)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    data = json.loads(line)
                    yield FeedbackRecord.from_json(data)
                except (ValueError, TypeError, KeyError):
                    continue

    def latest(self, kb: str | None = None) -> list[FeedbackRecord]:
        """The latest rating of each answer, in the order answers were first rated."""
        by_key: dict[str, FeedbackRecord] = {}
        for record in self:
            if kb is None or record.kb == kb:
                by_key[record.answer_key] = record
        return list(by_key.values())

    def export_chat_jsonl(self, path: Path, *, kb: str | None = None) -> ExportReport:
        """Write the chat JSONL of the latest ratings to ``path`` (atomically)."""
        report = ExportReport(path=str(path))
        lines: list[str] = []
        for record in self.latest(kb):
            if record.rating == "bad" and not record.correction.strip():
                report.skipped_bad += 1
                continue
            messages = record.messages()
            if messages is None:
                report.skipped_sources += 1
                continue
            lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
            report.written += 1
        path = Path(path)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise InputError(f"Cannot write {path}: {exc.strerror or exc}; "
                             "choose a writable file.") from exc
        _fsync_dir(path.parent)
        return report
