"""The embedder: an ONNX sentence-embedding model resolved from the registry."""

from __future__ import annotations

from appliance.config import Settings
from appliance.embed.onnx import OnnxEmbedder, physical_cores
from appliance.models import Registry

__all__ = ["OnnxEmbedder", "load_embedder", "physical_cores"]


def load_embedder(settings: Settings, registry: Registry | None = None) -> OnnxEmbedder:
    """Load the configured embedder after checking its model and tokenizer hashes."""
    registry = registry or Registry.load(settings)
    model_id = settings.embed.model or registry.default("embedder").id
    entry = registry.resolve(model_id)
    tokenizer = registry.resolve(str(entry.extra.get("tokenizer", "")))
    return OnnxEmbedder(
        model_id=entry.id,
        model_path=entry.path,
        tokenizer_path=tokenizer.path,
        dim=int(entry.extra.get("dim", 384)),
        max_tokens=min(settings.embed.max_tokens, int(entry.extra.get("max_tokens", 512))),
        batch_size=settings.embed.batch_size,
        threads=settings.embed.threads,
        per_text=entry.extra.get("quantization") == "dynamic",
    )
