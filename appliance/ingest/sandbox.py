"""Run document loaders in a child process with a time limit and a memory limit.

Parsing untrusted files can hang, eat memory or crash the interpreter. ``LoaderSandbox``
keeps one worker process and reuses it from file to file; a worker that overruns
``ingest.max_seconds`` is killed, one that dies is replaced, and either way the file gets a
one-line :class:`DocumentError` and the next file gets a fresh worker. The worker's address
space is capped with ``RLIMIT_AS`` at ``ingest.max_memory_bytes``.

The worker is a fresh interpreter (``python -c``, in its own session so a terminal's Ctrl-C
goes to the parent only), not a multiprocessing child: it never re-imports the caller's
main module and needs no ``if __name__ == "__main__"`` guard from it, and it shares nothing
with a possibly threaded parent. It talks over two private pipes with length-prefixed
pickles; its stdin and stdout are not used for that, so a parser writing to stdout cannot
corrupt the channel. Results come back pickled from our own child only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

from appliance.config import IngestSettings
from appliance.errors import DocumentError
from appliance.files import format_bytes
from appliance.ingest.loaders import load_document
from appliance.types import LoadedDocument

__all__ = ["LoaderFn", "LoaderSandbox"]

LoaderFn = Callable[[Path, IngestSettings], LoadedDocument]

# Imported by the worker before it reports ready, so the first file's time limit does not
# pay for them.
_PRELOAD = ("lxml.html", "pypdf", "docx", "markdown_it")
_START_SECONDS = 60.0  # a worker that is not ready by then is reported as broken
_STOP_SECONDS = 1.0
_BOOT = (
    "import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
    "from appliance.ingest.sandbox import _worker_entry; _worker_entry()"
)


def _memory_reason(limit: int) -> str:
    return f"needs more than {format_bytes(limit)} of memory (ingest.max_memory_bytes)"


def _time_reason(seconds: float) -> str:
    return f"took longer than {seconds:g} s (ingest.max_seconds)"


def _signal_text(number: int) -> str:
    try:
        return f"signal {number}, {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


def _exit_reason(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"the parser crashed ({_signal_text(-returncode)})"
    return f"the parser exited unexpectedly (status {returncode})"


# -- the worker side -----------------------------------------------------------------------


def _limit_resources(memory: int) -> None:
    try:
        import resource
    except ImportError:  # not POSIX: nothing to set
        return
    for which, value in ((resource.RLIMIT_AS, memory), (resource.RLIMIT_CORE, 0)):
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                value = min(value, hard)
            resource.setrlimit(which, (value, hard))
        except (OSError, ValueError):
            pass


def _run_one(loader: LoaderFn, request: str, settings: IngestSettings) -> tuple[str, Any]:
    try:
        return ("ok", loader(Path(request), settings))
    except DocumentError as exc:
        return ("error", exc.message)
    except MemoryError:
        pass  # leave the except block first, so its frames (and their memory) are freed
    except RecursionError:
        return ("error", "document structure nested too deeply")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:120]
        return ("error", f"unexpected {type(exc).__name__} while reading: {first}".rstrip(": "))
    return ("memory", None)


def _worker_entry() -> None:
    """Main of the worker interpreter (see ``_BOOT``): serve load requests until EOF."""
    # Our channel is what the parent passed as stdin/stdout; move it to private fds and
    # point fd 0 at /dev/null and fd 1 at stderr, so nothing a parser prints reaches it.
    conn_in = Connection(os.dup(0), writable=False)
    conn_out = Connection(os.dup(1), readable=False)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    try:
        _, settings, loader, quiet = conn_in.recv()
    except (EOFError, OSError):
        return
    if quiet:  # parser chatter would garble a terminal UI
        logging.getLogger("pypdf").setLevel(logging.CRITICAL + 1)
        warnings.simplefilter("ignore")
    for module in _PRELOAD:
        with contextlib.suppress(ImportError):
            __import__(module)
    _limit_resources(settings.max_memory_bytes)
    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            request = conn_in.recv()
        except (EOFError, OSError):
            return
        if request is None:
            return
        reply = _run_one(loader, request, settings)
        try:
            conn_out.send(reply)
        except MemoryError:
            conn_out.send(("memory", None))
        except OSError:
            return


# -- the parent side -----------------------------------------------------------------------


class _Worker:
    """One worker interpreter and the two ends of our pipes to it."""

    def __init__(self, settings: IngestSettings, loader: LoaderFn, quiet: bool) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _BOOT, json.dumps([os.path.abspath(p) for p in sys.path])],
                stdin=to_child_r,
                stdout=from_child_w,
                stderr=subprocess.DEVNULL if quiet else None,
                close_fds=True,
                start_new_session=True,
            )
        except BaseException:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)  # so a dead worker reads as EOF here
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        with contextlib.suppress(OSError):  # a worker that died at once is reported by _start
            self.send_conn.send(("init", settings, loader, quiet))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def returncode(self) -> int | None:
        """Exit status once the worker is gone (waits a moment for it); None if it lives."""
        try:
            return self.process.wait(_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, graceful: bool) -> None:
        if graceful and self.alive():
            with contextlib.suppress(OSError, ValueError):
                self.send_conn.send(None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_SECONDS)
        if self.alive():
            with contextlib.suppress(OSError):
                self.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(_STOP_SECONDS)
        self.send_conn.close()
        self.recv_conn.close()


class LoaderSandbox:
    """Loads documents in a child process under ``settings.max_seconds`` and ``max_memory_bytes``.

    Use as a context manager (or call :meth:`close`). ``load`` raises :class:`DocumentError`
    for unreadable files, files that take too long or need too much memory, and parser
    crashes. ``in_process=True`` calls the loader directly (no time or memory limit; a
    MemoryError is still reported as a DocumentError, other unexpected exceptions
    propagate), for tests and debugging. ``loader`` replaces :func:`load_document`; it must
    be picklable by reference (a module-level function importable from ``sys.path``).
    With ``quiet`` (the default) the worker's stderr goes to /dev/null. One load at a time:
    calls from several threads are serialised.
    """

    def __init__(
        self,
        settings: IngestSettings,
        *,
        in_process: bool = False,
        loader: LoaderFn | None = None,
        quiet: bool = True,
    ) -> None:
        self.settings = settings
        self.in_process = in_process
        self._loader: LoaderFn = loader or load_document
        self._quiet = quiet
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self.workers_started = 0

    def __enter__(self) -> LoaderSandbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def worker_pid(self) -> int | None:
        """Process id of the current worker, if one is running."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive() else None

    def close(self) -> None:
        """Stop the worker (idempotent; a later ``load`` starts a new one)."""
        with self._lock:
            self._retire(graceful=True)

    def load(self, path: Path) -> LoadedDocument:
        """Load ``path`` in the worker; raise DocumentError with a one-line reason on failure."""
        if self.in_process:
            return self._load_here(Path(path))
        with self._lock:
            return self._load_in_worker(os.path.abspath(path))

    # -- internals ----------------------------------------------------------------------

    def _load_here(self, path: Path) -> LoadedDocument:
        try:
            return self._loader(path, self.settings)
        except MemoryError:
            pass
        except RecursionError:
            raise DocumentError("document structure nested too deeply") from None
        raise DocumentError(_memory_reason(self.settings.max_memory_bytes))

    def _retire(self, graceful: bool) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop(graceful)

    def _start(self) -> _Worker:
        try:
            worker = _Worker(self.settings, self._loader, self._quiet)
        except OSError as exc:
            raise DocumentError(f"the parser process could not start ({exc})") from None
        self.workers_started += 1
        message: Any = None
        if worker.recv_conn.poll(_START_SECONDS):
            with contextlib.suppress(EOFError, OSError):
                message = worker.recv_conn.recv()
        if isinstance(message, tuple) and message and message[0] == "ready":
            return worker
        code = worker.returncode()
        worker.stop(graceful=False)
        if code is None:
            detail = f"no answer in {_START_SECONDS:g} s"
        elif code < 0:
            detail = _signal_text(-code)
        else:
            detail = f"status {code}; run with quiet=False to see why"
        raise DocumentError(f"the parser process could not start ({detail})")

    def _ensure_worker(self) -> _Worker:
        if self._worker is not None and not self._worker.alive():
            self._retire(graceful=False)
        if self._worker is None:
            self._worker = self._start()
        return self._worker

    def _load_in_worker(self, path: str) -> LoadedDocument:
        worker = self._ensure_worker()
        try:
            worker.send_conn.send(path)
        except OSError:  # died between the check and the send: one fresh try
            self._retire(graceful=False)
            worker = self._ensure_worker()
            worker.send_conn.send(path)
        if not worker.recv_conn.poll(self.settings.max_seconds):
            self._retire(graceful=False)
            raise DocumentError(_time_reason(self.settings.max_seconds))
        reply: Any = None
        with contextlib.suppress(EOFError, OSError):
            reply = worker.recv_conn.recv()
        if reply is None:  # the worker died with the file in hand
            code = worker.returncode()
            self._retire(graceful=False)
            raise DocumentError(_exit_reason(code))
        kind, payload = reply
        if kind == "ok" and isinstance(payload, LoadedDocument):
            return payload
        if kind == "memory":
            # a worker that ran out of memory may be fragmented or half-broken: replace it
            self._retire(graceful=False)
            raise DocumentError(_memory_reason(self.settings.max_memory_bytes))
        if kind == "error":
            raise DocumentError(str(payload))
        self._retire(graceful=False)
        raise DocumentError(f"the parser sent an unexpected reply ({kind!r})")
