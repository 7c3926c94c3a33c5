"""Shared fixtures: a private data directory per test, and the real models from setup."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.api import Appliance
from appliance.config import load_settings, packaged_models_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own APPLIANCE_HOME, so nothing touches the user's data."""
    home = tmp_path / "home"
    monkeypatch.setenv("APPLIANCE_HOME", str(home))
    return home


def _require_models() -> None:
    manifest = packaged_models_dir() / "manifest.toml"
    if not manifest.is_file():  # setup provides them; a missing one is a failure, not a skip
        pytest.fail(f"{manifest} is missing: run scripts/setup.sh first.")


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory shared by the integration tests of one session."""
    return tmp_path_factory.mktemp("shared-home")


@pytest.fixture(scope="session")
def demo_kb(shared_home: Path) -> Iterator[tuple[Appliance, Path]]:
    """The demo corpus ingested once with the real embedder: (app, corpus folder)."""
    _require_models()
    from appliance.demo import write_pydoc_corpus

    corpus = shared_home / "pydoc-topics"
    write_pydoc_corpus(corpus)
    app = Appliance(load_settings(home=shared_home))
    report = app.ingest([corpus], kb="demo")
    assert report.added == 79 and not report.failed, report.to_json()
    yield app, corpus
    app.close()


def unwrapped(text: str) -> str:
    """``text`` with the console's line wrapping (and any run of whitespace) made one space."""
    return " ".join(text.split())


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``appliance ARGS`` in this process: (exit code, stdout + stderr with the console's
    line wrapping undone). Faster than :func:`run_cli`; the data directory is the test's."""
    from appliance.cli import main

    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, unwrapped(captured.out + captured.err)


def run_cli(*args: str, home: Path, check: bool = False, timeout: float = 600,
            prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``appliance ARGS`` in a subprocess with ``home`` as its data directory."""
    env = {**os.environ, "APPLIANCE_HOME": str(home), "COLUMNS": "120"}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "appliance", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"appliance {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def packaged_without_built_models(folder: Path) -> Path:
    """The packaged model folder as it is before setup builds the fine-tuned models
    (symlinks to the real files): for tests of what happens with no fine-tuned model."""
    folder.mkdir(parents=True)
    for item in (REPO / "models").iterdir():
        if item.name not in ("built.toml", "adapters"):
            (folder / item.name).symlink_to(item)
    return folder
