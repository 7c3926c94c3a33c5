"""Errors of the fine-tuning pipeline (defined in :mod:`appliance.errors`, the one tree)."""

from appliance.errors import (
    ExportError,
    ModelExistsError,
    ParityError,
    TrainConfigError,
    TrainDependencyError,
    TrainingDataError,
    TrainingError,
)

__all__ = [
    "ExportError",
    "ModelExistsError",
    "ParityError",
    "TrainConfigError",
    "TrainDependencyError",
    "TrainingDataError",
    "TrainingError",
]
