"""appliance: offline question answering over your own documents.

RAG with citations for knowledge, LoRA fine-tuning for behaviour, and an evaluation that
tells which of the two a problem needs. The public API is :class:`appliance.api.Appliance`.
"""

from appliance.errors import ApplianceError

__all__ = ["ApplianceError", "__version__"]
__version__ = "0.1.0"
