"""Hybrid retrieval: vector KNN and FTS5 bm25, fused by score or reciprocal rank fusion."""

from appliance.retrieve.hybrid import (
    Retriever,
    SearchResult,
    proximity,
    query_terms,
    rrf_fuse,
    score_fuse,
)

__all__ = ["Retriever", "SearchResult", "proximity", "query_terms", "rrf_fuse", "score_fuse"]
