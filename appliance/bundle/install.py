"""Place a verified bundle at an install prefix (run by install.sh from the new venv).

install.sh has already checked the CPU, every hash and the signature, created
``PREFIX/releases/NAME/venv`` and installed the wheels into it. This finishes the job::

    PREFIX/bin/appliance         wrapper: sets the data and models folders, runs the venv's CLI
    PREFIX/current               -> releases/NAME (switched atomically once doctor passed)
    PREFIX/releases/NAME/        venv/, models/, bundle.json, MANIFEST, signing.pub, sbom
    PREFIX/data/                 the data directory: kb/, feedback, config.toml, user models
    PREFIX/state.json            what the last install placed (to tell user changes apart)

Only a new or empty prefix, or an earlier installation (its ``state.json``), is written to
(:func:`appliance.bundle.verify.check_prefix`, which install.sh also runs before it writes
anything). Should anything fail after writing began, what this install wrote at the prefix is
taken back (install.sh removes the new release). Only releases an earlier install recorded
in ``state.json`` are ever removed.

A re-run with a newer bundle installs a new release next to the old one and switches to it
only when ``appliance doctor`` passes. Knowledge bases the user changed since they were
installed (new documents ingested) are kept; an unchanged one is upgraded to the bundle's
copy. Feedback and everything else in the data directory is never touched.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from appliance.bundle.verify import (
    MANIFEST,
    PUBLIC_KEY,
    RELEASE_NAME,
    STATE,
    WRAPPER_TAG,
    Entry,
    VerifyError,
    check_prefix,
    read_manifest,
    read_state,
)
from appliance.files import write_atomic

__all__ = ["kb_fingerprint", "main", "wrapper_script"]



def _say(msg: str) -> None:
    print(f"install: {msg}", flush=True)


def _sh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def wrapper_script(prefix: Path) -> str:
    """The ``PREFIX/bin/appliance`` script."""
    return f"""#!/bin/sh
{WRAPPER_TAG} This wrapper points the CLI at the models of the
# current release and at the data directory of this installation (APPLIANCE_HOME, when set,
# chooses another data directory).
APPLIANCE_PREFIX={_sh_quote(str(prefix))}
APPLIANCE_MODELS_DIR="$APPLIANCE_PREFIX/current/models"
: "${{APPLIANCE_HOME:=$APPLIANCE_PREFIX/data}}"
export APPLIANCE_HOME APPLIANCE_MODELS_DIR
exec "$APPLIANCE_PREFIX/current/venv/bin/appliance" "$@"
"""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


class _Undo:
    """What this install changed at the prefix, to put back should it fail."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], None]] = []
        self._backups: list[Path] = []

    def created(self, path: Path) -> None:
        """``path`` did not exist before this install: remove it on rollback."""
        self._steps.append(lambda: _remove(path))

    def mkdir(self, path: Path) -> None:
        """Create ``path`` and its missing parents; rollback removes those (when empty)."""
        missing: list[Path] = []
        probe = path
        while not os.path.lexists(probe) and probe != probe.parent:
            missing.append(probe)
            probe = probe.parent
        path.mkdir(parents=True, exist_ok=True)
        for folder in reversed(missing):
            self._steps.append(functools.partial(os.rmdir, folder))

    def set_aside(self, path: Path) -> None:
        """Move ``path`` out of the way: back in place on rollback, removed on commit."""
        if os.path.lexists(path):
            os.replace(path, self._backup(path))

    def keep_copy(self, path: Path) -> None:
        """Copy ``path`` aside before it is overwritten (a small file); None when new."""
        if os.path.lexists(path):
            shutil.copy2(path, self._backup(path))
        else:
            self.created(path)

    def _backup(self, path: Path) -> Path:
        """Where ``path`` is kept until commit; rollback puts it back."""
        backup = path.with_name(f".{path.name}.{os.getpid()}.old")
        self._steps.append(lambda: os.replace(backup, path))
        self._backups.append(backup)
        return backup

    def relink(self, link: Path) -> None:
        """``link`` (a symlink, or absent) is about to be switched: restore it on rollback."""
        if not link.is_symlink():
            self.created(link)
            return
        old = os.readlink(link)

        def restore() -> None:
            tmp = link.with_name(f".{link.name}.{os.getpid()}.undo")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(old)
            os.replace(tmp, link)

        self._steps.append(restore)

    def rollback(self) -> list[str]:
        """Undo every change, newest first; return what could not be undone."""
        failed: list[str] = []
        for step in reversed(self._steps):
            try:
                step()
            except OSError as exc:
                failed.append(f"{exc.filename}: {exc.strerror or exc}")
        self._steps.clear()
        return failed

    def commit(self) -> None:
        """Keep the changes; drop the copies set aside."""
        for backup in self._backups:
            with contextlib.suppress(OSError):
                _remove(backup)
        self._steps.clear()
        self._backups.clear()


def _copy_checked(src: Path, dest: Path, entry: Entry) -> None:
    """Copy and check the copy against the MANIFEST (what is placed is what was verified)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
    if digest.hexdigest() != entry.sha256:
        dest.unlink(missing_ok=True)
        raise VerifyError(f"{entry.path} changed on the stick during the install; copy the bundle "
                          "again and re-run install.sh.")
    dest.chmod(0o644)


def kb_fingerprint(path: Path) -> str | None:
    """The content identity of a knowledge base: its documents (path, sha256) and chunk count.

    Unaffected by WAL or header changes; changes when documents are ingested or removed.
    None when the file cannot be read as a knowledge base.
    """
    try:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    except apsw.Error:
        return None
    try:
        digest = hashlib.sha256()
        for doc_path, sha in conn.execute("SELECT path, sha256 FROM documents ORDER BY path"):
            digest.update(f"{doc_path}\0{sha}\n".encode())
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchall()[0][0]
        digest.update(f"chunks {chunks}".encode())
        return digest.hexdigest()
    except apsw.Error:
        return None
    finally:
        conn.close()


def _remove_kb_files(path: Path, undo: _Undo) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        undo.set_aside(Path(str(path) + suffix))


def _place_kbs(bundle: Path, entries: list[Entry], data: Path, state: dict[str, Any],
               replace: bool, undo: _Undo) -> dict[str, str]:
    """Copy the bundle's knowledge bases into ``data/kb`` without losing the user's work;
    every change is recorded in ``undo``."""
    placed: dict[str, str] = dict(state.get("kbs", {}))
    kb_dir = data / "kb"
    for entry in entries:
        if not (entry.path.startswith("kb/") and entry.path.endswith(".sqlite")):
            continue
        name = entry.path[len("kb/"):-len(".sqlite")]
        target = kb_dir / f"{name}.sqlite"
        tmp = kb_dir / f".{name}.sqlite.{os.getpid()}.new"
        try:
            _copy_checked(bundle / entry.path, tmp, entry)
            new = kb_fingerprint(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if new is None:
            tmp.unlink()
            raise VerifyError(f"{entry.path} is not a readable knowledge base; rebuild the "
                              "bundle.")
        if not os.path.lexists(target):
            undo.created(target)
            os.replace(tmp, target)
            placed[name] = new
            _say(f"knowledge base '{name}' installed")
            continue
        current = kb_fingerprint(target)
        if current == new:
            tmp.unlink()
            placed[name] = new
            _say(f"knowledge base '{name}' is up to date")
        elif current is not None and current == placed.get(name):
            _remove_kb_files(target, undo)
            undo.created(target)
            os.replace(tmp, target)
            placed[name] = new
            _say(f"knowledge base '{name}' upgraded to the bundle's copy")
        elif replace:
            backup = data / "backups" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.sqlite"
            undo.mkdir(backup.parent)
            undo.created(backup)
            try:
                conn = apsw.Connection(str(target))
                conn.execute("VACUUM INTO ?", (str(backup),))
                conn.close()
            except apsw.Error:
                shutil.copyfile(target, backup)
            _remove_kb_files(target, undo)
            undo.created(target)
            os.replace(tmp, target)
            placed[name] = new
            _say(f"knowledge base '{name}' replaced by the bundle's copy (yours is kept as "
                 f"{backup})")
        else:
            tmp.unlink()
            _say(f"knowledge base '{name}' kept: it changed since it was installed (documents "
                 "were added or removed); re-run with --replace-kbs to take the bundle's copy "
                 "(yours is then backed up)")
    return placed


def _recorded_releases(state: dict[str, Any]) -> set[str]:
    """The releases ``state.json`` says the installer made (its list and its current one)."""
    names = {n for n in state.get("releases", []) if isinstance(n, str)}
    if isinstance(state.get("release"), str):
        names.add(state["release"])
    return names


def _write_state(path: Path, state: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(state, indent=2, sort_keys=True) + "\n", 0o644)


def _prune(prefix: Path, keep: str, created: set[str]) -> list[str]:
    """Remove the earlier releases this installer created (never another folder); return
    the names still there."""
    left = []
    for name in sorted(created - {keep}):
        old = prefix / "releases" / name
        if not RELEASE_NAME.match(name) or old.is_symlink() or not old.is_dir():
            continue
        shutil.rmtree(old, ignore_errors=True)
        if os.path.lexists(old):
            left.append(name)
    return left


def install(bundle: Path, prefix: Path, release: Path, *, replace_kbs: bool = False,
            doctor: bool = True) -> int:
    """Place the bundle; return the exit status.

    VerifyError when the prefix is not one the installer may write to; on any failure what
    this call wrote at the prefix is taken back before the exception propagates.
    """
    entries = read_manifest(bundle)
    data = prefix / "data"
    state_path = prefix / STATE
    if release.parent != prefix / "releases" or not RELEASE_NAME.match(release.name):
        raise VerifyError(f"{release} is not a release folder of {prefix}; run install.sh "
                          "rather than this module.")
    check_prefix(prefix, new_release=release.name)  # as install.sh did, before the release
    state: dict[str, Any] = dict(read_state(prefix) or {})
    undo = _Undo()
    try:
        rc, kbs = _place(bundle, prefix, release, entries, data, state, undo,
                         replace_kbs=replace_kbs, doctor=doctor)
        if rc != 0:
            _rollback(undo, prefix)
            return rc
    except BaseException:
        _rollback(undo, prefix)
        raise
    undo.commit()
    left = _prune(prefix, release.name, _recorded_releases(state))
    state.update(releases=[release.name, *left])
    with contextlib.suppress(OSError):
        _write_state(state_path, state)

    info: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))
    kb_names = sorted(kbs)
    example_kb = f" --kb {kb_names[0]}" if kb_names else ""
    print(f"""
Installed appliance {info.get('appliance', '')} at {prefix}
  command    {prefix / 'bin' / 'appliance'}
  data       {data}  (knowledge bases: {', '.join(kb_names) or 'none yet'})
Next steps:
  export PATH="{prefix / 'bin'}:$PATH"      (add it to ~/.profile to keep it)
  appliance ask "your question"{example_kb}
  appliance tui                              (the terminal interface)
  appliance ingest FOLDER --kb NAME          (add your own documents)
  appliance doctor                           (check the installation again)
Re-run install.sh from a newer bundle to upgrade; your knowledge bases and feedback stay.""")
    return 0


def _rollback(undo: _Undo, prefix: Path) -> None:
    failed = undo.rollback()
    if failed:
        print(f"install: could not take back everything this install wrote at {prefix} "
              f"({'; '.join(failed[:3])}); remove those by hand.", file=sys.stderr)


def _place(bundle: Path, prefix: Path, release: Path, entries: list[Entry], data: Path,
           state: dict[str, Any], undo: _Undo, *, replace_kbs: bool,
           doctor: bool) -> tuple[int, dict[str, str]]:
    """Everything install() writes, each change recorded in ``undo``."""
    models = [e for e in entries if e.path.startswith("models/")]
    total = sum(e.size for e in models)
    _say(f"copying {len(models)} model files ({total / 1e6:.0f} MB)")
    for entry in models:  # inside the new release, which install.sh removes on failure
        _copy_checked(bundle / entry.path, release / entry.path, entry)
    for name in ("bundle.json", "sbom.cdx.json", PUBLIC_KEY, MANIFEST, "README.md"):
        if (bundle / name).is_file():
            shutil.copyfile(bundle / name, release / name)
    undo.mkdir(data / "kb")
    kbs = _place_kbs(bundle, entries, data, state, replace_kbs, undo)

    if doctor:
        _say("running `appliance doctor` on the new release")
        env = {**os.environ, "APPLIANCE_HOME": str(data),
               "APPLIANCE_MODELS_DIR": str(release / "models")}
        rc = subprocess.run([str(release / "venv" / "bin" / "appliance"), "doctor"], env=env,
                            check=False).returncode
        if rc != 0:
            print("install: REFUSED: `appliance doctor` failed on the new release (see above); "
                  "the previous installation, if any, is still the current one.", file=sys.stderr)
            return 1, kbs

    wrapper = prefix / "bin" / "appliance"
    undo.mkdir(wrapper.parent)
    undo.keep_copy(wrapper)
    write_atomic(wrapper, wrapper_script(prefix), 0o755)
    state_path = prefix / STATE
    undo.keep_copy(state_path)
    manifest_sha = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    state.update(releases=sorted(_recorded_releases(state) | {release.name}),
                 release=release.name, manifest_sha256=manifest_sha, kbs=kbs)
    _write_state(state_path, state)

    link = prefix / f".current.{os.getpid()}"
    link.unlink(missing_ok=True)
    undo.created(link)
    link.symlink_to(Path("releases") / release.name)
    undo.relink(prefix / "current")
    os.replace(link, prefix / "current")
    return 0, kbs


def main(argv: list[str] | None = None) -> int:
    """Entry point for install.sh."""
    parser = argparse.ArgumentParser(prog="python -m appliance.bundle.install")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--prefix", type=Path, required=True)
    parser.add_argument("--release", type=Path, required=True)
    parser.add_argument("--replace-kbs", action="store_true")
    parser.add_argument("--no-doctor", action="store_true")
    args = parser.parse_args(argv)
    try:
        return install(args.bundle.resolve(), args.prefix.resolve(), args.release.resolve(),
                       replace_kbs=args.replace_kbs, doctor=not args.no_doctor)
    except VerifyError as exc:
        print(f"install: REFUSED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"install: failed: {exc}; what this install wrote at {args.prefix} was taken "
              "back: fix that cause and re-run install.sh.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
