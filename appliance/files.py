"""The user's files that commands read and write.

Inputs are read as UTF-8 text with one sentence naming the line of a bad byte. Outputs
(``batch``, ``feedback export``, ``train-data grounded``) are checked before any work: never
one of the command's inputs, a symlink, folder or device, or (without ``--force``) an
existing file; they are replaced atomically, so a failed write leaves the old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from appliance.errors import InputError

__all__ = ["check_output_file", "fsync_dir", "read_text", "write_lines_atomic"]


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of ``path`` (a leading BOM dropped); InputError naming the problem
    and, for a byte that is not UTF-8, its line. ``what`` completes "give ..." (e.g. "a
    question file")."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(f"{path} does not exist; give {what}.") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder; give {what}.") from None
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise InputError(f"{path} is not UTF-8 text (line {line}); save it as UTF-8.") from None
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}.") from None


def check_output_file(path: Path | str, *, force: bool = False,
                      inputs: Sequence[Path | str] = ()) -> None:
    """Raise InputError unless ``path`` may be written as a new output file: not one of
    ``inputs``, not a symlink, folder or device, below a folder (not a file), and, unless
    ``force``, not an existing file."""
    path = Path(path)
    for given in inputs:
        same = os.path.abspath(path) == os.path.abspath(given)
        with contextlib.suppress(OSError):
            same = same or os.path.samefile(path, given)
        if same:
            raise InputError(f"{path} is an input of this command; choose another output file.")
    if not os.path.lexists(path):
        for parent in path.absolute().parents:
            if os.path.lexists(parent):
                if not parent.is_dir():
                    raise InputError(f"Cannot write {path}: {parent} is a file, not a folder; "
                                     "choose another output file.")
                return
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
