"""Hybrid retrieval: vector KNN and FTS5 bm25, fused by score or reciprocal rank fusion,
optionally reranked."""

from appliance.retrieve.hybrid import (
    Retriever,
    SearchResult,
    proximity,
    query_terms,
    rrf_fuse,
    score_fuse,
)
from appliance.retrieve.rerank import QuestionLikelihoodReranker, Reranker, rerank_hits

__all__ = [
    "QuestionLikelihoodReranker",
    "Reranker",
    "Retriever",
    "SearchResult",
    "proximity",
    "query_terms",
    "rerank_hits",
    "rrf_fuse",
    "score_fuse",
]
