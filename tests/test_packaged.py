"""Committed adapters and the packaged models setup builds from them (no model loads here;
tests/test_train_integration.py builds one for real)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError
from appliance.generate import default_mode, generator_id
from appliance.models import Registry
from appliance.train.packaged import ADAPTER_FILES, find_adapters


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _models_dir(tmp_path: Path, built: bool) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    base = b"base-gguf"
    (models / "base.gguf").write_bytes(base)
    (models / "manifest.toml").write_text(
        'schema = 1\n[[model]]\nid = "base"\nrole = "generator"\nformat = "gguf"\n'
        f'file = "base.gguf"\nsha256 = "{_sha(base)}"\ndefault = true\n')
    if built:
        tuned = b"tuned-gguf"
        (models / "tuned.gguf").write_bytes(tuned)
        (models / "built.toml").write_text(
            'schema = 1\n[[model]]\nid = "tuned"\nrole = "generator"\nformat = "gguf"\n'
            f'file = "tuned.gguf"\nsha256 = "{_sha(tuned)}"\ndefault = true\n'
            '[model.lineage]\nbase = { id = "base" }\n')
    return models


@pytest.mark.parametrize("built", [True, False])
def test_built_manifest_is_packaged_and_makes_hybrid_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, built: bool
) -> None:
    monkeypatch.setenv("APPLIANCE_MODELS_DIR", str(_models_dir(tmp_path, built)))
    settings = load_settings(home=tmp_path / "home")
    registry = Registry.load(settings)
    assert generator_id(registry, settings, "rag") == "base"
    if built:
        entry = registry.resolve("tuned")  # hash-checked
        assert entry.origin == "packaged" and entry.lineage
        assert default_mode(registry) == "hybrid"
        assert generator_id(registry, settings, "hybrid") == "tuned"
    else:
        assert default_mode(registry) == "rag"
        with pytest.raises(Exception, match="needs a fine-tuned model"):
            generator_id(registry, settings, "hybrid")


def _adapter(root: Path) -> Path:
    folder = root / "adapters" / "tuned"
    folder.mkdir(parents=True)
    files = {}
    for name in ADAPTER_FILES:
        (folder / name).write_text(f"{name} contents")
        files[name] = _sha(f"{name} contents".encode())
    lineage = {"id": "tuned", "base": {"id": "base", "sha256": "0" * 64}, "quant": "q8_0",
               "files": files}
    (folder / "lineage.json").write_text(json.dumps(lineage))
    return folder


def test_adapter_files_are_checked_against_their_lineage(tmp_path: Path) -> None:
    folder = _adapter(tmp_path)
    (adapter,) = find_adapters(tmp_path)
    assert (adapter.id, adapter.base_id, adapter.quant) == ("tuned", "base", "q8_0")
    adapter.verify()
    key = adapter.build_key("a" * 64, "0.3.36")
    assert key == adapter.build_key("a" * 64, "0.3.36") != adapter.build_key("b" * 64, "0.3.36")
    (folder / "adapter_model.safetensors").write_text("tampered")
    with pytest.raises(ConfigError, match="does not match its lineage"):
        adapter.verify()
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(ConfigError, match="is missing"):
        adapter.verify()


def test_a_broken_lineage_is_a_clear_error(tmp_path: Path) -> None:
    folder = _adapter(tmp_path)
    (folder / "lineage.json").write_text('{"id": "tuned"}')
    with pytest.raises(ConfigError, match="lacks 'id' or 'base'"):
        find_adapters(tmp_path)
    (folder / "lineage.json").write_text("{not json")
    with pytest.raises(ConfigError, match="Cannot read"):
        find_adapters(tmp_path)
    assert find_adapters(tmp_path / "nowhere") == []


def test_placing_a_built_model_twice_leaves_no_temporary_link(tmp_path: Path) -> None:
    """Setup places the cached build into models/ on every run; a second placement of the
    same file used to rename a hard link over its twin, which POSIX makes a no-op, so
    '.<name>.<pid>.tmp' stayed in models/ each time."""
    from appliance.train.packaged import _place

    cache, models = tmp_path / "cache", tmp_path / "models"
    cache.mkdir()
    models.mkdir()
    (cache / "tuned.gguf").write_bytes(b"tuned-gguf")
    for _ in range(2):
        _place(cache / "tuned.gguf", models / "tuned.gguf")
    assert sorted(p.name for p in models.iterdir()) == ["tuned.gguf"]
    (cache / "tuned.gguf").unlink()  # a rebuilt cache entry is a new file: placed again
    (cache / "tuned.gguf").write_bytes(b"rebuilt")
    _place(cache / "tuned.gguf", models / "tuned.gguf")
    assert (models / "tuned.gguf").read_bytes() == b"rebuilt"
    assert sorted(p.name for p in models.iterdir()) == ["tuned.gguf"]


def test_origin_comes_from_where_the_manifest_lies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user model carried in a bundle keeps its user manifest's fields, 'origin = "user"'
    among them; on the target it is packaged, and `models list --json` must say so."""
    models = _models_dir(tmp_path, built=False)
    mine = b"my-gguf"
    (models / "mine.gguf").write_bytes(mine)
    with (models / "manifest.toml").open("a") as fh:
        fh.write('[[model]]\nid = "mine"\nrole = "generator"\nformat = "gguf"\n'
                 f'file = "mine.gguf"\nsha256 = "{_sha(mine)}"\norigin = "user"\n')
    monkeypatch.setenv("APPLIANCE_MODELS_DIR", str(models))
    entry = Registry.load(load_settings(home=tmp_path / "home")).get("mine")
    assert entry.origin == "packaged" and entry.to_json()["origin"] == "packaged"
