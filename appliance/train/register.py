"""Registering models in the user manifest (``<data dir>/models/manifest.toml``).

Two kinds of entry: a model that ``appliance train`` made, with its lineage (the base's id
and sha256, the training data's sha256, the LoRA configuration, the training metrics and
the parity result), and a GGUF the user brought (:func:`add_model`, ``appliance models
add``), with what its header says of it instead. An entry names the GGUF (relative to the
manifest's folder), its sha256 and size. Ids are unique across the packaged and the user
manifest; an existing user id is replaced only with ``force``, a packaged one never.

The manifest is rewritten atomically (a temporary file renamed over it, after checking
that it parses back to the same data) under an advisory lock, and the GGUF is in place
before the entry that names it, so a kill at any moment leaves either the old or the new
registry, never an entry without its file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import math
import os
import re
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.errors import ConfigError, InputError, ModelError, ModelNotFoundError
from appliance.files import write_atomic
from appliance.models.gguf import GGUFInfo, probe_gguf
from appliance.models.registry import ModelEntry, Registry, sha256_file, valid_model_id
from appliance.train.errors import ModelExistsError

__all__ = [
    "add_model",
    "check_id_free",
    "dump_manifest",
    "register_model",
    "remove_model",
    "validate_model_id",
    "write_manifest",
]

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+\Z")

HEADER = (
    "# User model registry: models that `appliance train` or `appliance models add`\n"
    "# registered. Written by the appliance (comments are not kept); `appliance models\n"
    "# list --json` shows it.\n"
)


def validate_model_id(model_id: str) -> str:
    """``model_id`` if usable as an id and file name, else InputError."""
    if not valid_model_id(model_id):
        raise InputError(
            f"'{model_id}' is not a valid model id: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit, not ending in .gguf)."
        )
    return model_id


# -- TOML writing (the subset a manifest needs) ----------------------------------------------


def _key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        inner = ", ".join(f"{_key(str(k))} = {_value(v)}" for k, v in value.items()
                          if v is not None)
        return "{ " + inner + " }" if inner else "{}"
    raise ConfigError(f"Cannot write a {type(value).__name__} into the model manifest.")


def _table(lines: list[str], header: str, table: dict[str, Any], array: bool) -> None:
    lines.append(f"[[{header}]]" if array else f"[{header}]")
    nested = []
    for key, value in table.items():
        if value is None:
            continue
        if isinstance(value, dict):
            nested.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in nested:
        lines.append("")
        _table(lines, f"{header}.{_key(key)}", value, array=False)


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value if v is not None]
    return value


def dump_manifest(doc: dict[str, Any], header: str = HEADER) -> str:
    """TOML text of a manifest: ``header`` (comment lines), top-level scalars, then one
    ``[[model]]`` per entry.

    Raises ConfigError unless the text parses back to ``doc`` (``None`` values dropped).
    """
    clean = _drop_none(doc)
    lines = [header.rstrip("\n")]
    for key, value in clean.items():
        if key != "model" and not isinstance(value, dict):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in clean.items():
        if key != "model" and isinstance(value, dict):
            lines.append("")
            _table(lines, _key(key), value, array=False)
    for entry in clean.get("model", []):
        lines.append("")
        _table(lines, "model", entry, array=True)
    text = "\n".join(lines) + "\n"
    expected = json.loads(json.dumps(clean))
    if not expected.get("model"):
        expected.pop("model", None)
    if tomllib.loads(text) != expected:
        raise ConfigError("The model manifest would not read back as written; nothing was "
                          "changed (report this as a bug).")
    return text


# -- the user manifest ------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / ".manifest.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"schema": 1, "model": []}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read the user model manifest {path}: {exc}; fix or move "
                          "it away.") from exc
    data.setdefault("schema", 1)
    data.setdefault("model", [])
    return data


def write_manifest(path: Path, doc: dict[str, Any], header: str = HEADER) -> None:
    """Write ``doc`` as a manifest atomically (checked, fsynced, renamed over ``path``)."""
    write_atomic(path, dump_manifest(doc, header))


def register_model(
    settings: Settings,
    model_id: str,
    gguf: Path,
    *,
    lineage: dict[str, Any] | None,
    force: bool = False,
    description: str = "",
    licence: str = "",
    source: str = "",
    extra: dict[str, Any] | None = None,
    keep_source: bool = False,
) -> ModelEntry:
    """Move ``gguf`` into the user models folder and add (or with ``force`` replace) the
    entry ``model_id`` with its sha256, size and ``lineage`` (None: not a trained model).

    With ``keep_source`` the file is hard-linked (on another file system: copied) instead
    of moved, so the user's own file stays where it was.
    """
    validate_model_id(model_id)
    folder = settings.user_models_dir
    manifest = folder / "manifest.toml"
    with _locked(folder):
        check_id_free(settings, model_id, force)
        doc = _read(manifest)
        old = [e for e in doc["model"] if e.get("id") == model_id]
        tmp = folder / f".{model_id}.gguf.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            if not keep_source:
                shutil.move(str(gguf), str(tmp))
            else:
                try:
                    os.link(gguf, tmp)
                except OSError:
                    shutil.copyfile(gguf, tmp)
            digest = sha256_file(tmp)  # read once: it also names a replacement's file
            name = f"{model_id}.gguf"
            if (folder / name).exists() or any(e.get("file") == name for e in doc["model"]):
                name = f"{model_id}.{digest[:12]}.gguf"
            dest = folder / name
            os.replace(tmp, dest)
        except BaseException:  # a full disk or Ctrl+C mid-copy: no half file left behind
            tmp.unlink(missing_ok=True)
            raise
        entry: dict[str, Any] = {
            "id": model_id,
            "role": "generator",
            "format": "gguf",
            "file": name,
            "sha256": digest,
            "size": dest.stat().st_size,
            "source": source,
            "licence": licence,
            "description": description,
            "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
            **(extra or {}),
            "lineage": lineage,
        }
        doc["model"] = [e for e in doc["model"] if e.get("id") != model_id] + [entry]
        write_manifest(manifest, doc)
        for e in old:
            stale = folder / str(e.get("file", ""))
            if e.get("file") and e.get("file") != name and stale.is_file() \
                    and stale.resolve().parent == folder.resolve():
                stale.unlink()
    return Registry.load(settings).get(model_id)


def add_model(
    settings: Settings,
    gguf: Path,
    model_id: str,
    *,
    force: bool = False,
    description: str = "",
    licence: str = "",
    source: str = "",
) -> tuple[ModelEntry, GGUFInfo]:
    """Register a GGUF chat model the user brings, under ``model_id`` in the user manifest.

    llama.cpp reads the file's header first (:func:`appliance.models.gguf.probe_gguf`); a
    file that is not GGUF, that llama.cpp cannot read, or that has no chat template (a base
    model cannot answer questions) is refused before anything is written. The file is
    hard-linked into the user models folder, or copied where it lies on another file
    system; the user's own file is left as it is. The entry has no lineage, so it answers
    in ``base`` and ``rag`` (and ``ft`` / ``hybrid``) only when picked with ``--model`` or
    the ``generate.model`` setting. ``licence`` defaults to the file's ``general.license``
    and ``source`` to the file's path.
    """
    validate_model_id(model_id)
    check_id_free(settings, model_id, force, "--id")
    gguf = Path(gguf)
    info = probe_gguf(gguf)
    if info.template_error:
        raise ModelError(info.template_error)
    if not info.chat_template:
        raise ModelError(f"{gguf.name} has no chat template, so it cannot answer questions "
                         "(a base model, not an instruct one); add an instruct model's GGUF.")
    summary = ", ".join(x for x in (info.name, info.size_label, info.architecture) if x)
    entry = register_model(
        settings, model_id, gguf, lineage=None, force=force, keep_source=True,
        description=description or f"added with `appliance models add` ({summary})",
        licence=licence or info.licence, source=source or str(gguf.resolve()),
        extra={"gguf": info.to_json()},
    )
    return entry, info


def check_id_free(settings: Settings, model_id: str, force: bool, option: str = "--out"
                  ) -> None:
    """Raise ModelExistsError if ``model_id`` is packaged, or registered and not ``force``
    (``option`` names the command's option that sets the id)."""
    registry = Registry.load(settings)
    if model_id not in registry:
        return
    entry = registry.get(model_id)
    if entry.origin != "user":
        raise ModelExistsError(
            f"'{model_id}' is a packaged model and cannot be replaced; choose another {option}."
        )
    if not force:
        raise ModelExistsError(
            f"A model '{model_id}' is already registered; choose another {option}, or add "
            "--force to replace it."
        )


def remove_model(settings: Settings, model_id: str, delete_file: bool = True) -> ModelEntry:
    """Remove a user model's entry (and its file); packaged models are refused."""
    folder = settings.user_models_dir
    with _locked(folder):
        entry = Registry.load(settings).get(model_id)
        if entry.origin != "user":
            raise InputError(
                f"'{model_id}' is a packaged model; only the user's models (from "
                "`appliance train` or `appliance models add`) can be removed."
            )
        manifest = folder / "manifest.toml"
        doc = _read(manifest)
        kept = [e for e in doc["model"] if e.get("id") != model_id]
        if len(kept) == len(doc["model"]):
            raise ModelNotFoundError(f"No user model '{model_id}' in {manifest}.")
        doc["model"] = kept
        write_manifest(manifest, doc)
        if delete_file and entry.path.is_file() \
                and entry.path.resolve().parent == folder.resolve():
            entry.path.unlink()
    return entry
