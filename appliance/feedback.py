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

import json
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from appliance.errors import InputError
from appliance.files import check_output_file, fsync_dir, same_file, write_lines_atomic
from appliance.generate import RETRIEVAL_MODES, build_base_prompt, build_rag_prompt
from appliance.types import Answer, Hit

__all__ = ["ExportReport", "FeedbackRecord", "FeedbackSource", "FeedbackStore", "feedback_path"]

Rating = Literal["good", "bad"]
FILE_NAME = "feedback.jsonl"

_REQUIRED_TEXT = ("answer_key", "rating", "question", "answer", "mode", "model", "kb")
_OPTIONAL_FIELDS: dict[str, type] = {"correction": str, "abstained": bool, "created": str}
_SOURCE_FIELDS: dict[str, type] = {"n": int, "chunk_id": int, "path": str, "heading": str,
                                   "text": str}


def _is(value: Any, kind: type) -> bool:
    """``isinstance`` where a JSON ``true`` is no number."""
    if kind is int and isinstance(value, bool):
        return False
    return isinstance(value, kind)


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
    def from_json(cls, data: Any) -> FeedbackRecord:
        """Read a stored record (unknown keys are ignored).

        Raises ValueError naming the first field that is missing or of the wrong type, so
        a foreign line (another program's JSON, a hand edit) is never taken for a rating.
        """
        if not isinstance(data, dict):
            raise ValueError(f"a record is a JSON object, not {type(data).__name__}")
        for name in _REQUIRED_TEXT:
            if not isinstance(data.get(name), str):
                raise ValueError(f"field '{name}' must be text")
        if data["rating"] not in ("good", "bad"):
            raise ValueError("field 'rating' must be 'good' or 'bad'")
        for name, kind in _OPTIONAL_FIELDS.items():
            if name in data and not _is(data[name], kind):
                raise ValueError(f"field '{name}' must be {kind.__name__}")
        raw_sources = data.get("sources", [])
        if not isinstance(raw_sources, list):
            raise ValueError("field 'sources' must be a list")
        sources = []
        for raw in raw_sources:
            if not isinstance(raw, dict) or any(
                not _is(raw.get(name), kind) for name, kind in _SOURCE_FIELDS.items()
            ):
                raise ValueError("a source must have n, chunk_id (numbers), path, heading and "
                                 "text (text)")
            sources.append(FeedbackSource(**{name: raw[name] for name in _SOURCE_FIELDS}))
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
    skipped_lines: int = 0
    """Lines of the feedback file that are not ratings (torn by a crash, or foreign)."""
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return asdict(self)


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
                fsync_dir(self.path.parent)
        return record

    def __iter__(self) -> Iterator[FeedbackRecord]:
        """Every stored rating in order (a torn or foreign line is skipped)."""
        return (record for record in self._scan() if record is not None)

    def _scan(self) -> Iterator[FeedbackRecord | None]:
        """Each non-blank line's rating, or None where the line is not one."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    yield FeedbackRecord.from_json(json.loads(line))
                except (ValueError, TypeError, KeyError, RecursionError):
                    yield None

    def latest(self, kb: str | None = None) -> list[FeedbackRecord]:
        """The latest rating of each answer, in the order answers were first rated."""
        return _latest(self, kb)

    def export_chat_jsonl(self, path: Path, *, kb: str | None = None,
                          force: bool = False) -> ExportReport:
        """Write the chat JSONL of the latest ratings to ``path`` (atomically).

        Refused (InputError, nothing written) when ``path`` is the feedback file itself,
        is not a regular file (a symlink, folder or device), or exists and ``force`` is
        not given. The file is created with the usual permissions (0666 less the umask),
        renamed into place only once every line is written.
        """
        path = Path(path)
        _check_export_target(path, self.path, force)
        report = ExportReport(path=str(path))
        records: list[FeedbackRecord] = []
        for record in self._scan():
            if record is None:
                report.skipped_lines += 1
            else:
                records.append(record)
        lines: list[str] = []
        for record in _latest(records, kb):
            if record.rating == "bad" and not record.correction.strip():
                report.skipped_bad += 1
                continue
            messages = record.messages()
            if messages is None:
                report.skipped_sources += 1
                continue
            lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
            report.written += 1
        write_lines_atomic(path, lines)
        return report


def _latest(records: Iterable[FeedbackRecord], kb: str | None) -> list[FeedbackRecord]:
    by_key: dict[str, FeedbackRecord] = {}
    for record in records:
        if kb is None or record.kb == kb:
            by_key[record.answer_key] = record
    return list(by_key.values())


def _check_export_target(path: Path, store: Path, force: bool) -> None:
    """Refuse to export over the feedback file itself (named so), then as any output."""
    if same_file(path, store):
        raise InputError(f"{path} is the feedback file itself; choose another output file.")
    check_output_file(path, force=force)
