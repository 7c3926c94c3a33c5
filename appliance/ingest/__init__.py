"""Ingest: loaders per format (in a sandboxed worker), heading-aware chunking, the runner."""

from appliance.ingest.chunking import Chunker, embed_text
from appliance.ingest.loaders import load_document
from appliance.ingest.runner import discover, ingest
from appliance.ingest.sandbox import LoaderSandbox

__all__ = ["Chunker", "LoaderSandbox", "discover", "embed_text", "ingest", "load_document"]
