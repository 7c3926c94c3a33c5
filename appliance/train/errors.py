"""Errors of the fine-tuning pipeline, in the ApplianceError tree (one sentence, exit code)."""

from __future__ import annotations

from typing import Any

from appliance.errors import ApplianceError, InputError, ModelError

__all__ = [
    "ExportError",
    "ModelExistsError",
    "ParityError",
    "TrainConfigError",
    "TrainDependencyError",
    "TrainingDataError",
    "TrainingError",
]


class TrainingDataError(InputError):
    """The chat JSONL has problems; ``report`` lists them with line numbers."""

    title = "Bad training data"

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class TrainConfigError(InputError):
    """A training option is out of range or the saved configuration is unreadable."""

    title = "Bad training option"


class ModelExistsError(InputError):
    """The model id to register is taken (use --force to replace a user model)."""

    title = "Model id taken"


class TrainingError(ApplianceError):
    """Training, merging or exporting failed."""

    title = "Training failed"
    exit_code = 6


class TrainDependencyError(TrainingError):
    """torch, transformers or peft (the ``[train]`` extra) is not installed."""

    title = "Training packages missing"


class ExportError(TrainingError):
    """The merged model could not be converted to GGUF or quantized."""

    title = "Export failed"


class ParityError(ModelError):
    """The GGUF does not behave like the merged model it was made from."""

    title = "Parity check failed"

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result
