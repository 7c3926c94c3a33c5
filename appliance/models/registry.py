"""The model registry: two manifests with one layout.

The packaged manifest (``models/manifest.toml`` beside the code, or in an install prefix)
lists what setup provides, and ``models/built.toml`` beside it what setup built there from
the committed LoRA adapters (:mod:`appliance.train.packaged`); the user manifest
(``models/manifest.toml`` in the data directory) lists what ``appliance train`` registers.
Ids are unique across both. Nothing is
loaded unless its sha256 matches the manifest; hashes of large files are remembered by
(size, mtime, inode, ctime) so a check costs a ``stat`` after the first time, except for
``full`` checks (``appliance models verify``), which always read every byte.

Manifest entries are type-checked when read; the user manifest's ids must be valid model
ids and its files plain file names in the user models folder, so no entry can point a
removal outside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Settings, packaged_models_dir
from appliance.errors import ConfigError, ModelHashError, ModelNotFoundError

__all__ = ["BUILT_MANIFEST", "ModelEntry", "Registry", "sha256_file", "valid_model_id"]

BUILT_MANIFEST = "built.toml"
"""Packaged models that setup builds on the machine (fine-tuned from ``models/adapters``)."""

_SETUP_ONLY = {"acquire", "extra_files"}  # read by scripts/acquire_models.py only
# Where the manifest lies decides the origin, not what an entry says of itself: a user
# model carried in a bundle is packaged on the target.
_DERIVED = {"origin"}
_KNOWN = {"id", "role", "format", "file", "sha256", "size", "source", "licence", "description",
          "default", "lineage"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" lets "id\n" through
_FIELD_TYPES: dict[str, tuple[type, str]] = {
    "id": (str, "text"), "role": (str, "text"), "format": (str, "text"), "file": (str, "text"),
    "sha256": (str, "text"), "size": (int, "a whole number"), "source": (str, "text"),
    "licence": (str, "text"), "description": (str, "text"), "default": (bool, "true or false"),
    "lineage": (dict, "a table"),
}


def valid_model_id(model_id: str) -> bool:
    """Whether ``model_id`` is usable as a model id and file name (the rule of
    ``appliance train --out``: letters, digits, '.', '_', '-', at most 64, starting with a
    letter or digit, not ending in '.' or '.gguf')."""
    return bool(_ID.match(model_id)) and not model_id.endswith((".gguf", "."))


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ModelEntry:
    """One file of a manifest."""

    id: str
    role: str
    format: str
    path: Path
    sha256: str
    origin: str
    size: int | None = None
    source: str = ""
    licence: str = ""
    description: str = ""
    default: bool = False
    lineage: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The entry as ``appliance models list --json`` prints it."""
        out: dict[str, Any] = {
            "id": self.id,
            "role": self.role,
            "format": self.format,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.size,
            "origin": self.origin,
            "default": self.default,
            "source": self.source,
            "licence": self.licence,
        }
        if self.lineage is not None:
            out["lineage"] = self.lineage
        out.update(self.extra)
        return out


class Registry:
    """All registered models, packaged first, then the user's."""

    def __init__(self, entries: list[ModelEntry], hash_cache: Path | None = None) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            if entry.id in self._entries:
                raise ConfigError(
                    f"Model id '{entry.id}' is registered twice; remove one of the entries."
                )
            self._entries[entry.id] = entry
        self._hash_cache_path = hash_cache
        self._hash_cache: dict[str, list[Any]] | None = None

    @classmethod
    def load(cls, settings: Settings) -> Registry:
        """Read the packaged and the user manifest."""
        entries: list[ModelEntry] = []
        packaged = packaged_models_dir()
        entries += _read_manifest(packaged / "manifest.toml", packaged, "packaged")
        entries += _read_manifest(packaged / BUILT_MANIFEST, packaged, "packaged")
        user = settings.user_models_dir
        entries += _read_manifest(user / "manifest.toml", user, "user")
        return cls(entries, hash_cache=settings.home / "cache" / "model-hashes.json")

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._entries.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._entries

    def get(self, model_id: str) -> ModelEntry:
        """The entry for ``model_id``; ModelNotFoundError lists the known ids."""
        try:
            return self._entries[model_id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ModelNotFoundError(
                f"No model '{model_id}' is registered (known: {known}); "
                "run `appliance models list` to see them."
            ) from None

    def default(self, role: str) -> ModelEntry:
        """The default model of a role (the entry marked ``default``, else the first)."""
        of_role = [e for e in self._entries.values() if e.role == role]
        if not of_role:
            raise ModelNotFoundError(
                f"No {role} model is registered; run scripts/setup.sh to acquire the models."
            )
        marked = [e for e in of_role if e.default]
        return marked[-1] if marked else of_role[0]

    def resolve(self, model_id: str, verify: bool = True, *, full: bool = False) -> ModelEntry:
        """The entry for ``model_id`` after checking its file exists and matches its hash
        (``full``: hashed in full, never taken from the hash cache)."""
        entry = self.get(model_id)
        if not entry.path.is_file():
            raise ModelNotFoundError(
                f"Model file {entry.path} for '{model_id}' is missing; "
                "run scripts/setup.sh (or `appliance models verify`) to restore it."
            )
        if verify:
            self.verify(entry, full=full)
        return entry

    def verify(self, entry: ModelEntry, *, full: bool = False) -> None:
        """Raise ModelHashError unless the entry's file has the manifest's sha256.

        Without ``full`` a hash remembered for the same (size, mtime, inode, ctime) is
        trusted; with it every byte is read again (and the remembered hash refreshed).
        """
        actual = self._cached_sha256(entry.path, full=full)
        if actual != entry.sha256:
            raise ModelHashError(
                f"{entry.path} does not match the manifest (sha256 {actual[:12]}…, expected "
                f"{entry.sha256[:12]}…); it was changed or corrupted: run scripts/setup.sh to "
                "restore it."
            )

    def _cached_sha256(self, path: Path, *, full: bool = False) -> str:
        st = path.stat()
        key = str(path.resolve())
        # ctime too: restoring the mtime (touch -r) after a change still moves the ctime.
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        cache = self._load_hash_cache()
        hit = cache.get(key)
        if not full and isinstance(hit, list) and len(hit) == 5 and hit[:4] == stamp:
            return str(hit[4])
        digest = sha256_file(path)
        cache[key] = [*stamp, digest]
        self._save_hash_cache()
        return digest

    def _load_hash_cache(self) -> dict[str, list[Any]]:
        if self._hash_cache is None:
            self._hash_cache = {}
            if self._hash_cache_path and self._hash_cache_path.is_file():
                try:
                    data = json.loads(self._hash_cache_path.read_text(encoding="utf-8"))
                    if isinstance(data, dict):
                        self._hash_cache = data
                except (OSError, ValueError):
                    self._hash_cache = {}
        return self._hash_cache

    def _save_hash_cache(self) -> None:
        if not self._hash_cache_path or self._hash_cache is None:
            return
        try:
            self._hash_cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._hash_cache_path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._hash_cache), encoding="utf-8")
            os.replace(tmp, self._hash_cache_path)
        except OSError:
            pass  # the cache only saves time; a read-only data dir still works


def _read_manifest(path: Path, base: Path, origin: str) -> list[ModelEntry]:
    if not path.is_file():
        return []
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read the model manifest {path} ({exc}); fix or remove "
                          f"{path}.") from exc
    models = data.get("model", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise ConfigError(f"'model' in {path} must be a list of [[model]] tables; fix or "
                          f"remove {path}.")
    return [_entry(raw, i, path, base, origin) for i, raw in enumerate(models)]


def _entry(raw: dict[str, Any], i: int, path: Path, base: Path, origin: str) -> ModelEntry:
    """One manifest table as an entry; ConfigError names the entry and the bad field."""
    name = f"'{raw['id']}'" if isinstance(raw.get("id"), str) else str(i + 1)
    where = f"model entry {name} in {path}"
    fix = f"fix or remove that entry in {path}."
    missing = [k for k in ("id", "role", "format", "file", "sha256") if k not in raw]
    if missing:
        raise ConfigError(f"The {where} lacks {', '.join(missing)}; {fix}")
    for key, (kind, words) in _FIELD_TYPES.items():
        value = raw.get(key)
        if key in raw and (not isinstance(value, kind)
                           or (kind is int and isinstance(value, bool))):
            raise ConfigError(f"Field '{key}' of the {where} must be {words}, not "
                              f"{_toml_type(value)}; {fix}")
    if raw.get("size") is not None and raw["size"] < 0:
        raise ConfigError(f"Field 'size' of the {where} must not be negative; {fix}")
    file = Path(raw["file"])
    if origin == "user":
        if not valid_model_id(raw["id"]):
            raise ConfigError(
                f"The {where} has an invalid id (use letters, digits, '.', '_' or '-', at "
                f"most 64, starting with a letter or digit, not ending in .gguf); {fix}"
            )
        if file.name != raw["file"] or "\\" in raw["file"] or raw["file"].startswith(".") \
                or not raw["file"].endswith(".gguf"):
            raise ConfigError(f"Field 'file' of the {where} must be the name of a .gguf file "
                              f"in {base}, not '{raw['file']}'; {fix}")
    return ModelEntry(
        id=raw["id"],
        role=raw["role"],
        format=raw["format"],
        path=(file if file.is_absolute() else base / file).resolve(),
        sha256=raw["sha256"].lower(),
        origin=origin,
        size=raw.get("size"),
        source=raw.get("source", ""),
        licence=raw.get("licence", ""),
        description=raw.get("description", ""),
        default=raw.get("default", False),
        lineage=raw.get("lineage"),
        extra={k: v for k, v in raw.items()
               if k not in _KNOWN and k not in _SETUP_ONLY and k not in _DERIVED},
    )


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"
