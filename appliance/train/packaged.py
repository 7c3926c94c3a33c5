"""Packaged fine-tuned models: committed LoRA adapters that setup builds into GGUF generators.

A LoRA adapter that the project trained lives in git under ``models/adapters/<id>/`` (it is
small; the merged model is not): the peft files (``adapter_config.json``,
``adapter_model.safetensors``), ``train_config.json``, ``metrics.json``, ``parity.jsonl``
(held-out conversations for the parity check) and ``lineage.json``, which names the base
model (registry id and sha256), the GGUF type, the sha256 of every file above, the data,
the command that reproduces the adapter and its ``calibration`` (``abstain_margin``, the
answer pipeline's abstention margin for this model, chosen on the development split).

:func:`build_packaged` (``appliance models build``, run by ``scripts/setup.sh``) merges each
adapter into its base, converts and quantizes the result with the pinned llama.cpp and runs
the parity check, exactly as ``appliance train`` does, then places the GGUF in the packaged
models folder and lists it in ``models/built.toml``, which the registry reads as packaged.
A built GGUF is cached under ``<cache>/built/<key>/`` (the key hashes the adapter, the base
and the llama.cpp version), so a fresh checkout on the same machine links it in seconds.

torch, transformers and peft load only inside :func:`build_adapter`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import Settings, packaged_models_dir
from appliance.errors import ConfigError
from appliance.models.registry import BUILT_MANIFEST, Registry, sha256_file
from appliance.train.errors import ParityError

__all__ = [
    "ADAPTER_FILES",
    "PackagedAdapter",
    "build_adapter",
    "build_packaged",
    "find_adapters",
    "publish_adapter",
]

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "train_config.json",
                 "metrics.json", "parity.jsonl")
"""Files of a committed adapter whose sha256 ``lineage.json`` records."""

MAX_ADAPTER_BYTES = 20 * 1024 * 1024


@dataclass(frozen=True)
class PackagedAdapter:
    """One committed adapter folder and its ``lineage.json``."""

    folder: Path
    lineage: dict[str, Any]

    @property
    def id(self) -> str:
        """The registry id of the model built from it."""
        return str(self.lineage["id"])

    @property
    def base_id(self) -> str:
        """The registry id of the base model."""
        return str(self.lineage["base"]["id"])

    @property
    def quant(self) -> str:
        """The GGUF type of the built model."""
        return str(self.lineage.get("quant", "q8_0"))

    def verify(self) -> None:
        """Raise ConfigError unless every file matches the sha256 in ``lineage.json``."""
        recorded = self.lineage.get("files", {})
        for name in ADAPTER_FILES:
            path = self.folder / name
            if not path.is_file():
                raise ConfigError(f"{path} is missing; restore models/adapters from git.")
            if recorded.get(name) != sha256_file(path):
                raise ConfigError(
                    f"{path} does not match its lineage.json sha256; restore it from git "
                    "(`git checkout -- models/adapters`)."
                )

    def build_key(self, base_sha256: str, llama_version: str) -> str:
        """What a cached build depends on, hashed."""
        parts = {"files": self.lineage.get("files", {}), "base": base_sha256,
                 "quant": self.quant, "llama_cpp": llama_version, "layout": 1}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def find_adapters(models_dir: Path | None = None) -> list[PackagedAdapter]:
    """The committed adapters under ``<models>/adapters``, sorted by folder name."""
    root = (models_dir or packaged_models_dir()) / "adapters"
    found: list[PackagedAdapter] = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        lineage_file = folder / "lineage.json"
        if not lineage_file.is_file():
            continue
        try:
            lineage = json.loads(lineage_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"Cannot read {lineage_file}: {exc}; restore it from git.") \
                from exc
        if not isinstance(lineage, dict) or "id" not in lineage or "base" not in lineage:
            raise ConfigError(f"{lineage_file} lacks 'id' or 'base'; restore it from git.")
        found.append(PackagedAdapter(folder, lineage))
    return found


def _parity_conversations(adapter: PackagedAdapter) -> list[list[dict[str, Any]]]:
    convs = []
    for line in (adapter.folder / "parity.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            convs.append(json.loads(line)["messages"])
    return convs


def build_adapter(adapter: PackagedAdapter, settings: Settings, registry: Registry,
                  work: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Merge, convert, quantize and parity-check one adapter; (GGUF in ``work``, parity).

    Raises ParityError when the GGUF does not match the merged model.
    """
    import torch
    from peft import PeftModel

    from appliance.train import export as ex
    from appliance.train.lora import ChatEncoder, auto_threads, load_base, resolve_base
    from appliance.train.parity import check_parity

    torch.set_num_threads(auto_threads())
    spec = resolve_base(adapter.base_id, registry)
    if spec.sha256 != adapter.lineage["base"].get("sha256"):
        raise ConfigError(
            f"The adapter {adapter.id} was trained on a base with another sha256 than "
            f"'{spec.id}' has now; rerun scripts/setup.sh to restore the models."
        )
    t = time.perf_counter()
    model, tokenizer = load_base(spec)
    model = PeftModel.from_pretrained(model, str(adapter.folder), is_trainable=False)
    merged = ex.merge_adapter(model)
    log(f"{adapter.id}: merged into {spec.id} ({time.perf_counter() - t:.0f} s)")
    t = time.perf_counter()
    exported = ex.export_merged(merged, tokenizer, work, adapter.id, adapter.quant,
                                work / "export.log")
    log(f"{adapter.id}: converted and quantized to {adapter.quant} "
        f"({time.perf_counter() - t:.0f} s)")
    parity = check_parity(merged, ChatEncoder(tokenizer), exported.gguf,
                          _parity_conversations(adapter), adapter.quant, held_out=True)
    shutil.rmtree(exported.merged_dir, ignore_errors=True)
    log(f"{adapter.id}: parity {parity.summary()}")
    if not parity.passed:
        raise ParityError(
            f"The GGUF built from models/adapters/{adapter.folder.name} does not match the "
            f"merged model ({'; '.join(parity.problems)}); it was not registered.", parity)
    return exported.gguf, parity.to_json()


def _place(src: Path, dest: Path) -> None:
    """Hard-link (else copy) ``src`` to ``dest`` atomically.

    A ``dest`` that already is ``src`` is left alone: renaming one hard link over another
    of the same file does nothing and succeeds (POSIX rename), which left the temporary
    link behind in models/ on every later build.
    """
    if dest.exists() and os.path.samefile(src, dest):
        return
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _write_manifest(path: Path, entries: list[dict[str, Any]]) -> None:
    from appliance.train.register import write_manifest

    write_manifest(path, {"schema": 1, "model": entries},
                   "# Written by `appliance models build` (scripts/setup.sh): packaged models "
                   "built\n# on this machine from models/adapters. Do not edit; rerun setup "
                   "instead.\n")


def _entry(adapter: PackagedAdapter, gguf: Path, sha: str, parity: dict[str, Any],
           base: Any) -> dict[str, Any]:
    lin = adapter.lineage
    lineage = {k: v for k, v in lin.items() if k not in ("id", "description", "default")}
    lineage["build_parity"] = parity
    entry: dict[str, Any] = {
        "id": adapter.id, "role": "generator", "format": "gguf", "file": gguf.name,
        "sha256": sha, "size": gguf.stat().st_size, "default": bool(lin.get("default", False)),
        "source": f"built by setup from models/adapters/{adapter.folder.name} + {base.id}",
        "licence": base.licence, "description": str(lin.get("description", "")),
        "chat_template": "gguf", "lineage": lineage,
    }
    if "n_ctx_train" in base.extra:
        entry["n_ctx_train"] = base.extra["n_ctx_train"]
    margin = lin.get("calibration", {}).get("abstain_margin")
    if isinstance(margin, (int, float)):
        entry["abstain_margin"] = float(margin)
    return entry


def build_packaged(settings: Settings, log: Callable[[str], None] | None = None,
                   *, models_dir: Path | None = None, force: bool = False) -> list[str]:
    """Build every committed adapter that is not built yet; the ids now in ``built.toml``.

    Each adapter's files are checked against its lineage first. A GGUF already in the
    cache under the same key is reused (``force`` rebuilds it).
    """
    from appliance.config import cache_dir
    from appliance.train.export import llama_version

    say = log or (lambda _msg: None)
    folder = models_dir or packaged_models_dir()
    adapters = find_adapters(folder)
    registry = Registry.load(settings)
    entries: list[dict[str, Any]] = []
    for adapter in adapters:
        adapter.verify()
        base = registry.get(adapter.base_id)
        key = adapter.build_key(base.sha256, llama_version())
        slot = cache_dir() / "built" / key
        cached = slot / f"{adapter.id}.gguf"
        meta_file = slot / "build.json"
        if force or not (cached.is_file() and meta_file.is_file()):
            work = slot.with_name(f".{key}.{os.getpid()}.tmp")
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            try:
                gguf, parity = build_adapter(adapter, settings, registry, work, say)
                meta = {"sha256": sha256_file(gguf), "parity": parity}
                (work / "build.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
                for stale in ("export.log",):
                    (work / stale).unlink(missing_ok=True)
                shutil.rmtree(slot, ignore_errors=True)
                os.replace(work, slot)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        else:
            say(f"{adapter.id}: built earlier ({slot})")
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if sha256_file(cached) != meta["sha256"]:
            shutil.rmtree(slot, ignore_errors=True)
            raise ConfigError(f"The cached build {cached} was changed; rerun scripts/setup.sh "
                              "to build it again.")
        dest = folder / cached.name
        _place(cached, dest)
        entries.append(_entry(adapter, dest, meta["sha256"], meta["parity"], base))
    built = folder / BUILT_MANIFEST
    if entries:
        _write_manifest(built, entries)
    else:
        built.unlink(missing_ok=True)
    return [e["id"] for e in entries]


def publish_adapter(settings: Settings, run_id: str, dest_root: Path, *, out_id: str,
                    description: str, reproduce: list[str], data_note: str,
                    parity_examples: int = 4, default: bool = False) -> Path:
    """Copy the finished adapter of training run ``run_id`` (registered by ``appliance
    train``) into ``dest_root/<out_id>/`` with its lineage, ready to commit."""
    from appliance.train.data import read_chat_jsonl, split_examples
    from appliance.train.lora import RunDir

    registry = Registry.load(settings)
    trained = registry.get(run_id)
    if not trained.lineage:
        raise ConfigError(f"'{run_id}' has no lineage; it was not made by `appliance train`.")
    run = RunDir.for_id(settings, run_id)
    record = run.read_run() or {}
    data_path = Path(str(record.get("data", {}).get("path", "")))
    if not (run.adapter / "adapter_model.safetensors").is_file() or not data_path.is_file():
        raise ConfigError(f"The run folder {run.root} lacks its adapter or data; retrain it.")
    size = (run.adapter / "adapter_model.safetensors").stat().st_size
    if size > MAX_ADAPTER_BYTES:
        raise ConfigError(f"The adapter is {size / 2**20:.1f} MiB, over the 20 MiB that may "
                          "be committed; train with a lower --rank.")
    from appliance.train.config import TrainConfig

    config = TrainConfig.from_dict(record["config"])
    _, val = split_examples(read_chat_jsonl(data_path), config.val_split, config.seed)
    dest = dest_root / out_id
    tmp = dest_root / f".{out_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ADAPTER_FILES[:4]:
        shutil.copyfile(run.adapter / name, tmp / name)
    with (tmp / "parity.jsonl").open("w", encoding="utf-8") as fh:
        for ex in val[:parity_examples]:
            fh.write(json.dumps({"messages": ex.messages}, ensure_ascii=False) + "\n")
    lin = dict(trained.lineage)
    lineage = {
        "id": out_id, "description": description, "default": default,
        "base": {"id": lin["base"]["id"], "sha256": lin["base"]["sha256"]},
        "quant": lin.get("export", {}).get("quant", config.quant),
        "data": {**lin.get("data", {}), "note": data_note},
        "reproduce": reproduce,
        "lora": lin.get("lora"), "metrics": lin.get("metrics"),
        "parity": lin.get("parity"), "fingerprint": lin.get("fingerprint"),
        "versions": lin.get("versions"),
        "reference_gguf_sha256": trained.sha256,
        "files": {name: sha256_file(tmp / name) for name in ADAPTER_FILES},
    }
    (tmp / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest
