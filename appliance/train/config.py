"""The LoRA training configuration: self-validating, peft-style names, saved as JSON.

:class:`TrainConfig` holds what determines the trained weights (the adapter's shape, the
optimiser, the data split, the seed) and nothing operational: checkpoint interval, device,
threads and resume behaviour live in :class:`RunOptions` and are never saved, so two runs
with equal ``to_dict()`` results are the same experiment. Adapter fields carry peft's names
(``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``bias``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from appliance.train.errors import TrainConfigError

__all__ = ["PRECISIONS", "QUANT_TYPES", "RunOptions", "TrainConfig"]

QUANT_TYPES = ("q8_0", "q4_k_m", "f16")
"""GGUF types an export can produce."""

PRECISIONS = ("auto", "fp32", "bf16")
"""Training arithmetic choices (:attr:`RunOptions.precision`)."""

DEFAULT_TARGET_MODULES = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
)
"""Linear layers adapted by default (the attention and MLP projections of Llama/Qwen2)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that reproduces a LoRA run (with the base model and the data)."""

    r: int = 8
    """LoRA rank (8 on all projections of the 0.5B answer model: a 17.6 MB f32 adapter)."""
    lora_alpha: int = 16
    """LoRA scaling numerator (the update is scaled by ``lora_alpha / r``)."""
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_TARGET_MODULES
    bias: str = "none"
    epochs: int = 2
    learning_rate: float = 2e-4
    batch_size: int = 1
    """Examples per forward pass."""
    grad_accum: int = 4
    """Forward passes per optimiser step."""
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_len: int = 1024
    """Longest example in tokens (chat template included); longer ones are rejected."""
    val_split: float = 0.1
    seed: int = 0
    max_steps: int = 0
    """Stop after this many optimiser steps (0: run every epoch)."""
    quant: str = "q8_0"
    """GGUF type of the exported model."""
    layers: int = 0
    """Adapt only the last ``layers`` transformer blocks (0: all). Back-propagation stops at
    the lowest adapted block, so on a CPU a third of the blocks trains about twice as fast."""

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.r <= 1024:
            problems.append(f"rank must be 1..1024, not {self.r}")
        if not 0 < self.lora_alpha <= 4096:
            problems.append(f"alpha must be 1..4096, not {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            problems.append(f"dropout must lie in [0, 1), not {self.lora_dropout}")
        if not self.target_modules or not all(
            isinstance(m, str) and m for m in self.target_modules
        ):
            problems.append("target_modules must name at least one module")
        if self.bias not in ("none", "all", "lora_only"):
            problems.append(f"bias must be none, all or lora_only, not {self.bias!r}")
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be 1..1000, not {self.epochs}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            problems.append(f"learning rate must lie in (0, 1], not {self.learning_rate}")
        if not 1 <= self.batch_size <= 1024:
            problems.append(f"batch size must be 1..1024, not {self.batch_size}")
        if not 1 <= self.grad_accum <= 1024:
            problems.append(f"gradient accumulation must be 1..1024, not {self.grad_accum}")
        if self.warmup_steps < 0:
            problems.append(f"warmup steps must be >= 0, not {self.warmup_steps}")
        if not 0.0 <= self.weight_decay < 1.0:
            problems.append(f"weight decay must lie in [0, 1), not {self.weight_decay}")
        if not self.max_grad_norm > 0:
            problems.append(f"max grad norm must be > 0, not {self.max_grad_norm}")
        if not 16 <= self.max_len <= 131072:
            problems.append(f"max length must be 16..131072 tokens, not {self.max_len}")
        if not 0.0 <= self.val_split < 1.0:
            problems.append(f"validation split must lie in [0, 1), not {self.val_split}")
        if self.max_steps < 0:
            problems.append(f"max steps must be >= 0, not {self.max_steps}")
        if not 0 <= self.layers <= 1024:
            problems.append(f"layers must be 0..1024, not {self.layers}")
        if self.quant not in QUANT_TYPES:
            problems.append(f"quant must be one of {', '.join(QUANT_TYPES)}, not {self.quant!r}")
        if problems:
            raise TrainConfigError("Invalid training configuration: " + "; ".join(problems) + ".")

    @property
    def scaling(self) -> float:
        """The LoRA update's scale, ``lora_alpha / r``."""
        return self.lora_alpha / self.r

    def peft_kwargs(self, n_layers: int = 0) -> dict[str, Any]:
        """Keyword arguments for ``peft.LoraConfig`` (``n_layers``: the base's block count)."""
        kwargs: dict[str, Any] = {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "target_modules": list(self.target_modules),
            "bias": self.bias,
            "task_type": "CAUSAL_LM",
        }
        if self.layers and n_layers:
            if self.layers > n_layers:
                raise TrainConfigError(
                    f"--layers {self.layers} exceeds the base model's {n_layers} blocks."
                )
            kwargs["layers_to_transform"] = list(range(n_layers - self.layers, n_layers))
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (a tuple becomes a list)."""
        data = asdict(self)
        data["target_modules"] = list(self.target_modules)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The config from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(
                f"Unknown training configuration keys: {', '.join(unknown)}; remove them."
            )
        values = dict(data)
        if "target_modules" in values:
            values["target_modules"] = tuple(values["target_modules"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise TrainConfigError(f"Invalid training configuration: {exc}.") from exc

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated again)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    def save(self, path: Path) -> None:
        """Write the config as JSON."""
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n",
                        encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise TrainConfigError(f"Cannot read the training configuration {path}: {exc}.") \
                from exc
        if not isinstance(data, dict):
            raise TrainConfigError(f"{path} does not hold a training configuration object.")
        return cls.from_dict(data)


@dataclass
class RunOptions:
    """How a run is carried out; none of it changes the trained weights."""

    save_every: int = 25
    """Optimiser steps between checkpoints."""
    keep_checkpoints: int = 2
    resume: bool = True
    """Continue from the last checkpoint of a run with the same config, base and data."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda``."""
    threads: int = 0
    """CPU threads for torch (0: torch's default)."""
    precision: str = "auto"
    """Matrix arithmetic of the forward and backward passes: ``bf16`` (autocast; weights,
    gradients and optimiser state stay float32), ``fp32``, or ``auto``: bf16 where the
    device computes it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX),
    else fp32. The precision used is recorded in the run's metrics."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.save_every < 1:
            raise TrainConfigError(f"save_every must be >= 1, not {self.save_every}.")
        if self.keep_checkpoints < 1:
            raise TrainConfigError(
                f"keep_checkpoints must be >= 1, not {self.keep_checkpoints}."
            )
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise TrainConfigError(f"device must be auto, cpu or cuda, not {self.device!r}.")
        if self.precision not in PRECISIONS:
            raise TrainConfigError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}."
            )
