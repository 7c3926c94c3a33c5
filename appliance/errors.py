"""One exception tree for everything the appliance reports to a user.

Every error carries a short ``title`` and an actionable ``message`` (one sentence saying
what happened and what to do). The CLI prints the message and exits with ``exit_code``;
``--debug`` adds the traceback.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApplianceError",
    "BundleError",
    "ConfigError",
    "DoctorError",
    "DocumentError",
    "EmbedderMismatchError",
    "ExportError",
    "InputError",
    "Interrupted",
    "KnowledgeBaseError",
    "KnowledgeBaseNotFoundError",
    "ModelError",
    "ModelExistsError",
    "ModelHashError",
    "ModelNotFoundError",
    "NothingIngestedError",
    "ParityError",
    "StoreBusyError",
    "TrainConfigError",
    "TrainDependencyError",
    "TrainingDataError",
    "TrainingError",
]


class ApplianceError(Exception):
    """Base of every error the appliance raises on purpose."""

    title = "Error"
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(ApplianceError):
    """A setting is invalid or a configuration file cannot be read."""

    title = "Configuration error"
    exit_code = 2


class InputError(ApplianceError):
    """The user's input (a path, a file, a query, an option) cannot be used."""

    title = "Bad input"
    exit_code = 2


class DocumentError(ApplianceError):
    """One document cannot be ingested; the ingest goes on without it."""

    title = "Unreadable document"


class KnowledgeBaseError(ApplianceError):
    """The knowledge base cannot be opened, written or is inconsistent."""

    title = "Knowledge base error"
    exit_code = 3


class KnowledgeBaseNotFoundError(KnowledgeBaseError):
    """The named knowledge base does not exist."""

    title = "No such knowledge base"


class EmbedderMismatchError(KnowledgeBaseError):
    """The knowledge base was built with a different embedder than the current one."""

    title = "Embedder mismatch"


class StoreBusyError(KnowledgeBaseError):
    """Another process held the write lock for longer than the busy timeout."""

    title = "Knowledge base busy"


class NothingIngestedError(ApplianceError):
    """An ingest run found nothing it could ingest."""

    title = "Nothing ingested"
    exit_code = 4


class ModelError(ApplianceError):
    """A model cannot be found, verified or loaded."""

    title = "Model error"
    exit_code = 5


class Interrupted(ApplianceError):
    """The caller stopped a model while it was working (``LlamaGenerator.interrupt``)."""

    title = "Stopped"
    exit_code = 130


class ModelNotFoundError(ModelError):
    """No model with that id is registered, or its file is missing."""

    title = "Model not found"


class ModelHashError(ModelError):
    """A model file's sha256 does not match the manifest."""

    title = "Model hash mismatch"


# -- fine-tuning (appliance.train) ---------------------------------------------------------------


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


# -- bundles (appliance.bundle) ------------------------------------------------------------------


class BundleError(ApplianceError):
    """A bundle cannot be built, is not intact, or is not signed as required."""

    title = "Bundle error"
    exit_code = 6


class DoctorError(ApplianceError):
    """One or more checks of ``appliance doctor`` failed."""

    title = "Doctor"
    exit_code = 7
