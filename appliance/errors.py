"""One exception tree for everything the appliance reports to a user.

Every error carries a short ``title`` and an actionable ``message`` (one sentence saying
what happened and what to do). The CLI prints the message and exits with ``exit_code``;
``--debug`` adds the traceback.
"""

from __future__ import annotations

__all__ = [
    "ApplianceError",
    "ConfigError",
    "DocumentError",
    "EmbedderMismatchError",
    "InputError",
    "KnowledgeBaseError",
    "KnowledgeBaseNotFoundError",
    "ModelError",
    "ModelHashError",
    "ModelNotFoundError",
    "NothingIngestedError",
    "StoreBusyError",
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


class ModelNotFoundError(ModelError):
    """No model with that id is registered, or its file is missing."""

    title = "Model not found"


class ModelHashError(ModelError):
    """A model file's sha256 does not match the manifest."""

    title = "Model hash mismatch"
