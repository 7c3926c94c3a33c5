"""Check a bundle against its MANIFEST and the ed25519 signature over it.

This module runs in two places: inside the appliance (``appliance bundle verify``), and on
the target machine *before anything is installed*, as ``tools/verify.py`` on the stick,
run by the system's Python with nothing but the standard library. It therefore imports
nothing from ``appliance`` and only the standard library at module level. The signature
check needs ``cryptography``; when the running Python lacks it, the check loads it from the
bundle's own wheels (after those wheels' hashes matched the MANIFEST) into a temporary
folder that is removed afterwards.

MANIFEST: one line per file, ``<sha256> <size> <path>``, sorted by path, every file of the
bundle except ``MANIFEST`` and ``MANIFEST.sig``. ``MANIFEST.sig`` is the raw 64-byte ed25519
signature of the MANIFEST bytes (``openssl pkeyutl -verify -rawin`` checks it too), and
``signing.pub`` the signer's public key (PEM). A signature proves origin only against a key
the target already trusts (``--trusted-key``, ``--trusted-fingerprint`` or a fingerprint
the user confirms); without one, only integrity has been checked.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "MANIFEST",
    "PUBLIC_KEY",
    "SIGNATURE",
    "Entry",
    "Report",
    "VerifyError",
    "check_files",
    "check_prefix",
    "fingerprint",
    "format_manifest",
    "main",
    "normalize_fingerprint",
    "raw_public_key",
    "read_capped",
    "read_manifest",
    "read_state",
    "sha256_file",
    "verify_bundle",
    "verify_signature",
]

MANIFEST = "MANIFEST"
SIGNATURE = "MANIFEST.sig"
PUBLIC_KEY = "signing.pub"
UNLISTED = frozenset({MANIFEST, SIGNATURE})
"""The only files of a bundle that the MANIFEST does not list."""

_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+=-]*(/[A-Za-z0-9_][A-Za-z0-9._+=-]*)*\Z")
_LINE = re.compile(r"^([0-9a-f]{64}) ([0-9]{1,15}) (\S+)$")
MANIFEST_LIMIT = 4 << 20
"""Largest MANIFEST read (a real one is a few kB: one short line per file)."""
SIGNATURE_LIMIT = 4096
KEY_LIMIT = 64 << 10
STATE = "state.json"
"""What an install placed (written by the installer; it marks a prefix as an installation)."""
WRAPPER_TAG = "# appliance, installed from a bundle."
"""How the second line of the ``PREFIX/bin/appliance`` wrapper the installer writes begins."""
RELEASE_NAME = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9]+\Z")  # \Z: "$" lets "name\n" through
"""How install.sh names a release folder (UTC time, then its process id)."""

# DER prefix of an ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key bytes follow it.
_ED25519_SPKI = bytes.fromhex("302a300506032b6570032100")
# Wheels the signature check needs when the running Python lacks cryptography.
_CRYPTO_WHEELS = ("cryptography", "cffi", "pycparser")


class VerifyError(Exception):
    """The bundle is not intact or not signed as required; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    """One MANIFEST line."""

    path: str
    sha256: str
    size: int


@dataclass
class Report:
    """What a successful verification established."""

    files: int
    bytes: int
    signer: str
    """Fingerprint of the key that made the signature."""
    trusted: bool
    """True when the signer is a key the target trusts (proof of origin)."""
    trust_source: str = ""
    """How the signer came to be trusted: ``key``, ``fingerprint`` or ``confirmed``."""


# -- hashing and the manifest -------------------------------------------------------------------


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def format_manifest(entries: list[Entry]) -> bytes:
    """The MANIFEST bytes for ``entries`` (sorted by path; one ``sha256 size path`` line)."""
    lines = [f"{e.sha256} {e.size} {e.path}\n" for e in sorted(entries, key=lambda e: e.path)]
    return "".join(lines).encode("ascii")


def valid_path(path: str) -> bool:
    """Whether ``path`` may appear in a MANIFEST (relative, no '..', safe characters)."""
    return bool(_PATH.match(path)) and ".." not in path.split("/")


def read_capped(path: Path, limit: int, what: str, *, follow: bool = False) -> bytes:
    """The bytes of the regular file ``path`` (at most ``limit``), else VerifyError.

    Never blocks on a FIFO or reads a device: the file is opened non-blocking and checked to
    be a regular file before anything is read. A link is refused unless ``follow`` (files of
    a bundle must be plain files; a key the user names may be a link to one).
    ``FileNotFoundError`` passes through so callers can say what is missing.
    """
    if not follow and os.path.islink(path):
        raise VerifyError(f"{what} {path} is a link, not a regular file; the bundle is damaged or "
                          "was tampered with: do not install it.")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise VerifyError(f"Cannot read {what} {path}: {exc.strerror or exc}; check the path "
                          "and its permissions.") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VerifyError(f"{what} {path} is not a regular file (a folder, device or pipe); "
                          "give the real file.")
    with os.fdopen(fd, "rb") as fh:
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise VerifyError(f"Cannot read {what} {path}: {exc.strerror or exc}; check the "
                              "stick.") from exc
    if len(data) > limit:
        raise VerifyError(f"{what} {path} is larger than {limit} bytes, far more than a real one; "
                          "give the right file.")
    return data


def read_manifest(bundle: Path) -> list[Entry]:
    """Parse ``bundle/MANIFEST``; VerifyError when missing or malformed."""
    path = bundle / MANIFEST
    try:
        data = read_capped(path, MANIFEST_LIMIT, "The manifest")
    except FileNotFoundError:
        raise VerifyError(
            f"{bundle} has no {MANIFEST}: it is not a bundle, or the manifest was removed; "
            "copy the whole bundle folder again."
        ) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise VerifyError(f"{path} is not a bundle manifest (not ASCII); the bundle is damaged "
                          "or was tampered with: do not install it.") from None
    entries: list[Entry] = []
    for number, line in enumerate(text.splitlines(), start=1):
        match = _LINE.match(line)
        if not match or not valid_path(match.group(3)) or match.group(3) in UNLISTED:
            raise VerifyError(f"{MANIFEST} line {number} is malformed; the bundle is damaged or "
                              "was tampered with: do not install it.")
        entries.append(Entry(match.group(3), match.group(1), int(match.group(2))))
    paths = [e.path for e in entries]
    if paths != sorted(set(paths)) or not text.endswith("\n"):
        raise VerifyError(f"{MANIFEST} is not sorted or lists a file twice; the bundle is damaged "
                          "or was tampered with: do not install it.")
    if not entries:
        raise VerifyError(f"{MANIFEST} is empty; the bundle is damaged: do not install it.")
    return entries


def _walk(bundle: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every non-directory below ``bundle`` as (relative POSIX path, lstat)."""
    for root, dirs, files in os.walk(bundle):
        dirs.sort()
        rel_root = os.path.relpath(root, bundle)
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            full = os.path.join(root, name)
            rel = name if rel_root == "." else f"{rel_root}/{name}".replace(os.sep, "/")
            yield rel, os.lstat(full)


def _problems_message(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")
    return f"{kind}: {shown}"


def check_files(
    bundle: Path,
    entries: list[Entry],
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Check that the bundle holds exactly the MANIFEST's files with their sizes and hashes.

    Returns (files, bytes). Raises VerifyError naming missing, extra, changed and
    non-regular files.
    """
    listed = {e.path: e for e in entries}
    present = dict(_walk(bundle))
    extra = sorted(p for p in present if p not in listed and p not in UNLISTED)
    missing = sorted(p for p in listed if p not in present)
    odd = sorted(p for p, st in present.items() if not stat.S_ISREG(st.st_mode))
    problems: list[str] = []
    if missing:
        problems.append(_problems_message("missing", missing))
    if extra:
        problems.append(_problems_message("not in the manifest", extra))
    if odd:
        problems.append(_problems_message("not a regular file", odd))
    changed: list[str] = []
    total = sum(e.size for e in entries)
    done = 0
    for entry in entries:
        st = present.get(entry.path)
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        if st.st_size != entry.size or sha256_file(bundle / entry.path) != entry.sha256:
            changed.append(entry.path)
        done += entry.size
        if progress is not None:
            progress(done, total)
    if changed:
        problems.append(_problems_message("changed", changed))
    if problems:
        raise VerifyError(
            f"The bundle at {bundle} does not match its manifest ({'; '.join(problems)}); it is "
            "damaged or was tampered with: do not install it; copy the bundle again from its "
            "source."
        )
    return len(entries), total


# -- keys and signatures ------------------------------------------------------------------------


def raw_public_key(pem: bytes) -> bytes:
    """The 32 raw bytes of an ed25519 public key in PEM (SubjectPublicKeyInfo) form."""
    text = pem.decode("ascii", errors="replace")
    match = re.search(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", text, re.S)
    if not match:
        raise VerifyError("The key file is not a PEM public key; give the .pub file that "
                          "`appliance bundle keygen` wrote.")
    try:
        der = base64.b64decode("".join(match.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise VerifyError("The public key file is damaged (bad base64); get a fresh copy of "
                          "the .pub file.") from None
    if len(der) != 44 or not der.startswith(_ED25519_SPKI):
        raise VerifyError("The public key is not an ed25519 key; give the .pub file that "
                          "`appliance bundle keygen` wrote.")
    return der[len(_ED25519_SPKI):]


def fingerprint(pem: bytes) -> str:
    """The fingerprint people compare: sha256 of the raw public key, in groups of four."""
    digest = hashlib.sha256(raw_public_key(pem)).hexdigest()
    return "SHA256:" + ":".join(digest[i:i + 4] for i in range(0, 64, 4))


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as typed (any case, with or without ``SHA256:``, ':' or spaces)."""
    text = text.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return re.sub(r"[\s:]", "", text).lower()


@contextmanager
def _crypto_available(bundle: Path, entries: list[Entry]) -> Iterator[None]:
    """Make ``cryptography`` importable, from the bundle's wheels if need be."""
    try:
        importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
    except ImportError:
        pass
    else:
        yield
        return
    listed = {e.path: e for e in entries}
    tmp = tempfile.mkdtemp(prefix="appliance-verify-")
    try:
        for dist in _CRYPTO_WHEELS:
            wheels = [p for p in listed if p.startswith("wheels/")
                      and p[len("wheels/"):].lower().startswith(dist + "-")
                      and p.endswith(".whl")]
            if not wheels:
                raise VerifyError(f"The bundle lacks the {dist} wheel needed to check its "
                                  "signature; rebuild the bundle.")
            entry = listed[wheels[0]]
            data = (bundle / entry.path).read_bytes()
            if hashlib.sha256(data).hexdigest() != entry.sha256:  # read once: hash what we use
                raise VerifyError(f"{entry.path} changed during the check; copy the bundle "
                                  "again from its source.")
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                for member in zf.namelist():
                    if member.startswith("/") or ".." in member.split("/"):
                        raise VerifyError(f"{entry.path} has an unsafe member; do not install.")
                zf.extractall(tmp)
        sys.path.insert(0, tmp)
        try:
            importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
        except ImportError as exc:
            raise VerifyError(
                f"Cannot load cryptography from the bundle's wheels ({exc}); run the installer "
                "with the Python version the bundle was built for (and, if /tmp is mounted "
                "noexec, with TMPDIR set to a folder that allows programs)."
            ) from exc
        yield
    finally:
        if tmp in sys.path:
            sys.path.remove(tmp)
        for name in [m for m in sys.modules if m.split(".")[0] in ("cryptography", "cffi",
                                                                   "_cffi_backend", "pycparser")]:
            module: Any = sys.modules.get(name)
            if getattr(module, "__file__", None) and str(module.__file__).startswith(tmp):
                del sys.modules[name]
        shutil.rmtree(tmp, ignore_errors=True)


def _signature_valid(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    ed25519 = importlib.import_module("cryptography.hazmat.primitives.asymmetric.ed25519")
    exceptions = importlib.import_module("cryptography.exceptions")
    key = ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
    try:
        key.verify(signature, message)
    except exceptions.InvalidSignature:
        return False
    return True


def verify_signature(
    bundle: Path,
    entries: list[Entry],
    *,
    trusted_key: Path | None = None,
    trusted_fingerprint: str | None = None,
) -> tuple[str, bool]:
    """Check ``MANIFEST.sig``; return (signer fingerprint, signer is trusted).

    The signature must verify with the bundle's ``signing.pub`` (integrity of the manifest)
    and, when a trusted key or fingerprint is given, the signer must be that key (origin).
    Giving both is refused: one of them would go unchecked.
    """
    if trusted_key is not None and trusted_fingerprint is not None:
        raise VerifyError("Give the trusted key or its fingerprint, not both; either one "
                          "checks where the bundle comes from.")
    try:
        signature = read_capped(bundle / SIGNATURE, SIGNATURE_LIMIT, "The signature")
    except FileNotFoundError:
        raise VerifyError(f"{bundle} has no {SIGNATURE}: the bundle is unsigned or damaged; "
                          "do not install it, rebuild or copy it again.") from None
    if len(signature) != 64:
        raise VerifyError(f"{SIGNATURE} is not an ed25519 signature; the bundle is damaged or "
                          "was tampered with: do not install it.")
    try:
        message = read_capped(bundle / MANIFEST, MANIFEST_LIMIT, "The manifest")
        if PUBLIC_KEY not in {e.path for e in entries}:
            raise VerifyError(f"The MANIFEST does not list {PUBLIC_KEY}; rebuild the bundle.")
        shipped_pem = read_capped(bundle / PUBLIC_KEY, KEY_LIMIT, "The shipped key")
    except FileNotFoundError as exc:
        raise VerifyError(f"{exc.filename} disappeared during the check; copy the bundle again "
                          "from its source.") from None
    trusted_pem: bytes | None = None
    if trusted_key is not None:  # read before anything is unpacked: a bad path fails fast
        try:
            trusted_pem = read_capped(trusted_key, KEY_LIMIT, "The trusted key", follow=True)
        except FileNotFoundError:
            raise VerifyError(f"The trusted key {trusted_key} does not exist; check the "
                              "path.") from None
    shipped = raw_public_key(shipped_pem)
    signer = fingerprint(shipped_pem)
    trusted = False
    invalid = VerifyError("The signature over the MANIFEST is invalid; the bundle is damaged or "
                          "was tampered with: do not install it.")
    with _crypto_available(bundle, entries):
        shipped_ok = _signature_valid(shipped, signature, message)
        if trusted_pem is not None:
            trusted_raw = raw_public_key(trusted_pem)
            if _signature_valid(trusted_raw, signature, message):
                return fingerprint(trusted_pem), True
            if trusted_raw == shipped or not shipped_ok:
                raise invalid
            raise VerifyError(
                f"The bundle is not signed by the trusted key {fingerprint(trusted_pem)} but by "
                f"{signer}: it may not come from your builder; do not install it."
            )
        if not shipped_ok:
            raise invalid
        if trusted_fingerprint is not None:
            wanted = normalize_fingerprint(trusted_fingerprint)
            if wanted != normalize_fingerprint(signer):
                raise VerifyError(
                    f"The bundle is signed by {signer}, not by the expected fingerprint; it may "
                    "not come from your builder: do not install it."
                )
            trusted = True
    return signer, trusted


def verify_bundle(
    bundle: Path,
    *,
    trusted_key: Path | None = None,
    trusted_fingerprint: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """Check every file and the signature; VerifyError on any problem."""
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise VerifyError(f"{bundle} is not a folder; give the bundle's folder.")
    entries = read_manifest(bundle)
    files, size = check_files(bundle, entries, progress)
    signer, trusted = verify_signature(
        bundle, entries, trusted_key=trusted_key, trusted_fingerprint=trusted_fingerprint
    )
    source = ("key" if trusted_key else "fingerprint") if trusted else ""
    return Report(files=files, bytes=size, signer=signer, trusted=trusted, trust_source=source)


# -- the install prefix ---------------------------------------------------------------------------


def _names(items: list[str]) -> str:
    return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")


def read_state(prefix: Path) -> dict[str, Any] | None:
    """``PREFIX/state.json`` when it is one the installer wrote, else None."""
    try:
        data = read_capped(prefix / STATE, MANIFEST_LIMIT, "The install state")
        state = json.loads(data.decode("utf-8"))
    except (FileNotFoundError, VerifyError, UnicodeDecodeError, ValueError):
        return None
    if (isinstance(state, dict) and isinstance(state.get("release"), str)
            and isinstance(state.get("manifest_sha256"), str)
            and isinstance(state.get("kbs"), dict)):
        return state
    return None


def _is_wrapper(path: Path) -> bool:
    try:
        head = read_capped(path, KEY_LIMIT, "The wrapper")
    except (OSError, VerifyError):
        return False
    return any(line.startswith(WRAPPER_TAG.encode()) for line in head.split(b"\n")[:3])


def check_prefix(prefix: Path, new_release: str | None = None) -> bool:
    """Whether the installer may write at ``prefix``; VerifyError naming it when not.

    Returns False for a new or empty folder, True for an earlier installation (its
    ``state.json`` is one the installer wrote). Anything else is the user's folder and is
    refused, as is an installation where something of the user's stands where the installer
    writes (``current`` not a link, ``bin/appliance`` not its wrapper, ...). A prefix that
    holds only ``releases/NEW_RELEASE`` (made by install.sh for this install) counts as empty.
    """
    try:
        st = os.stat(prefix)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise VerifyError(f"Cannot look into the prefix {prefix}: {exc.strerror or exc}; choose "
                          "another --prefix.") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise VerifyError(f"The prefix {prefix} exists and is not a folder; give --prefix a new "
                          "or empty folder.")
    try:
        names = sorted(os.listdir(prefix))
    except OSError as exc:
        raise VerifyError(f"Cannot list the prefix {prefix}: {exc.strerror or exc}; choose "
                          "another --prefix.") from exc
    if new_release is not None and names == ["releases"]:
        with contextlib.suppress(OSError):
            if os.listdir(prefix / "releases") == [new_release]:
                return False
    if not names:
        return False
    if read_state(prefix) is None:
        raise VerifyError(
            f"The prefix {prefix} is not empty ({_names(names)}) and holds no earlier appliance "
            "installation; nothing was changed: give --prefix a new or empty folder, or the "
            "folder of an earlier installation."
        )
    in_the_way: list[str] = []
    current = prefix / "current"
    if os.path.lexists(current) and not current.is_symlink():
        in_the_way.append("current (not the installer's link)")
    for name in ("releases", "bin"):
        path = prefix / name
        if os.path.lexists(path) and (path.is_symlink() or not path.is_dir()):
            in_the_way.append(f"{name} (not a folder)")
    wrapper = prefix / "bin" / "appliance"
    if os.path.lexists(wrapper) and (wrapper.is_symlink() or not _is_wrapper(wrapper)):
        in_the_way.append("bin/appliance (not the installer's wrapper)")
    for name in ("data", "data/kb"):
        path = prefix / name
        if os.path.lexists(path) and not path.is_dir():
            in_the_way.append(f"{name} (not a folder)")
    state = prefix / STATE
    if state.is_symlink():
        in_the_way.append(f"{STATE} (a link)")
    if in_the_way:
        raise VerifyError(
            f"The installation at {prefix} has something of yours where the installer writes "
            f"({_names(in_the_way)}); nothing was changed: move it away and re-run install.sh."
        )
    return True


# -- the script on the stick ----------------------------------------------------------------------


def _confirm(signer: str) -> bool:
    print(f"The bundle is signed by the key\n    {signer}\n"
          "Compare it with the fingerprint your bundle's builder gave you (not one read from "
          "this stick).", file=sys.stderr)
    try:
        answer = input("Is it the same? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def main(argv: list[str] | None = None) -> int:
    """``python tools/verify.py BUNDLE [--trusted-key FILE]``: exit 0 when it may install."""
    parser = argparse.ArgumentParser(
        prog="verify.py", description="Check an appliance bundle before installing it."
    )
    parser.add_argument("bundle", type=Path, nargs="?")
    parser.add_argument("--trusted-key", type=Path, help="The builder's public key (.pub).")
    parser.add_argument("--trusted-fingerprint", help="The builder's key fingerprint.")
    parser.add_argument("--integrity-only", action="store_true",
                        help="Do not ask to confirm the signer; check integrity only.")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--prefix", type=Path,
                        help="Only check that the installer may write at this folder.")
    args = parser.parse_args(argv)
    if args.prefix is not None:
        try:
            check_prefix(args.prefix)
        except VerifyError as exc:
            print(f"REFUSED: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.bundle is None:
        parser.error("give the bundle's folder (or --prefix DIR)")
    try:
        report = verify_bundle(args.bundle, trusted_key=args.trusted_key,
                               trusted_fingerprint=args.trusted_fingerprint)
        if (not report.trusted and not args.integrity_only and sys.stdin.isatty()
                and sys.stderr.isatty()):
            if not _confirm(report.signer):
                raise VerifyError(
                    "The signer was not confirmed: nothing was installed. Re-run with "
                    "--trusted-key FILE (the builder's .pub), or with --integrity-only to "
                    "install after the integrity check alone."
                )
            report.trusted, report.trust_source = True, "confirmed"
    except VerifyError as exc:
        print(f"REFUSED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file vanished or became unreadable during the check
        print(f"REFUSED: cannot read {exc.filename or 'the bundle'}: {exc.strerror or exc}; "
              "copy the bundle again from its source.", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"verified: {report.files} files, {report.bytes / 1e6:.1f} MB, every sha256 "
              "matches the MANIFEST")
        if report.trusted:
            how = {"key": "the trusted key", "fingerprint": "the trusted fingerprint",
                   "confirmed": "the fingerprint you confirmed"}[report.trust_source]
            print(f"origin: signed by {report.signer}, {how}")
        else:
            print(f"origin NOT checked: the signature ({report.signer}) matches the key shipped "
                  "in the bundle, which proves only integrity; pass --trusted-key FILE to prove "
                  "where the bundle comes from")
    return 0


if __name__ == "__main__":
    sys.exit(main())
