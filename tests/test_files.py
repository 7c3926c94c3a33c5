"""appliance.files: atomic replacement of the files commands write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from appliance.errors import InputError
from appliance.files import write_atomic, write_lines_atomic


def test_write_atomic_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "state.json"
    write_atomic(target, "first\n")
    assert target.read_text(encoding="utf-8") == "first\n"
    write_atomic(target, "ünïcode\n".encode())
    assert target.read_text(encoding="utf-8") == "ünïcode\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]


def test_write_atomic_mode_holds_despite_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "run.sh", "#!/bin/sh\n", 0o755)
        write_atomic(tmp_path / "key.pem", b"secret", 0o600)
        write_atomic(tmp_path / "plain.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == 0o600  # 0666 less umask


def test_a_failed_write_into_a_folder_target_removes_its_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()  # os.replace of a file over a folder fails, whoever runs it
    with pytest.raises(OSError):
        write_atomic(target, "data")
    with pytest.raises(InputError, match="Cannot write"):
        write_lines_atomic(target, ["data"])
    assert target.is_dir() and list(tmp_path.iterdir()) == [target]


def test_is_new_says_which_ancestor_blocks_a_path(tmp_path: Path) -> None:
    from appliance.bundle.errors import BundleError
    from appliance.files import is_new

    (tmp_path / "file.txt").write_text("x")
    assert is_new(tmp_path / "a" / "b", "fix it.") is True  # absent, and can be made
    assert is_new(tmp_path / "file.txt", "fix it.") is False  # exists
    with pytest.raises(BundleError, match=r"Cannot create .*file\.txt is a file, not a "
                                          r"folder; give another\.$"):
        is_new(tmp_path / "file.txt" / "out", "give another.", BundleError)
