"""Bundles against hostile input: foreign prefixes, failed installs, odd output folders,
and MANIFEST, signature or key files that are links to devices, FIFOs or folders.

Fast: the bundles here are tiny hand-made ones (a few files, signed with a fresh key), so no
wheels or models are needed. Subprocesses run with a memory cap and a timeout, so a
regression (reading /dev/zero, blocking on a FIFO) fails instead of eating the machine.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.bundle import install as install_mod
from appliance.bundle import verify
from appliance.bundle.errors import BundleError
from appliance.bundle.verify import VerifyError, verify_bundle
from tests.conftest import REPO, run_cli, unwrapped

PY = f"{sys.version_info[0]}.{sys.version_info[1]}"
OLD = "20240101-000000-1"
NEW = "20250101-000000-2"


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False,
                          preexec_fn=_limited, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home, timeout=60,
                   prefix=("prlimit", f"--as={3 << 30}", "timeout", "50"))


def _one_sentence(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode not in (0, 70), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip(), proc.stdout
    return unwrapped(proc.stderr)  # where the console wraps depends on the path's length


def _tree(root: Path) -> dict[str, str]:
    """Every path below ``root`` with what it is (file bytes, link target, folder)."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_bytes().decode("latin-1")
    return out


def _make_bundle(root: Path) -> tuple[Path, Path]:
    """A tiny signed bundle (install.sh, tools/verify.py, a model, bundle.json) and its .pub."""
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    sh = (REPO / "packaging" / "install.sh").read_text(encoding="utf-8")
    for name, value in {"PYTHON_VERSION": PY, "CPU_FLAGS": "", "APPLIANCE_VERSION": "0"}.items():
        sh = sh.replace(f"@{name}@", value)
    info = {"format": 1, "appliance": "0", "python": PY, "platform": "x", "models": [],
            "signer": verify.fingerprint(pub), "wheels": 0, "knowledge_bases": []}
    files = {
        "install.sh": sh.encode(),
        "tools/verify.py": Path(verify.__file__).read_bytes(),
        "README.md": b"read me\n",
        "signing.pub": pub,
        "models/tiny.gguf": b"not really a model\n",
        "bundle.json": json.dumps(info).encode(),
    }
    bundle = root / "stick"
    entries = []
    for rel, data in files.items():
        path = bundle / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(verify.Entry(rel, verify.sha256_file(path), len(data)))
    manifest = verify.format_manifest(entries)
    (bundle / verify.MANIFEST).write_bytes(manifest)
    (bundle / verify.SIGNATURE).write_bytes(key.sign(manifest))
    key_file = root / "builder.pub"
    key_file.write_bytes(pub)
    return bundle, key_file


@pytest.fixture
def stick(tmp_path: Path) -> tuple[Path, Path]:
    bundle, key = _make_bundle(tmp_path)
    verify_bundle(bundle, trusted_key=key)  # the hand-made bundle is a good one
    return bundle, key


def _foreign_prefix(prefix: Path) -> None:
    (prefix / "releases" / "myalbum").mkdir(parents=True)
    (prefix / "releases" / "myalbum" / "photo.txt").write_text("holiday\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "appliance").write_text("#!/bin/sh\necho my own script\n")
    (prefix / "notes.txt").write_text("my notes\n")


def _earlier_install(prefix: Path) -> None:
    """What an earlier install left (state.json, a release, the link, the wrapper)."""
    (prefix / "releases" / OLD).mkdir(parents=True)
    (prefix / "releases" / OLD / "bundle.json").write_text("{}")
    (prefix / "current").symlink_to(Path("releases") / OLD)
    (prefix / "bin").mkdir()
    (prefix / "bin" / "appliance").write_text(install_mod.wrapper_script(prefix))
    (prefix / "data" / "kb").mkdir(parents=True)
    (prefix / "data" / "feedback.jsonl").write_text('{"rating": "good"}\n')
    (prefix / "state.json").write_text(json.dumps(
        {"release": OLD, "manifest_sha256": "0" * 64, "kbs": {}}))


# -- 1 and 2: the prefix ----------------------------------------------------------------------


@pytest.mark.skipif(platform.system() != "Linux" or platform.machine() != "x86_64",
                    reason="install.sh installs on Linux x86-64 only")
@pytest.mark.parametrize("case", ["foreign", "current-is-a-folder"])
def test_install_sh_refuses_a_prefix_that_is_not_an_installation(
    stick: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    bundle, key = stick
    prefix = tmp_path / "prefix"
    if case == "foreign":
        _foreign_prefix(prefix)
        expected = "holds no earlier appliance installation"
    else:
        _earlier_install(prefix)
        (prefix / "current").unlink()
        (prefix / "current").mkdir()
        (prefix / "current" / "mine.txt").write_text("mine\n")
        expected = "current (not the installer's link)"
    before = _tree(prefix)
    proc = _run(["sh", str(bundle / "install.sh"), "--prefix", str(prefix), "--trusted-key",
                 str(key), "--python", sys.executable])
    said = _one_sentence(proc)
    assert "REFUSED" in said and str(prefix) in said and expected in said, said
    assert _tree(prefix) == before


def test_install_refuses_a_foreign_prefix_and_deletes_nothing(
    stick: tuple[Path, Path], tmp_path: Path
) -> None:
    from appliance.bundle.verify import check_prefix

    bundle, _key = stick
    prefix = (tmp_path / "prefix").resolve()
    _foreign_prefix(prefix)
    (prefix / "releases" / NEW).mkdir()  # as install.sh makes it
    with pytest.raises(VerifyError, match="holds no earlier appliance installation"):
        install_mod.install(bundle, prefix, prefix / "releases" / NEW, doctor=False)
    assert (prefix / "releases" / "myalbum" / "photo.txt").read_text() == "holiday\n"
    assert "my own script" in (prefix / "bin" / "appliance").read_text()
    with pytest.raises(VerifyError, match="not a folder"):
        check_prefix(prefix / "notes.txt")
    assert check_prefix(tmp_path / "new") is False
    (tmp_path / "empty").mkdir()
    assert check_prefix(tmp_path / "empty") is False


def test_upgrade_prunes_only_releases_the_installer_made(
    stick: tuple[Path, Path], tmp_path: Path
) -> None:
    bundle, _key = stick
    prefix = (tmp_path / "prefix").resolve()
    _earlier_install(prefix)
    (prefix / "releases" / "myalbum").mkdir()
    (prefix / "releases" / "myalbum" / "photo.txt").write_text("holiday\n")
    (prefix / "releases" / NEW).mkdir()
    assert install_mod.install(bundle, prefix, prefix / "releases" / NEW, doctor=False) == 0
    assert sorted(p.name for p in (prefix / "releases").iterdir()) == [NEW, "myalbum"]
    assert (prefix / "releases" / "myalbum" / "photo.txt").read_text() == "holiday\n"
    assert os.readlink(prefix / "current") == f"releases/{NEW}"
    assert (prefix / "data" / "feedback.jsonl").read_text() == '{"rating": "good"}\n'
    state = json.loads((prefix / "state.json").read_text())
    assert state["release"] == NEW and state["releases"] == [NEW]
    from appliance.bundle.verify import check_prefix

    assert check_prefix(prefix) is True  # the next upgrade recognises it


@pytest.mark.parametrize("earlier", [False, True])
def test_failed_install_takes_back_what_it_wrote(
    stick: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], earlier: bool
) -> None:
    bundle, _key = stick
    prefix = (tmp_path / "prefix").resolve()
    prefix.mkdir()
    if earlier:
        _earlier_install(prefix)
    before = _tree(prefix)
    (prefix / "releases" / NEW).mkdir(parents=True)  # install.sh removes it on failure
    real = install_mod.write_atomic

    def disk_full(path: Path, data: str | bytes, mode: int | None = None) -> None:
        if path.name == "state.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, mode)

    monkeypatch.setattr(install_mod, "write_atomic", disk_full)
    rc = install_mod.main(["--bundle", str(bundle), "--prefix", str(prefix), "--release",
                           str(prefix / "releases" / NEW), "--no-doctor"])
    err = capsys.readouterr().err
    assert rc == 1 and "No space left on device" in err and "taken back" in err, err
    after = {k: v for k, v in _tree(prefix).items() if not k.startswith(f"releases/{NEW}")}
    if not earlier:
        assert after.pop("releases") == "dir"  # install.sh's, which it removes when empty
    assert after == before


# -- 3 and 5: bundle build --out --------------------------------------------------------------


def test_build_refuses_a_folder_that_only_looks_like_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "usb"
    out.mkdir()
    (out / "MANIFEST").write_text("")
    (out / "bundle.json").write_text("{}")
    (out / "thesis.tex").write_text("\\documentclass{article}\n")
    said = _one_sentence(_cli("bundle", "build", "--out", str(out), home=tmp_path / "home"))
    assert "not an earlier bundle" in said and str(out) in said, said
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST", "bundle.json", "thesis.tex"]


def test_build_replaces_only_a_real_earlier_bundle(stick: tuple[Path, Path]) -> None:
    from appliance.bundle.build import _check_out

    bundle, _key = stick
    _check_out(bundle)  # a real one may be replaced
    (bundle / "models" / "thesis.tex").write_text("mine\n")
    with pytest.raises(BundleError, match=r"MANIFEST does not list \(models/thesis.tex\)"):
        _check_out(bundle)


def test_build_under_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x\n")
    said = _one_sentence(_cli("bundle", "build", "--out", str(tmp_path / "afile" / "sub"),
                              home=tmp_path / "home"))
    assert "is a file" in said and str(tmp_path / "afile") in said, said
    assert (tmp_path / "afile").read_text() == "x\n"


# -- 4: hostile manifest, signature and key files ------------------------------------------------


HOSTILE = ["manifest-dev-zero", "manifest-fifo", "signature-folder", "signature-fifo",
           "key-dev-zero", "key-fifo"]


@pytest.mark.parametrize("case", HOSTILE)
def test_verify_refuses_odd_manifest_signature_and_key_files(
    stick: tuple[Path, Path], tmp_path: Path, case: str
) -> None:
    bundle, key = stick
    what, kind = case.split("-", 1)
    target = {"manifest": bundle / "MANIFEST", "signature": bundle / "MANIFEST.sig",
              "key": tmp_path / "hostile.pub"}[what]
    target.unlink(missing_ok=True)
    if kind == "dev-zero":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    if what == "key":
        key = target
    with pytest.raises(VerifyError):
        verify_bundle(bundle, trusted_key=key)
    for proc in (
        _cli("bundle", "verify", str(bundle), "--trusted-key", str(key), home=tmp_path / "h"),
        _run([sys.executable, "-I", "-B", str(bundle / "tools" / "verify.py"), str(bundle),
              "--trusted-key", str(key)]),
    ):
        said = _one_sentence(proc)
        assert "refused" in said.lower() or "error" in said.lower(), said
        assert "regular file" in said or "a link" in said, said
