"""The user's files that commands read and write.

Inputs (question files, eval sets, SQuAD and BEIR files, training data) must be regular
files of at most :data:`MAX_INPUT_BYTES`, checked before they are opened (a pipe would block,
a device never end, a sparse file fill the memory); text is read as UTF-8 with one sentence
naming the line of a bad byte. Outputs
(``batch``, ``feedback export``, ``train-data grounded``) are checked before any work: never
one of the command's inputs, a symlink, folder or device, or (without ``--force``) an
existing file; they are replaced atomically, so a failed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from appliance.errors import ApplianceError, InputError

__all__ = [
    "MAX_INPUT_BYTES",
    "blocked_by",
    "check_input_file",
    "check_output_file",
    "format_bytes",
    "fsync_dir",
    "is_new",
    "read_bytes",
    "read_text",
    "require_utf8",
    "same_file",
    "surrogate_in",
    "unpaired_surrogate",
    "write_atomic",
    "write_lines_atomic",
]

MAX_INPUT_BYTES = 256 * 1024 * 1024
"""Largest input file read (each is read whole; SQuAD 2.0's training file is 40 MB)."""

_SURROGATE = re.compile("[\ud800-\udfff]")


def format_bytes(n: float) -> str:
    """``n`` bytes in 1024-based units for a message or a table: ``25.0 MB``, ``5.1 GB``."""
    units = ("bytes", "KB", "MB", "GB", "TB")
    value = float(n)
    i = 0
    while value >= 1024 and i < len(units) - 1:
        value /= 1024
        i += 1
    if i == 0:
        return f"{int(n)} bytes"
    return f"{value:.1f} {units[i]}" if value < 100 else f"{value:.0f} {units[i]}"


def check_input_file(path: Path, what: str, max_bytes: int | None = None) -> None:
    """InputError, before anything is opened, unless ``path`` is a regular file of at most
    ``max_bytes`` (default :data:`MAX_INPUT_BYTES`). ``what`` completes "give ..." (e.g. "a
    question file")."""
    max_bytes = MAX_INPUT_BYTES if max_bytes is None else max_bytes
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give {what}.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}; give {what}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{path} is a folder; give {what}.")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{path} is not a regular file (a pipe or a device?); give {what}.")
    if info.st_size > max_bytes:
        raise InputError(f"{path} is {info.st_size:,} bytes, over the limit of {max_bytes:,} "
                         f"for {what}; split it or take a sample of it.")


def read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path`` once :func:`check_input_file` passed; InputError otherwise."""
    check_input_file(path, what)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}; give {what}.") from None


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of :func:`read_bytes` (a leading BOM dropped); InputError naming the
    problem and, for a byte that is not UTF-8, its line."""
    data = read_bytes(path, what)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(f"{path} is not UTF-8 text (line {line}); save it as UTF-8.") from None


def unpaired_surrogate(text: str) -> str | None:
    """The first unpaired surrogate of ``text`` as a ``\\udXXX`` escape, else None.

    JSON may spell one (``"\\ud800"``); Python accepts it in a string, but it is not
    Unicode text and cannot be written as UTF-8, so an input holding one is refused.
    """
    found = _SURROGATE.search(text)
    return None if found is None else f"\\u{ord(found.group()):04x}"


def require_utf8(text: str, what: str) -> None:
    """InputError when ``text`` (typed or passed as an argument: "the question", "the
    query") holds a byte that is not UTF-8."""
    bad = unpaired_surrogate(text)
    if bad is not None:
        raise InputError(f"The {what} holds {bad}, a byte that is not UTF-8; set the terminal "
                         "(or the script) to UTF-8 and type it again.")


def surrogate_in(value: Any) -> tuple[str, str] | None:
    """(top-level key, escape) of the first unpaired surrogate in any key or string of the
    parsed JSON ``value`` (the key is ``""`` when ``value`` is not an object); else None."""
    tops = list(value.items()) if isinstance(value, dict) else [("", value)]
    for key, top in tops:
        stack: list[Any] = [key, top]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                bad = unpaired_surrogate(item)
                if bad is not None:
                    return key, bad
            elif isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


def same_file(path: Path | str, other: Path | str) -> bool:
    """Whether the two paths name one file (the same path, or a link or hard link to it)."""
    if os.path.abspath(path) == os.path.abspath(other):
        return True
    try:
        return os.path.samefile(path, other)
    except OSError:
        return False


def blocked_by(path: Path | str) -> Path | None:
    """For a ``path`` that does not exist yet: its nearest existing ancestor when that is
    not a folder (so ``path`` cannot be created), else None."""
    for parent in Path(path).absolute().parents:
        if os.path.lexists(parent):
            return None if parent.is_dir() else parent
    return None


def is_new(path: Path | str, fix: str, error: type[ApplianceError] = InputError) -> bool:
    """Whether ``path`` does not exist yet; ``error`` ("Cannot create PATH: ANCESTOR is a
    file, not a folder; ``fix``") when it does not and cannot be created."""
    if os.path.lexists(path):
        return False
    blocker = blocked_by(path)
    if blocker is not None:
        raise error(f"Cannot create {path}: {blocker} is a file, not a folder; {fix}")
    return True


def check_output_file(path: Path | str, *, force: bool = False,
                      inputs: Sequence[Path | str] = ()) -> None:
    """Raise InputError unless ``path`` may be written as a new output file: not one of
    ``inputs``, not a symlink, folder or device, below a folder (not a file), and, unless
    ``force``, not an existing file."""
    path = Path(path)
    if any(same_file(path, given) for given in inputs):
        raise InputError(f"{path} is an input of this command; choose another output file.")
    if is_new(path, "choose another output file."):
        return
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise InputError(f"{path} is a symlink, folder or device, not a regular file; choose "
                         "another output file.")
    if not force:
        raise InputError(f"{path} already exists; choose another output file, or add --force "
                         "to replace it.")


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (best effort)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path | str, data: str | bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) all at once: written to a temporary
    file beside it, synced, then renamed over it, so a crash leaves the old file or the
    new one, never part of either.

    ``mode`` sets the permissions from the file's creation on (a private key is never
    readable by others, even briefly); by default 0666 less the umask. Missing parent
    folders are made. An OSError propagates, and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)  # the umask may have taken bits off at creation
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_lines_atomic(path: Path | str, lines: Iterable[str]) -> int:
    """Write ``lines`` (each followed by a newline) to ``path`` through a temporary file
    renamed into place once it is complete and synced; return the number of lines.

    The file gets the usual permissions (0666 less the umask). An OSError (no room, no
    permission) becomes InputError and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    n = 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise InputError(f"Cannot write {path}: {exc.strerror or exc}; choose a writable "
                         "file.") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return n
