"""Generation: the llama.cpp wrapper, prompts and citation parsing.

Importing this package does not import llama_cpp; loading a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.config import Settings
from appliance.errors import InputError, ModelError, ModelNotFoundError
from appliance.generate.citations import (
    citation_numbers,
    is_abstention,
    resolve_citations,
    strip_citations,
)
from appliance.generate.prompt import (
    ABSTAIN_SENTENCE,
    ANSWER_REMINDER,
    BASE_SYSTEM_PROMPT,
    RAG_SYSTEM_PROMPT,
    Prompt,
    PromptSource,
    build_base_prompt,
    build_rag_prompt,
)
from appliance.models import ModelEntry, Registry

if TYPE_CHECKING:
    from appliance.generate.llama import LlamaGenerator

__all__ = [
    "ABSTAIN_SENTENCE",
    "ANSWER_REMINDER",
    "BASE_SYSTEM_PROMPT",
    "FINE_TUNED_MODES",
    "MODES",
    "RAG_SYSTEM_PROMPT",
    "RETRIEVAL_MODES",
    "Prompt",
    "PromptSource",
    "build_base_prompt",
    "build_rag_prompt",
    "citation_numbers",
    "default_mode",
    "generator_id",
    "is_abstention",
    "is_fine_tuned",
    "load_generator",
    "resolve_citations",
    "strip_citations",
]

MODES = ("base", "rag", "ft", "hybrid")
"""Answer modes (DESIGN.md, "Modes and models")."""
RETRIEVAL_MODES = ("rag", "hybrid")
FINE_TUNED_MODES = ("ft", "hybrid")


def is_fine_tuned(entry: ModelEntry) -> bool:
    """Whether a registry entry is a generator that ``appliance train`` produced."""
    return entry.role == "generator" and bool(entry.lineage)


def default_mode(registry: Registry) -> str:
    """``hybrid`` once a packaged fine-tuned generator (the grounded adapter) ships; else
    ``rag``."""
    shipped = any(is_fine_tuned(e) and e.origin == "packaged" for e in registry)
    return "hybrid" if shipped else "rag"


def generator_id(
    registry: Registry, settings: Settings, mode: str = "rag", model_id: str | None = None
) -> str:
    """The registry id of the model that answers in ``mode``.

    ``model_id`` wins when given. ``base`` and ``rag`` use ``generate.model`` or the default
    base generator; ``ft`` and ``hybrid`` use the default fine-tuned generator (an entry with
    ``lineage``: the one marked ``default``, else the last registered) and fail with a clear
    message until one is registered.
    """
    if mode not in MODES:
        raise InputError(f"Unknown mode '{mode}'; use one of {', '.join(MODES)}.")
    if model_id:
        entry = registry.get(model_id)
        if entry.role != "generator":
            raise ModelError(
                f"'{model_id}' is not a generator (its role is {entry.role}); "
                "run `appliance models list` to see the generators."
            )
        return entry.id
    generators: list[ModelEntry] = [e for e in registry if e.role == "generator"]
    if mode in FINE_TUNED_MODES:
        tuned = [e for e in generators if is_fine_tuned(e)]
        if not tuned:
            raise ModelNotFoundError(
                f"Mode '{mode}' needs a fine-tuned model and none is registered; train one "
                "with `appliance train`, pass --model ID, or use --mode rag."
            )
        marked = [e for e in tuned if e.default]
        return str((marked or tuned)[-1].id)
    if settings.generate.model:
        return settings.generate.model
    plain = [e for e in generators if not is_fine_tuned(e)] or generators
    if not plain:
        raise ModelNotFoundError(
            "No generator model is registered; run scripts/setup.sh to acquire the models."
        )
    marked = [e for e in plain if e.default]
    return str((marked or plain)[0].id)


def load_generator(
    settings: Settings, registry: Registry | None = None, model_id: str | None = None
) -> LlamaGenerator:
    """Load a generator by registry id (hash-checked); the default generator when None."""
    from appliance.generate.llama import LlamaGenerator

    registry = registry or Registry.load(settings)
    model_id = generator_id(registry, settings, "rag", model_id)
    entry = registry.resolve(model_id)
    if entry.role != "generator":
        raise ModelError(f"'{model_id}' is not a generator (its role is {entry.role}); "
                         "run `appliance models list` to see the generators.")
    if entry.format.lower() != "gguf":
        raise ModelError(f"'{model_id}' is a {entry.format} file; llama.cpp needs GGUF.")
    return LlamaGenerator(entry.id, entry.path, settings.generate)
