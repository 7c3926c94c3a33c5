"""Fine-tuning: chat JSONL -> LoRA (peft) -> merge -> GGUF -> quantize -> parity -> registry.

:func:`fine_tune` runs the whole chain; the stages live in ``data`` (validation, no torch),
``config``, ``lora`` (training, checkpoints, resume), ``export`` (merge, convert,
quantize), ``parity`` and ``register``; ``grounded`` builds the behaviour data.

Importing this package imports neither torch nor transformers nor peft (the ``[train]``
extra): they load inside the functions that train, merge or compare.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.train.config import QUANT_TYPES, RunOptions, TrainConfig
from appliance.train.data import DataReport, validate_chat_jsonl
from appliance.train.errors import (
    ExportError,
    ModelExistsError,
    ParityError,
    TrainingDataError,
    TrainingError,
)

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.models import ModelEntry, Registry
    from appliance.train.lora import BaseSpec, ProgressFn
    from appliance.train.parity import ParityResult

__all__ = [
    "QUANT_TYPES",
    "DataReport",
    "ExportError",
    "FineTuneResult",
    "ModelExistsError",
    "ParityError",
    "RunOptions",
    "TrainConfig",
    "TrainingDataError",
    "TrainingError",
    "default_out_id",
    "fine_tune",
    "validate_chat_jsonl",
]


@dataclass
class FineTuneResult:
    """What :func:`fine_tune` produced."""

    entry: ModelEntry | None
    """The registered entry (None when parity failed and nothing was registered)."""
    gguf: Path
    metrics: dict[str, Any]
    parity: ParityResult
    lineage: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    resumed_from: int = 0
    skipped_training: bool = False
    adapter_gguf: Path | None = None


def default_out_id(base_id: str, data: Path, quant: str) -> str:
    """``<base without its quant suffix>-<data file stem>-<quant>``, e.g.
    ``smollm2-135m-instruct-grounded-q8_0``."""
    import re

    stem = Path(base_id).name
    stem = re.sub(r"[-_.](q\d+(_[a-z0-9]+)*|f16|f32|bf16)$", "", stem, flags=re.I)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", data.stem).strip("-.") or "data"
    return f"{stem}-{name}-{quant}"[-64:].lstrip("-._")


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "peft", "llama-cpp-python"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def fine_tune(
    data: Path,
    base: str,
    settings: Settings,
    registry: Registry,
    *,
    out_id: str | None = None,
    config: TrainConfig | None = None,
    options: RunOptions | None = None,
    force: bool = False,
    adapter_gguf: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
    report: DataReport | None = None,
) -> FineTuneResult:
    """Train a LoRA adapter on ``data`` for ``base``, export it and register it as ``out_id``.

    Fails fast, before loading any model, on invalid data (TrainingDataError with line
    numbers), a taken id (ModelExistsError, unless ``force``), a missing converter or
    missing training packages. A failed parity check raises ParityError and registers
    nothing unless ``force``.
    """
    from appliance.train import export as ex
    from appliance.train.lora import RunDir, require_train_packages, resolve_base, train_lora
    from appliance.train.register import check_id_free, register_model, validate_model_id

    config = config or TrainConfig()
    options = options or RunOptions()
    say = log or (lambda _msg: None)
    times: dict[str, float] = {}
    report = report or validate_chat_jsonl(data)
    report.raise_if_invalid()
    spec: BaseSpec = resolve_base(base, registry)
    out_id = validate_model_id(out_id or default_out_id(spec.id, data, config.quant))
    check_id_free(settings, out_id, force)
    ex.converter_dir()
    require_train_packages()

    t = time.perf_counter()
    trained = train_lora(report, spec, out_id, config, settings, options, progress, log)
    times["train"] = time.perf_counter() - t
    run: RunDir = trained.run

    t = time.perf_counter()
    merged = ex.merge_adapter(trained.model)
    exported = ex.export_merged(merged, trained.tokenizer, run.export, out_id, config.quant,
                                run.log)
    times["export"] = time.perf_counter() - t
    say(f"exported {exported.gguf.name} ({exported.size / 1e6:.0f} MB) in {times['export']:.1f} s")

    adapter_file: Path | None = None
    if adapter_gguf:
        adapter_file = ex.export_adapter_gguf(run.adapter, exported.merged_dir,
                                              run.export / f"{out_id}.lora.gguf", run.log)

    from appliance.train.parity import check_parity

    t = time.perf_counter()
    held_out = bool(trained.val_examples)
    convs = [e.messages for e in (trained.val_examples or trained.train_examples)]
    parity = check_parity(merged, trained.encoder, exported.gguf, convs, config.quant,
                          held_out=held_out)
    times["parity"] = time.perf_counter() - t
    say(f"parity: {parity.summary()}")
    shutil.rmtree(exported.merged_dir, ignore_errors=True)

    base_entry = registry.get(spec.id) if spec.id in registry else None
    lineage: dict[str, Any] = {
        "base": spec.to_json(),
        "data": {"sha256": trained.data_sha256, "file": Path(report.path).name,
                 "examples": len(report.examples),
                 "train_examples": len(trained.train_examples),
                 "val_examples": len(trained.val_examples)},
        "lora": config.to_dict(),
        "metrics": {k: v for k, v in trained.metrics.items() if k != "fingerprint"},
        "parity": parity.to_json(),
        "export": {"quant": config.quant, "seconds": exported.seconds},
        "fingerprint": trained.fingerprint,
        "versions": _versions(),
    }
    if not parity.passed and not force:
        raise ParityError(
            f"The exported {config.quant} GGUF does not match the merged model: "
            + "; ".join(parity.problems)
            + f". Nothing was registered; the GGUF is kept at {exported.gguf} (rerun with "
            "--force to register it anyway).", parity)
    extra: dict[str, Any] = {"chat_template": "gguf"}
    if base_entry is not None:
        for key in ("n_ctx_train",):
            if key in base_entry.extra:
                extra[key] = base_entry.extra[key]
    entry = register_model(
        settings, out_id, exported.gguf, lineage=lineage, force=force,
        description=(f"LoRA fine-tune of {spec.id} on {Path(report.path).name} "
                     f"({len(report.examples)} examples), {config.quant}."),
        licence=base_entry.licence if base_entry else "",
        source=f"appliance train --base {spec.id}",
        extra=extra,
    )
    say(f"registered '{out_id}' ({entry.path})")
    return FineTuneResult(entry=entry, gguf=entry.path, metrics=trained.metrics, parity=parity,
                          lineage=lineage, seconds={k: round(v, 2) for k, v in times.items()},
                          resumed_from=trained.resumed_from,
                          skipped_training=trained.skipped, adapter_gguf=adapter_file)
