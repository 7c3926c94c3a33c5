"""LoaderSandbox: same results as in process, time and memory limits, crashes, recovery."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import IngestSettings
from appliance.errors import DocumentError
from appliance.ingest.loaders import load_document
from appliance.ingest.sandbox import LoaderSandbox
from appliance.types import LoadedDocument
from tests.hostile import (
    GOOD_FILES,
    buggy_loader,
    crashing_loader,
    greedy_loader,
    limits_loader,
    make_hostile_corpus,
    noisy_loader,
    sleepy_loader,
)

SETTINGS = IngestSettings()  # type: ignore[call-arg]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("hostile")
    return root, make_hostile_corpus(root)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[LoaderSandbox]:
    with LoaderSandbox(SETTINGS) as box:
        yield box


def failure(box: LoaderSandbox, path: Path) -> str:
    with pytest.raises(DocumentError) as info:
        box.load(path)
    return info.value.message


def test_good_files_match_in_process(
    sandbox: LoaderSandbox, corpus: tuple[Path, dict[str, str]]
) -> None:
    root, _ = corpus
    for name in GOOD_FILES:
        assert sandbox.load(root / name) == load_document(root / name, SETTINGS)


def test_hostile_files_fail_with_reasons_and_keep_the_worker(
    sandbox: LoaderSandbox, corpus: tuple[Path, dict[str, str]]
) -> None:
    root, expected = corpus
    sandbox.load(root / "notes.txt")
    pid = sandbox.worker_pid
    for name, want in expected.items():
        started = time.perf_counter()
        assert want in failure(sandbox, root / name).lower(), name
        assert time.perf_counter() - started < 3, name
    assert sandbox.worker_pid == pid  # refusals are answers, not crashes


def test_relative_paths_resolve_in_the_parent(
    sandbox: LoaderSandbox, corpus: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = corpus
    monkeypatch.chdir(root)
    assert sandbox.load(Path("notes.txt")).title == "notes"


def test_timeout_kills_and_replaces_the_worker(tmp_path: Path) -> None:
    slow = tmp_path / "slow.txt"
    slow.write_text("30")
    quick = tmp_path / "quick.txt"
    quick.write_text("0")
    settings = IngestSettings(max_seconds=0.5)  # type: ignore[call-arg]
    with LoaderSandbox(settings, loader=sleepy_loader) as box:
        box.load(quick)
        first = box.worker_pid
        started = time.perf_counter()
        assert failure(box, slow) == "took longer than 0.5 s (ingest.max_seconds)"
        assert time.perf_counter() - started < 3
        assert first is not None and not _alive(first)
        assert box.load(quick).sections[0].text == "slept"
        assert box.worker_pid not in (None, first)
        assert box.workers_started == 2


def test_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "any.txt"
    path.write_text("x")
    settings = IngestSettings(max_memory_bytes=512 * 1024 * 1024)  # type: ignore[call-arg]
    with LoaderSandbox(settings, loader=limits_loader) as box:
        soft, _ = box.load(path).sections[0].text.split()
        assert int(soft) == 512 * 1024 * 1024
    with LoaderSandbox(settings, loader=greedy_loader) as box:
        started = time.perf_counter()
        assert failure(box, path) == "needs more than 512 MB of memory (ingest.max_memory_bytes)"
        assert time.perf_counter() - started < 5
        assert box.worker_pid is None  # retired after running out of memory


def test_memory_error_in_process_is_mapped(tmp_path: Path) -> None:
    path = tmp_path / "any.txt"
    path.write_text("x")
    settings = IngestSettings(max_memory_bytes=128 * 1024 * 1024)  # type: ignore[call-arg]
    box = LoaderSandbox(settings, in_process=True, loader=_raise_memory)
    assert failure(box, path) == "needs more than 128 MB of memory (ingest.max_memory_bytes)"


def _raise_memory(path: Path, settings: IngestSettings) -> LoadedDocument:
    raise MemoryError


@pytest.mark.parametrize(
    ("signum", "name"), [(signal.SIGSEGV, "SIGSEGV"), (signal.SIGABRT, "SIGABRT")]
)
def test_crash_is_reported_and_recovered(tmp_path: Path, signum: int, name: str) -> None:
    crash = tmp_path / "crash.txt"
    crash.write_text(str(int(signum)))
    good = tmp_path / "good.md"
    good.write_text("# Fine\n\ntext\n")
    with LoaderSandbox(SETTINGS, loader=crashing_loader) as box:
        assert failure(box, crash) == f"the parser crashed (signal {int(signum)}, {name})"
    with LoaderSandbox(SETTINGS) as box:
        box.load(good)
        os.kill(box.worker_pid or 0, signal.SIGSEGV)  # dies while idle
        time.sleep(0.1)
        assert box.load(good).title == "Fine"
        assert box.workers_started == 2


def test_kill_during_a_load_then_recover(tmp_path: Path) -> None:
    slow = tmp_path / "slow.txt"
    slow.write_text("30")
    quick = tmp_path / "quick.txt"
    quick.write_text("0")
    with LoaderSandbox(SETTINGS, loader=sleepy_loader) as box:
        box.load(quick)
        pid = box.worker_pid
        assert pid is not None
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            assert failure(box, slow) == "the parser crashed (signal 9, SIGKILL)"
        finally:
            killer.cancel()
        assert box.load(quick).sections[0].text == "slept"
        assert box.worker_pid != pid


def test_unexpected_exception_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("x")
    with LoaderSandbox(SETTINGS, loader=buggy_loader) as box:
        assert failure(box, path) == (
            "unexpected ValueError while reading: bad value in the parser"
        )
        pid = box.worker_pid
        assert failure(box, path).startswith("unexpected ValueError")
        assert box.worker_pid == pid


def test_parser_output_does_not_corrupt_the_channel(corpus: tuple[Path, dict[str, str]]) -> None:
    root, _ = corpus
    with LoaderSandbox(SETTINGS, loader=noisy_loader) as box:
        assert "quokkaflux" in box.load(root / "guide.md").sections[1].text


def test_close_stops_the_worker_and_load_restarts_it(
    corpus: tuple[Path, dict[str, str]],
) -> None:
    root, _ = corpus
    box = LoaderSandbox(SETTINGS)
    box.load(root / "notes.txt")
    pid = box.worker_pid
    assert pid is not None
    box.close()
    box.close()
    assert box.worker_pid is None and not _alive(pid)
    box.load(root / "notes.txt")
    box.close()


def test_in_process_mode(corpus: tuple[Path, dict[str, str]]) -> None:
    root, expected = corpus
    box = LoaderSandbox(SETTINGS, in_process=True)
    assert box.load(root / "guide.md") == load_document(root / "guide.md", SETTINGS)
    assert expected["bomb.docx"] in failure(box, root / "bomb.docx").lower()
    assert box.worker_pid is None


def test_overhead_of_100_small_files(tmp_path: Path) -> None:
    files = []
    for i in range(100):
        path = tmp_path / f"doc{i}.md"
        path.write_text(f"# Doc {i}\n\nSome text {i}.\n\n## Part\n\nMore text.\n")
        files.append(path)
    for path in files[:5]:
        load_document(path, SETTINGS)  # warm imports and caches
    with LoaderSandbox(SETTINGS) as box:
        box.load(files[0])  # start the worker outside the measurement
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for path in files:
                load_document(path, SETTINGS)
            direct = time.perf_counter() - started
            started = time.perf_counter()
            for path in files:
                box.load(path)
            boxed = time.perf_counter() - started
            best = min(best, boxed - direct)
    assert best < 0.5, f"sandbox adds {best:.3f} s per 100 files"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers; look at its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
