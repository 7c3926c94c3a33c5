"""Model registry: the packaged and user manifests, hash checks and model resolution."""

from appliance.models.registry import ModelEntry, Registry, sha256_file

__all__ = ["ModelEntry", "Registry", "sha256_file"]
