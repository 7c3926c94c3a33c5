"""The model registry: two manifests with one layout.

The packaged manifest (``models/manifest.toml`` beside the code, or in an install prefix)
lists what setup provides, and ``models/built.toml`` beside it what setup built there from
the committed LoRA adapters (:mod:`appliance.train.packaged`); the user manifest
(``models/manifest.toml`` in the data directory) lists what ``appliance train`` registers.
Ids are unique across both. Nothing is
loaded unless its sha256 matches the manifest; hashes of large files are remembered by
(size, mtime, inode) so a check costs a ``stat`` after the first time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import Settings, packaged_models_dir
from appliance.errors import ConfigError, ModelHashError, ModelNotFoundError

__all__ = ["BUILT_MANIFEST", "ModelEntry", "Registry", "sha256_file"]

BUILT_MANIFEST = "built.toml"
"""Packaged models that setup builds on the machine (fine-tuned from ``models/adapters``)."""

_SETUP_ONLY = {"acquire", "extra_files"}  # read by scripts/acquire_models.py only
_KNOWN = {"id", "role", "format", "file", "sha256", "size", "source", "licence", "description",
          "default", "lineage"}


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

    def resolve(self, model_id: str, verify: bool = True) -> ModelEntry:
        """The entry for ``model_id`` after checking its file exists and matches its hash."""
        entry = self.get(model_id)
        if not entry.path.is_file():
            raise ModelNotFoundError(
                f"Model file {entry.path} for '{model_id}' is missing; "
                "run scripts/setup.sh (or `appliance models verify`) to restore it."
            )
        if verify:
            self.verify(entry)
        return entry

    def verify(self, entry: ModelEntry) -> None:
        """Raise ModelHashError unless the entry's file has the manifest's sha256."""
        actual = self._cached_sha256(entry.path)
        if actual != entry.sha256:
            raise ModelHashError(
                f"{entry.path} does not match the manifest (sha256 {actual[:12]}…, expected "
                f"{entry.sha256[:12]}…); it was changed or corrupted: run scripts/setup.sh to "
                "restore it."
            )

    def _cached_sha256(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
        cache = self._load_hash_cache()
        hit = cache.get(key)
        if hit and hit[:3] == stamp:
            return str(hit[3])
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
        raise ConfigError(f"Cannot read the model manifest {path}: {exc}.") from exc
    entries = []
    for i, raw in enumerate(data.get("model", [])):
        missing = [k for k in ("id", "role", "format", "file", "sha256") if k not in raw]
        if missing:
            raise ConfigError(
                f"Model entry {i + 1} in {path} lacks {', '.join(missing)}; fix the manifest."
            )
        file = Path(raw["file"])
        entries.append(
            ModelEntry(
                id=str(raw["id"]),
                role=str(raw["role"]),
                format=str(raw["format"]),
                path=(file if file.is_absolute() else base / file).resolve(),
                sha256=str(raw["sha256"]).lower(),
                origin=origin,
                size=raw.get("size"),
                source=str(raw.get("source", "")),
                licence=str(raw.get("licence", "")),
                description=str(raw.get("description", "")),
                default=bool(raw.get("default", False)),
                lineage=raw.get("lineage"),
                extra={k: v for k, v in raw.items() if k not in _KNOWN and k not in _SETUP_ONLY},
            )
        )
    return entries
