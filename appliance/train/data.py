"""Chat JSONL training data: validation with line numbers, counts, a report; no torch here.

One example per line: ``{"messages": [{"role": ..., "content": ...}, ...]}`` (other keys
of the line object are ignored). An example is valid when

- the line is a JSON object (``json``) with a ``messages`` list of objects, each with a
  string ``role`` and a string ``content`` (``schema``);
- every role is ``system``, ``user`` or ``assistant`` (``role``);
- an optional ``system`` message comes first, then ``user`` and ``assistant`` alternate,
  starting with ``user`` and ending with ``assistant`` (``order``);
- no assistant turn is empty or blank (``empty_assistant``);
- an assistant turn may carry ``"weight": 0`` (as in OpenAI's fine-tuning format) to be
  part of the context but not learned (worked examples in a prompt); at least one assistant
  turn per example must be learned (``schema``);
- rendered with the base model's chat template it fits ``max_len`` tokens (``too_long``;
  checked by :func:`check_lengths` once a tokenizer is loaded).

Blank lines are skipped. Every problem becomes an :class:`Issue` naming the line (1-based)
and the field (``messages[2].role``); :class:`DataReport` counts them by kind.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.errors import InputError
from appliance.files import read_bytes, unpaired_surrogate, write_lines_atomic
from appliance.train.errors import TrainingDataError

__all__ = [
    "ISSUE_KINDS",
    "ROLES",
    "ChatExample",
    "DataReport",
    "Issue",
    "check_lengths",
    "check_messages",
    "read_chat_jsonl",
    "split_examples",
    "validate_chat_jsonl",
    "write_chat_jsonl",
]

ROLES = ("system", "user", "assistant")
"""Roles a message may have."""

ISSUE_KINDS = ("json", "schema", "role", "order", "empty_assistant", "too_long")
"""Kinds of problems, in the order reports list them."""

KIND_LABELS = {
    "json": "broken JSON",
    "schema": "wrong shape",
    "role": "unknown role",
    "order": "wrong order",
    "empty_assistant": "empty assistant turn",
    "too_long": "over-long",
}

MAX_KEPT_ISSUES = 1000
"""Issues kept in a report (all are counted)."""

MAX_LINE_BYTES = 4 * 1024 * 1024
"""Longest line parsed: more than any example that fits the longest --max-len (131,072
tokens) in practice; a longer line is ``too_long`` without being parsed."""

MAX_CHARS_PER_TOKEN = 32
"""No real text averages more characters per token: an example with more than ``max_len``
times this many characters is over ``max_len`` tokens before any tokenizer is loaded."""


@dataclass(frozen=True)
class Issue:
    """One problem of one line."""

    line: int
    kind: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.field}" if self.field else "")
        return f"{where}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        """The issue as JSON-ready data."""
        return {"line": self.line, "kind": self.kind, "field": self.field,
                "message": self.message}


@dataclass(frozen=True)
class ChatExample:
    """A valid example and the line it came from."""

    line: int
    messages: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        """The line object as written to JSONL."""
        return {"messages": self.messages}


@dataclass
class DataReport:
    """What validating a chat JSONL file found."""

    path: str
    sha256: str = ""
    lines: int = 0
    """Non-blank lines (one example each)."""
    blank: int = 0
    examples: list[ChatExample] = field(default_factory=list)
    """The valid examples in file order."""
    issues: list[Issue] = field(default_factory=list)
    """Problems in line order (at most :data:`MAX_KEPT_ISSUES` kept)."""
    issue_counts: Counter[str] = field(default_factory=Counter)
    """Problems by kind (all of them, kept or not)."""
    invalid_lines: set[int] = field(default_factory=set)
    role_counts: Counter[str] = field(default_factory=Counter)
    """Messages by role over the valid examples."""
    token_lengths: list[int] = field(default_factory=list)
    """Tokens per valid example once :func:`check_lengths` ran."""

    @property
    def ok(self) -> bool:
        """True when there are valid examples and no problem at all."""
        return not self.invalid_lines and bool(self.examples)

    @property
    def invalid(self) -> int:
        """Lines with at least one problem."""
        return len(self.invalid_lines)

    def add(self, issue: Issue) -> None:
        """Record a problem."""
        self.issue_counts[issue.kind] += 1
        self.invalid_lines.add(issue.line)
        if len(self.issues) < MAX_KEPT_ISSUES:
            self.issues.append(issue)

    def counts(self) -> dict[str, int]:
        """Every count of the report, problems by kind included (zeros too)."""
        out = {
            "lines": self.lines,
            "blank": self.blank,
            "examples": len(self.examples),
            "invalid": self.invalid,
            "system": self.role_counts.get("system", 0),
            "user": self.role_counts.get("user", 0),
            "assistant": self.role_counts.get("assistant", 0),
        }
        for kind in ISSUE_KINDS:
            out[kind] = self.issue_counts.get(kind, 0)
        return out

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        data: dict[str, Any] = {
            "path": self.path,
            "sha256": self.sha256,
            "ok": self.ok,
            "counts": self.counts(),
            "issues": [i.to_json() for i in self.issues],
        }
        if self.token_lengths:
            data["tokens"] = {
                "total": sum(self.token_lengths),
                "max": max(self.token_lengths),
                "mean": round(sum(self.token_lengths) / len(self.token_lengths), 1),
            }
        return data

    def summary(self, max_issues: int = 10) -> str:
        """A few lines: the counts of problems, then the first ``max_issues`` of them."""
        if self.ok:
            return (f"{len(self.examples)} valid examples ({self.role_counts['assistant']} "
                    "assistant turns)")
        if not self.invalid_lines:
            return f"{self.path} holds no examples"
        kinds = ", ".join(
            f"{self.issue_counts[k]} {KIND_LABELS[k]}" for k in ISSUE_KINDS
            if self.issue_counts.get(k)
        )
        lines = [f"{self.invalid} of {self.lines} examples are invalid ({kinds})"]
        lines += [f"  {issue}" for issue in self.issues[:max_issues]]
        more = sum(self.issue_counts.values()) - min(max_issues, len(self.issues))
        if more > 0:
            lines.append(f"  … and {more} more")
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """Raise TrainingDataError (with this report) unless every line is valid."""
        if self.ok:
            return
        if not self.invalid_lines:
            raise TrainingDataError(
                f"{self.path} holds no examples; give a chat JSONL file with one "
                '{"messages": [...]} object per line.', self)
        first = self.issues[0] if self.issues else None
        kinds = ", ".join(
            f"{self.issue_counts[k]} {KIND_LABELS[k]}" for k in ISSUE_KINDS
            if self.issue_counts.get(k)
        )
        raise TrainingDataError(
            f"{self.invalid} of {self.lines} examples in {self.path} are invalid ({kinds}); "
            f"first: {first}. Fix those lines (`appliance train-data check` lists them all)"
            " and run again.", self)


# -- structure -------------------------------------------------------------------------------


def check_messages(obj: Any, line: int) -> list[Issue]:
    """Problems of one parsed line object (empty when it is a valid example)."""
    if not isinstance(obj, dict):
        return [Issue(line, "json", "", f"expected a JSON object, got {_kind(obj)}")]
    messages = obj.get("messages")
    if messages is None:
        return [Issue(line, "schema", "messages", "missing")]
    if not isinstance(messages, list):
        return [Issue(line, "schema", "messages", f"expected a list, got {_kind(messages)}")]
    if not messages:
        return [Issue(line, "schema", "messages", "empty list")]
    issues: list[Issue] = []
    roles: list[str | None] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            issues.append(Issue(line, "schema", where, f"expected an object, got {_kind(msg)}"))
            roles.append(None)
            continue
        role, content = msg.get("role"), msg.get("content")
        if not isinstance(role, str):
            issues.append(Issue(line, "schema", f"{where}.role",
                                "missing" if role is None else f"expected a string, got "
                                f"{_kind(role)}"))
            roles.append(None)
        elif role not in ROLES:
            issues.append(Issue(line, "role", f"{where}.role",
                                f"unknown role {role!r} (use system, user or assistant)"))
            roles.append(None)
        else:
            roles.append(role)
        weight = msg.get("weight", 1)
        if "weight" in msg and (role != "assistant" or weight not in (0, 1)
                                or isinstance(weight, bool)):
            issues.append(Issue(line, "schema", f"{where}.weight",
                                "only assistant turns take a weight, and it is 0 or 1"))
        if not isinstance(content, str):
            issues.append(Issue(line, "schema", f"{where}.content",
                                "missing" if content is None else f"expected a string, got "
                                f"{_kind(content)}"))
        elif (bad := unpaired_surrogate(content)) is not None:
            issues.append(Issue(line, "schema", f"{where}.content",
                                f"holds an unpaired surrogate ({bad}), which is not text; "
                                "fix the escape"))
        elif role == "assistant" and not content.strip():
            issues.append(Issue(line, "empty_assistant", f"{where}.content",
                                "the assistant turn is empty"))
    order = _order_issue(roles, line)
    if order is not None:
        issues.append(order)
    elif not issues and all(m.get("weight", 1) == 0 for m in messages
                            if m.get("role") == "assistant"):
        issues.append(Issue(line, "schema", "messages",
                            "every assistant turn has weight 0: nothing to learn"))
    return issues


def _order_issue(roles: Sequence[str | None], line: int) -> Issue | None:
    """The first violation of [system] user assistant (user assistant)*, if any.

    Messages whose role is already reported as unknown or missing are not judged again.
    """
    expected = "user"
    for i, role in enumerate(roles):
        where = f"messages[{i}].role"
        if role is None:
            return None
        if role == "system":
            if i != 0:
                return Issue(line, "order", where, "a system message may only come first")
            continue
        if role != expected:
            return Issue(line, "order", where,
                         f"expected {expected} here, got {role} (turns alternate user, "
                         "assistant after an optional first system message)")
        expected = "assistant" if role == "user" else "user"
    if roles and roles[-1] != "assistant":
        return Issue(line, "order", f"messages[{len(roles) - 1}].role",
                     "the last message must be the assistant's (the turn to learn)")
    return None


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                     type(value).__name__)


def _message(m: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m["role"], "content": m["content"]}
    if "weight" in m:
        out["weight"] = m["weight"]
    return out


def validate_chat_jsonl(path: Path | str, *, max_chars: int | None = None,
                        max_len: int | None = None) -> DataReport:
    """Read and check a chat JSONL file (structure only; see :func:`check_lengths`).

    ``max_chars``, when given, flags examples whose text is longer as ``too_long`` without
    a tokenizer (a cheap early check); so does ``max_len`` (tokens) for examples with more
    than ``max_len`` * :data:`MAX_CHARS_PER_TOKEN` characters, which no tokenizer fits in
    ``max_len`` tokens. A line over :data:`MAX_LINE_BYTES` is ``too_long`` unparsed.
    Raises InputError for a file :func:`appliance.files.read_bytes` refuses (missing, not
    a regular file, over its size limit, unreadable).
    """
    path = Path(path)
    raw = read_bytes(path, "a chat JSONL file")
    report = DataReport(path=str(path), sha256=hashlib.sha256(raw).hexdigest())
    for number, line_bytes in enumerate(raw.split(b"\n"), start=1):
        if number == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
            line_bytes = line_bytes[3:]
        if not line_bytes.strip():
            if line_bytes or number < raw.count(b"\n") + 1:
                report.blank += 1
            continue
        report.lines += 1
        if len(line_bytes) > MAX_LINE_BYTES:
            report.add(Issue(number, "too_long", "", f"{len(line_bytes) / 2**20:.1f} MiB, over "
                             f"the limit of {MAX_LINE_BYTES // 2**20} MiB for one example"))
            continue
        try:
            text = line_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            report.add(Issue(number, "json", "", f"not UTF-8 (byte {exc.start + 1})"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.add(Issue(number, "json", "", f"broken JSON: {exc.msg} at column "
                             f"{exc.colno}"))
            continue
        except RecursionError:
            report.add(Issue(number, "json", "", "the JSON nests too deeply to read"))
            continue
        issues = check_messages(obj, number)
        if not issues and (max_chars is not None or max_len is not None):
            chars = sum(len(m["content"]) for m in obj["messages"])
            if max_chars is not None and chars > max_chars:
                issues.append(Issue(number, "too_long", "messages",
                                    f"{chars} characters, more than {max_chars}"))
            elif max_len is not None and chars > max_len * MAX_CHARS_PER_TOKEN:
                issues.append(Issue(number, "too_long", "messages",
                                    f"{chars:,} characters, far more than --max-len {max_len} "
                                    "tokens can hold"))
        for issue in issues:
            report.add(issue)
        if not issues:
            messages = [_message(m) for m in obj["messages"]]
            report.examples.append(ChatExample(number, messages))
            report.role_counts.update(m["role"] for m in messages)
    return report


def check_lengths(
    report: DataReport,
    count_tokens: Callable[[list[dict[str, Any]]], int],
    max_len: int,
) -> DataReport:
    """Count each valid example's tokens; flag those over ``max_len`` as ``too_long``.

    ``count_tokens`` renders the messages with the model's chat template and counts the
    tokens. Flagged examples leave ``report.examples``.
    """
    kept: list[ChatExample] = []
    lengths: list[int] = []
    for example in report.examples:
        n = count_tokens(example.messages)
        if n > max_len:
            report.add(Issue(example.line, "too_long", "messages",
                             f"{n} tokens with the chat template, more than --max-len "
                             f"{max_len}"))
            for m in example.messages:
                report.role_counts[m["role"]] -= 1
            continue
        kept.append(example)
        lengths.append(n)
    report.examples = kept
    report.token_lengths = lengths
    report.issues.sort(key=lambda i: i.line)
    return report


def read_chat_jsonl(path: Path | str) -> list[ChatExample]:
    """The examples of a file that must be entirely valid (else TrainingDataError)."""
    report = validate_chat_jsonl(path)
    report.raise_if_invalid()
    return report.examples


def write_chat_jsonl(examples: Iterable[ChatExample | dict[str, Any]], path: Path | str) -> int:
    """Write examples as chat JSONL atomically (temp file + rename); returns the count.

    An OSError (no room, no permission) becomes an InputError and leaves ``path`` as it was.
    """
    return write_lines_atomic(path, (
        json.dumps(ex.to_json() if isinstance(ex, ChatExample) else ex, ensure_ascii=False)
        for ex in examples))


def split_examples(
    examples: Sequence[ChatExample], val_split: float, seed: int = 0
) -> tuple[list[ChatExample], list[ChatExample]]:
    """(train, validation): a seeded shuffle, the first ``round(n * val_split)`` validate.

    At least one example validates when ``val_split`` > 0 and there are two or more; the
    rest keep the file's order.
    """
    if not 0.0 <= val_split < 1.0:
        raise InputError(f"--val-split must lie in [0, 1), not {val_split}.")
    n = len(examples)
    n_val = round(n * val_split)
    if val_split > 0 and n >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, n - 1) if n else 0
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val
