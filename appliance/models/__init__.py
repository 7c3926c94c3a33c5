"""Model registry: the packaged and user manifests, hash checks and model resolution."""

from appliance.models.gguf import GGUFInfo, probe_gguf
from appliance.models.registry import ModelEntry, Registry, sha256_file

__all__ = ["GGUFInfo", "ModelEntry", "Registry", "probe_gguf", "sha256_file"]
