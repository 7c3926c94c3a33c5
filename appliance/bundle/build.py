"""Build an offline bundle: wheels, models, knowledge bases, installer, MANIFEST, signature, SBOM.

Layout of a bundle (every file but MANIFEST and MANIFEST.sig is listed in MANIFEST)::

    install.sh            POSIX sh installer (needs Python 3.11/3.12 with venv, nothing else)
    README.md             how to install and use the stick
    tools/verify.py       the stdlib-only checker install.sh runs before anything else
    requirements.txt      every wheel, pinned by version and sha256 (pip --require-hashes)
    wheels/*.whl          run-time wheels, the portable llama-cpp-python wheel, appliance
    models/manifest.toml  the bundle's packaged model registry, with the model files
    kb/NAME.sqlite        knowledge bases (consistent copies made with VACUUM INTO)
    bundle.json           what the bundle holds (python version, CPU flags, models, kbs)
    sbom.cdx.json         CycloneDX SBOM of wheels, models and knowledge bases
    signing.pub           the signer's public key
    MANIFEST              sha256, size and path of every other file, sorted
    MANIFEST.sig          ed25519 signature over MANIFEST

Reproducible: two builds from the same inputs give byte-identical files (wheels come
hash-pinned, the appliance wheel is re-zipped with sorted members and fixed times, JSON is
written with sorted keys, times come from ``SOURCE_DATE_EPOCH``), hence the same MANIFEST
and, ed25519 being deterministic, the same signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw

import appliance
from appliance.bundle import keys, verify
from appliance.bundle.errors import BundleError
from appliance.bundle.sbom import WheelInfo, build_sbom, wheel_info
from appliance.config import cache_dir, packaged_models_dir, validate_kb_name
from appliance.files import is_new

if TYPE_CHECKING:
    from appliance.api import Appliance
    from appliance.models import ModelEntry

__all__ = [
    "PLATFORM",
    "PYTHON_VERSIONS",
    "BuildOptions",
    "BuildReport",
    "build_bundle",
    "source_checkout",
]

PYTHON_VERSIONS = ("3.11", "3.12")
PLATFORM = "manylinux_2_28_x86_64"
"""Wheels are chosen for glibc 2.28+ on x86-64 (RHEL 8, Debian 10, Ubuntu 18.10 and later)."""
DEFAULT_EPOCH = 315532800
"""1980-01-01T00:00:00Z (the earliest time a zip file can hold), when SOURCE_DATE_EPOCH is unset."""
_CPU_FLAGS = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
              "GGML_BMI2": "bmi2", "GGML_AVX512": "avx512f"}
_LOCK_ENTRY = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")

Log = Callable[[str], None]


def source_checkout() -> Path:
    """The checkout the running appliance comes from (pyproject, requirements/, packaging/)."""
    repo = Path(appliance.__file__).resolve().parent.parent
    needed = ("pyproject.toml", "requirements/run.lock", "packaging/install.sh")
    if not all((repo / n).is_file() for n in needed):
        raise BundleError(
            f"`bundle build` needs the appliance source checkout ({', '.join(needed)}) beside "
            f"the package, and {repo} is not one; run it from a checkout set up with "
            "scripts/setup.sh."
        )
    return repo


@dataclass
class BuildOptions:
    """What goes into a bundle."""

    out: Path
    kbs: Sequence[str] = ()
    models: Sequence[str] = ()
    """Registry ids; empty: every packaged model."""
    with_train: bool = False
    python_version: str = f"{sys.version_info[0]}.{sys.version_info[1]}"
    key: Path | None = None
    """Private signing key (default: the keygen location in the data directory)."""
    cache: Path | None = None
    repo: Path | None = None


@dataclass
class BuildReport:
    """The outcome of a build."""

    out: Path
    files: int
    bytes: int
    seconds: float
    signer: str
    manifest_sha256: str
    wheels: int
    models: list[str]
    kbs: list[str]
    steps: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As ``bundle build --json`` prints it."""
        return {
            "out": str(self.out), "files": self.files, "bytes": self.bytes,
            "seconds": round(self.seconds, 2), "signer": self.signer,
            "manifest_sha256": self.manifest_sha256, "wheels": self.wheels,
            "models": self.models, "kbs": self.kbs,
            "steps": {k: round(v, 2) for k, v in self.steps.items()},
        }


# -- helpers ---------------------------------------------------------------------------------------


def _epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not raw:
        return DEFAULT_EPOCH
    try:
        value = int(raw)
    except ValueError:
        raise BundleError(f"SOURCE_DATE_EPOCH={raw!r} is not a whole number of seconds; "
                          "set it to a Unix time or unset it.") from None
    return max(value, DEFAULT_EPOCH)


def _copy_hashed(src: Path, dest: Path) -> tuple[str, int]:
    """Copy ``src`` to ``dest`` (never a link) and return the copy's (sha256, size)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        tail = " | ".join(lines[-4:])
        raise BundleError(f"{what} failed ({tail}); fix that and build again.")
    return proc


def _parse_lock(path: Path) -> dict[str, tuple[str, str, list[str]]]:
    """``name -> (name==version, version, hashes)`` of a hash-locked requirements file."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _LOCK_ENTRY.match(line)
        if match:
            current = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            out[current] = (f"{match.group(1)}=={match.group(2)}", match.group(2), [])
        elif current and (h := _HASH.search(line)):
            out[current][2].append(h.group(1))
        elif not line.startswith((" ", "\t")):
            current = None
    return out


def _platforms() -> list[str]:
    """PLATFORM and every older manylinux tag, newest first (pip does not expand PEP 600 tags)."""
    newest = int(PLATFORM.split("_")[2])
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(newest, 4, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def _pip_target(python_version: str) -> list[str]:
    tag = "cp" + python_version.replace(".", "")
    out = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
           "--abi", tag]
    for platform in _platforms():
        out += ["--platform", platform]
    return out


def _wheel_name_version(filename: str) -> tuple[str, str]:
    name, version = filename.split("-")[:2]
    return name, version


# -- steps -----------------------------------------------------------------------------------------


def _download_wheels(repo: Path, options: BuildOptions, cache: Path, dest: Path,
                     log: Log) -> None:
    """Every locked run-time (and, with --with-train, training) wheel into ``dest``."""
    locks = [repo / "requirements" / "run.lock"]
    if options.with_train:
        locks.append(repo / "requirements" / "train.lock")
    merged: dict[str, tuple[str, str, list[str]]] = {}
    for lock in locks:
        for name, (spec, version, hashes) in _parse_lock(lock).items():
            if name in merged and merged[name][1] != version:
                raise BundleError(f"{name} is locked at {merged[name][1]} and {version} in "
                                  "requirements/*.lock; regenerate the locks so they agree.")
            old = merged.get(name, (spec, version, []))[2]
            merged[name] = (spec, version, sorted(set(old) | set(hashes)))
    if not merged:
        raise BundleError(f"No locked requirements in {locks[0]}; regenerate it.")
    tag = "cp" + options.python_version.replace(".", "")
    store = cache / "bundle-wheels" / f"{tag}-{PLATFORM}"
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text("".join(
            f"{spec} " + " ".join(f"--hash=sha256:{h}" for h in hashes) + "\n"
            for spec, _, hashes in merged.values()
        ), encoding="utf-8")
        base = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--progress-bar",
                "off", "--disable-pip-version-check", *_pip_target(options.python_version)]
        pip = [*base, "--require-hashes", "-r", str(req)]
        offline = [*pip, "--no-index", "--find-links", str(store), "-d", str(dest)]
        if subprocess.run(offline, capture_output=True, check=False).returncode != 0:
            log(f"downloading {len(merged)} wheels for CPython {options.python_version} into "
                f"{store} ...")
            _run([*pip, "-d", str(store)], "Downloading the locked wheels (pip download)")
            _run(offline, "Collecting the locked wheels")
        if options.with_train:
            _run([*base, "torch==2.13.0", "-d", str(dest)], "Downloading torch 2.13.0 (CPU)")
            if not any("+cpu" in p.name for p in dest.glob("torch-*.whl")):
                raise BundleError(
                    "Only the CUDA build of torch 2.13.0 is available for CPython "
                    f"{options.python_version}; bundle --with-train for Python 3.11, whose CPU "
                    "wheel setup provides."
                )


def _llama_wheel(repo: Path, cache: Path, python_version: str) -> tuple[Path, list[str]]:
    """The portable llama-cpp-python wheel from the cache, and the CPU flags it needs."""
    pyproject = tomllib.loads((repo / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("llama-cpp-python==")]
    if not pins:
        raise BundleError("pyproject.toml does not pin llama-cpp-python==VERSION; pin it.")
    version = pins[0].split("==", 1)[1]
    tag = "cp" + python_version.replace(".", "")
    best: tuple[int, str, Path, str] | None = None
    for wheel in (cache / "wheels").glob(f"llama-cpp-python-{version}-*/llama_cpp_python-*.whl"):
        info = wheel.parent / "BUILD-INFO"
        if not info.is_file():
            continue
        text = info.read_text(encoding="utf-8", errors="replace")
        if "-DGGML_NATIVE=OFF" not in text:
            continue  # a native build crashes on other CPUs
        py, abi, plat = wheel.name[:-4].split("-")[-3:]
        if not plat.endswith("x86_64") or abi not in ("none", "abi3", tag):
            continue
        if py == tag:
            rank = 0
        elif py.startswith("py3") or (abi == "abi3" and py <= tag):
            rank = 1
        else:
            continue
        if best is None or (rank, wheel.name) < best[:2]:
            best = (rank, wheel.name, wheel, text)
    if best is None:
        raise BundleError(
            f"No portable llama-cpp-python {version} wheel for CPython {python_version} in "
            f"{cache / 'wheels'}; run scripts/setup.sh (with APPLIANCE_PYTHON=python"
            f"{python_version}) to build it."
        )
    args = re.search(r"CMAKE_ARGS=(.*)", best[3])
    flags = []
    for opt, cpu in _CPU_FLAGS.items():
        if args and re.search(rf"-D{opt}=ON\b", args.group(1)):
            flags.append(cpu)
    return best[2], flags


def _normalize_zip(src: Path, dest: Path, epoch: int) -> None:
    """Rewrite a wheel with sorted members, fixed times and modes (RECORD stays valid)."""
    stamp = time.gmtime(epoch)[:6]
    with zipfile.ZipFile(src) as zin:
        names = zin.namelist()
        dist_info = sorted(n for n in names if n.split("/")[0].endswith(".dist-info"))
        record = [n for n in dist_info if n.endswith("/RECORD")]
        order = sorted(n for n in names if n not in dist_info) + \
            [n for n in dist_info if n not in record] + record
        with zipfile.ZipFile(dest, "w") as zout:
            for name in order:
                info = zipfile.ZipInfo(name, date_time=stamp)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3
                info.external_attr = (0o100644 << 16)
                zout.writestr(info, zin.read(name), compresslevel=9)


def _build_appliance_wheel(repo: Path, dest: Path, epoch: int, log: Log) -> Path:
    """Build the appliance wheel from the checkout (a clean copy) into ``dest``."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "MANIFEST.in"):
            if (repo / name).is_file():
                shutil.copy2(repo / name, src / name)
        shutil.copytree(repo / "appliance", src / "appliance", ignore=ignore)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONDONTWRITEBYTECODE": "1"}
        dist = Path(tmp) / "dist"
        _run([sys.executable, "-c",
              "import sys, setuptools.build_meta as b; b.build_wheel(sys.argv[1])", str(dist)],
             "Building the appliance wheel (setuptools)", env=env, cwd=src)
        built = sorted(dist.glob("appliance-*.whl"))
        if len(built) != 1:
            raise BundleError("Building the appliance wheel produced no wheel; run "
                              "`pip wheel --no-deps .` in the checkout to see why.")
        out = dest / built[0].name
        _normalize_zip(built[0], out, epoch)
    log(f"built {out.name}")
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}"
                                for k, v in value.items()) + " }"
    raise BundleError(f"Cannot write {value!r} to the model manifest; fix the registry entry.")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _select_models(
    app: Appliance, ids: Sequence[str], embedders: Sequence[str]
) -> list[ModelEntry]:
    registry = app.registry
    chosen = [registry.get(i) for i in ids] if ids else \
        [e for e in registry if e.origin == "packaged"]
    for embedder in embedders:
        chosen.append(registry.get(embedder))
    out: dict[str, ModelEntry] = {}
    queue = list(chosen)
    while queue:
        entry = queue.pop(0)
        if entry.id in out:
            continue
        out[entry.id] = entry
        tokenizer = entry.extra.get("tokenizer")
        if isinstance(tokenizer, str) and tokenizer:
            queue.append(registry.get(tokenizer))
    roles = {e.role for e in out.values()}
    for role in ("generator", "embedder"):
        if role not in roles:
            raise BundleError(f"The bundle would have no {role} model; add one with --models ID "
                              "(`appliance models list` shows them).")
    return list(out.values())


def _write_models(entries: list[ModelEntry], root: Path, log: Log) -> list[dict[str, Any]]:
    """Copy model files (hash-checked) and write ``models/manifest.toml``."""
    packaged = packaged_models_dir().resolve()
    lines = [
        "# Model registry of this bundle (written by `appliance bundle build`).",
        "# Paths are relative to this folder; nothing loads a file whose sha256 differs.",
        "schema = 1",
        "",
    ]
    written: list[dict[str, Any]] = []
    used: set[str] = set()
    for entry in entries:
        try:
            rel = entry.path.resolve().relative_to(packaged).as_posix()
        except ValueError:
            rel = f"user/{entry.id}/{entry.path.name}"
        if not verify.valid_path(f"models/{rel}") or rel in used or rel == "manifest.toml":
            raise BundleError(f"Model file name {rel!r} of '{entry.id}' cannot go into a bundle "
                              "(use letters, digits, '.', '_', '-'); rename it.")
        used.add(rel)
        if not entry.path.is_file():
            raise BundleError(f"Model file {entry.path} of '{entry.id}' is missing; run "
                              "scripts/setup.sh to restore it.")
        log(f"model {entry.id} ({entry.path.stat().st_size / 1e6:.0f} MB)")
        digest, size = _copy_hashed(entry.path, root / "models" / rel)
        if digest != entry.sha256:
            raise BundleError(f"{entry.path} does not match its manifest sha256; run "
                              "scripts/setup.sh to restore it, then build again.")
        fields: dict[str, Any] = {
            "id": entry.id, "role": entry.role, "format": entry.format, "file": rel,
            "sha256": digest, "size": size,
        }
        for key in ("source", "licence", "description"):
            if getattr(entry, key):
                fields[key] = getattr(entry, key)
        if entry.default:
            fields["default"] = True
        if entry.lineage is not None:
            fields["lineage"] = entry.lineage
        fields.update(entry.extra)
        lines.append("[[model]]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in fields.items()]
        lines.append("")
        written.append({"id": entry.id, "file": f"models/{rel}", "sha256": digest, "size": size,
                        "role": entry.role, "format": entry.format, "licence": entry.licence,
                        "source": entry.source, "description": entry.description})
    text = "\n".join(lines)
    parsed = tomllib.loads(text)  # the writer must round-trip
    if [m["id"] for m in parsed["model"]] != [e.id for e in entries]:
        raise BundleError("The bundle's model manifest did not round-trip; report this bug.")
    (root / "models" / "manifest.toml").write_text(text, encoding="utf-8")
    return written


def _kb_embedder(app: Appliance, name: str) -> str:
    stats = app.kb_stats(name)
    embedder = stats.get("embedder")
    if not embedder:
        raise BundleError(f"Knowledge base '{name}' has no embedder recorded (is it empty?); "
                          f"ingest documents into it first.")
    return str(embedder)


def _copy_kb(app: Appliance, name: str, dest: Path) -> dict[str, Any]:
    """A consistent copy of a knowledge base (checkpoint, then VACUUM INTO)."""
    problems = app.kb_check(name)
    if problems:
        raise BundleError(f"Knowledge base '{name}' is inconsistent ({problems[0]}); repair it "
                          f"(`appliance kb check {name}`) before bundling it.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with app.open_kb(name) as kb:
        stats = kb.stats()
        with contextlib.suppress(apsw.Error):  # busy: VACUUM INTO still copies a snapshot
            kb.checkpoint()
        try:
            kb.conn.execute("VACUUM INTO ?", (str(dest),))
        except apsw.Error as exc:
            raise BundleError(f"Cannot copy knowledge base '{name}': {exc}; check the free "
                              "space at the output and retry.") from exc
    conn = apsw.Connection(str(dest))
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # one self-contained file on the stick
        result = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    if result != ["ok"]:
        raise BundleError(f"The copy of knowledge base '{name}' failed its integrity check "
                          f"({result[0]}); retry the build.")
    return {"name": name, "embedder": stats.get("embedder"), "documents": stats["documents"],
            "chunks": stats["chunks"]}


def _template(repo: Path, name: str, values: dict[str, str]) -> str:
    text = (repo / "packaging" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z_]+@", text)
    if leftover:
        raise BundleError(f"packaging/{name} has unknown placeholders {leftover}; fix it.")
    return text


def _git_commit(repo: Path) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _check_installable(root: Path, python_version: str) -> None:
    """Resolve requirements.txt against the wheelhouse alone, as the target's pip will."""
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "install", "-q", "--dry-run", "--ignore-installed",
              "--no-index", "--find-links", str(root / "wheels"), "--require-hashes",
              "--disable-pip-version-check", *_pip_target(python_version),
              "--platform", "linux_x86_64", "--target", tmp,
              "-r", str(root / "requirements.txt")],
             "Checking that the wheels install offline (pip install --dry-run)",
             env={**os.environ, "PIP_CONFIG_FILE": os.devnull})


def _finalize(root: Path) -> list[verify.Entry]:
    """Normalize modes and times; return the MANIFEST entries of every file."""
    entries: list[verify.Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel in verify.UNLISTED:
                continue
            if full.is_symlink() or not verify.valid_path(rel):
                raise BundleError(f"{rel!r} cannot go into a bundle (a link or an unsafe name); "
                                  "report this bug.")
            full.chmod(0o755 if rel == "install.sh" else 0o644)
            entries.append(verify.Entry(rel, verify.sha256_file(full), full.stat().st_size))
    return entries


def _set_times(root: Path, epoch: int) -> None:
    for dirpath, _dirs, filenames in os.walk(root, topdown=False):
        for name in filenames:
            os.utime(Path(dirpath) / name, (epoch, epoch))
        Path(dirpath).chmod(0o755)
        os.utime(dirpath, (epoch, epoch))


_BUNDLE_FIELDS = ("format", "appliance", "python", "platform", "models", "signer", "wheels")
"""Fields every bundle.json a build writes has (what tells an earlier bundle apart)."""


def _earlier_bundle(out: Path) -> str | None:
    """Why ``out`` (an existing folder) is not an earlier bundle; None when it is one.

    A bundle's bundle.json has the fields a build writes, its MANIFEST parses, and nothing
    is in the folder that the MANIFEST does not list (so replacing it loses nothing else).
    """
    try:
        info = json.loads(verify.read_capped(out / "bundle.json", verify.MANIFEST_LIMIT,
                                             "bundle.json").decode("utf-8"))
        entries = verify.read_manifest(out)
    except FileNotFoundError as exc:
        return f"it has no {Path(str(exc.filename)).name}"
    except (verify.VerifyError, UnicodeDecodeError, ValueError):
        return "its bundle.json or MANIFEST is not one a build writes"
    if not isinstance(info, dict) or any(k not in info for k in _BUNDLE_FIELDS) \
            or info.get("format") != 1:
        return "its bundle.json is not one a build writes"
    listed = {e.path for e in entries} | verify.UNLISTED
    try:
        present = dict(verify._walk(out))
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    extra = sorted(p for p, st in present.items()
                   if p not in listed or not stat.S_ISREG(st.st_mode))
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        return f"it holds files its MANIFEST does not list ({shown})"
    return None


def _check_out(out: Path) -> None:
    """BundleError unless ``out`` is missing, an empty folder or an earlier bundle."""
    if is_new(out, "give --out a folder whose parents are folders.", BundleError):
        return
    if out.is_symlink() or not out.is_dir():
        raise BundleError(f"{out} exists and is not a folder; give --out a new or empty folder "
                          "(a folder on the stick, not its root).")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise BundleError(f"Cannot list {out}: {exc.strerror or exc}; give --out a folder you "
                          "can write.") from exc
    if empty:
        return
    why = _earlier_bundle(out)
    if why is not None:
        raise BundleError(f"{out} is not empty and not an earlier bundle ({why}); nothing was "
                          "changed: give --out a new or empty folder (a folder on the stick, not "
                          "its root).")


# -- the build -------------------------------------------------------------------------------------


def build_bundle(app: Appliance, options: BuildOptions, log: Log | None = None) -> BuildReport:
    """Build the bundle described by ``options`` into ``options.out``."""
    say: Log = log or (lambda _msg: None)
    t0 = time.perf_counter()
    steps: dict[str, float] = {}
    if options.python_version not in PYTHON_VERSIONS:
        raise BundleError(f"Python {options.python_version} is not supported; use "
                          f"{' or '.join(PYTHON_VERSIONS)}.")
    repo = options.repo or source_checkout()
    cache = options.cache or cache_dir()
    epoch = _epoch()
    out = Path(options.out).expanduser().resolve()
    _check_out(out)
    kb_names = [validate_kb_name(n) for n in dict.fromkeys(options.kbs)]
    for name in kb_names:
        if not app.settings.kb_path(name).is_file():
            raise BundleError(f"Knowledge base '{name}' does not exist in "
                              f"{app.settings.kb_dir}; `appliance kb list` shows them.")
    private_key, public_pem = keys.load_private_key(options.key)
    signer = verify.fingerprint(public_pem)
    embedders = [_kb_embedder(app, n) for n in kb_names]
    models = _select_models(app, options.models, embedders)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as exc:
        raise BundleError(f"Cannot create the bundle folder {out}: {exc.strerror or exc} "
                          f"({exc.filename or out.parent}); give --out a folder whose parent is a "
                          "folder you can write.") from exc
    try:
        t = time.perf_counter()
        wheels_dir = root / "wheels"
        wheels_dir.mkdir()
        _download_wheels(repo, options, cache, wheels_dir, say)
        llama, cpu_flags = _llama_wheel(repo, cache, options.python_version)
        shutil.copyfile(llama, wheels_dir / llama.name)
        own = _build_appliance_wheel(repo, wheels_dir, epoch, say)
        steps["wheels"] = time.perf_counter() - t

        wheel_infos: list[WheelInfo] = []
        req_lines = []
        for wheel in sorted(wheels_dir.glob("*.whl")):
            digest = verify.sha256_file(wheel)
            wheel_infos.append(wheel_info(wheel, digest))
            name, version = _wheel_name_version(wheel.name)
            if wheel == own and options.with_train:
                name += "[train]"
            req_lines.append(f"{name}=={version} --hash=sha256:{digest}\n")
        (root / "requirements.txt").write_text("".join(sorted(req_lines)), encoding="utf-8")
        say(f"{len(req_lines)} wheels")

        t = time.perf_counter()
        model_records = _write_models(models, root, say)
        steps["models"] = time.perf_counter() - t

        t = time.perf_counter()
        kb_records = []
        for name in kb_names:
            record = _copy_kb(app, name, root / "kb" / f"{name}.sqlite")
            path = root / "kb" / f"{name}.sqlite"
            record.update(file=f"kb/{name}.sqlite", sha256=verify.sha256_file(path),
                          size=path.stat().st_size)
            kb_records.append(record)
            say(f"knowledge base {name} ({record['documents']} documents, "
                f"{record['chunks']} chunks)")
        steps["kbs"] = time.perf_counter() - t

        version = own.name.split("-")[1]
        values = {
            "PYTHON_VERSION": options.python_version,
            "CPU_FLAGS": " ".join(cpu_flags),
            "APPLIANCE_VERSION": version,
            "MODELS": "\n".join(f"- `{m['id']}` ({m['role']}, {m['size'] / 1e6:.0f} MB, "
                                f"{m['licence'] or 'licence not recorded'})"
                                for m in model_records),
            "KBS": "\n".join(f"- `{k['name']}` ({k['documents']} documents)"
                             for k in kb_records) or "- none",
        }
        (root / "install.sh").write_text(_template(repo, "install.sh", values), encoding="utf-8")
        (root / "README.md").write_text(_template(repo, "README.stick.md", values),
                                        encoding="utf-8")
        (root / "tools").mkdir()
        shutil.copyfile(Path(verify.__file__), root / "tools" / "verify.py")
        (root / verify.PUBLIC_KEY).write_bytes(public_pem)
        info = {
            "format": 1,
            "appliance": version,
            "python": options.python_version,
            "platform": PLATFORM,
            "cpu_flags": cpu_flags,
            "with_train": options.with_train,
            "models": [{k: m[k] for k in ("id", "role", "file", "sha256", "size")}
                       for m in model_records],
            "knowledge_bases": kb_records,
            "wheels": len(req_lines),
            "signer": signer,
            "source_commit": _git_commit(repo),
            "source_date_epoch": epoch,
        }
        (root / "bundle.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                          encoding="utf-8")
        (root / "sbom.cdx.json").write_bytes(build_sbom(
            appliance_version=version, wheels=wheel_infos, models=model_records,
            knowledge_bases=kb_records, python_version=options.python_version,
            platform=PLATFORM, epoch=epoch if "SOURCE_DATE_EPOCH" in os.environ else None,
        ))

        t = time.perf_counter()
        _check_installable(root, options.python_version)
        steps["check"] = time.perf_counter() - t

        t = time.perf_counter()
        entries = _finalize(root)
        manifest = verify.format_manifest(entries)
        (root / verify.MANIFEST).write_bytes(manifest)
        (root / verify.SIGNATURE).write_bytes(keys.sign(private_key, manifest))
        (root / verify.MANIFEST).chmod(0o644)
        (root / verify.SIGNATURE).chmod(0o644)
        _set_times(root, epoch)
        steps["manifest"] = time.perf_counter() - t

        _check_out(out)  # again: the folder may have changed during the build
        if os.path.lexists(out):
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            root.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            root.rename(out)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return BuildReport(
        out=out, files=len(entries), bytes=sum(e.size for e in entries),
        seconds=time.perf_counter() - t0, signer=signer,
        manifest_sha256=hashlib.sha256(manifest).hexdigest(), wheels=len(req_lines),
        models=[m["id"] for m in model_records], kbs=kb_names, steps=steps,
    )
