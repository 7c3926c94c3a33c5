"""Reranking: a second, slower look at the best fused candidates.

No cross-encoder ships offline (DESIGN.md), so the one reranker here asks a small causal
language model how likely the query is as a question about each passage: the mean
log-probability of the query's tokens after "Passage: ... Write a question that this
passage answers." (unsupervised passage re-ranking, Sachan et al., 2022). It needs no
training and no new model, and it reads the passage the way the question was written: a
passage that states the asked fact makes the question's exact words likely.

Any other scorer (a cross-encoder exported to ONNX, say) plugs in as a :class:`Reranker`.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Protocol

from appliance.errors import InputError
from appliance.types import Hit

__all__ = ["QuestionLikelihoodReranker", "Reranker", "SequenceScorer", "rerank_hits"]

UPR_INSTRUCTION = "Write a question that this passage answers."
MAX_PASSAGE_CHARS = 4000
MAX_QUERY_CHARS = 1000


class Reranker(ABC):
    """Scores how well each passage answers a query; higher is better, any scale."""

    @property
    @abstractmethod
    def id(self) -> str:
        """What scores (a model id), for reports."""

    @abstractmethod
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in order."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free what the reranker holds."""


class SequenceScorer(Protocol):
    """What :class:`QuestionLikelihoodReranker` needs of a language model
    (``appliance.generate.llama.LlamaGenerator`` fits)."""

    @property
    def id(self) -> str: ...

    def continuation_logprob(self, messages: list[dict[str, str]], continuation: str
                             ) -> float: ...

    def close(self) -> None: ...


class QuestionLikelihoodReranker(Reranker):
    """Mean log-probability (nats per token, <= 0) of the query given each passage."""

    def __init__(self, model: SequenceScorer) -> None:
        self.model = model

    @property
    def id(self) -> str:
        """The scoring model's id."""
        return self.model.id

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """The query's mean token log-probability after each passage.

        A passage the model cannot score (it does not fit the context window) gets the
        lowest score of the others, so it keeps its place only on fused score. Raises
        InputError for an empty query.
        """
        query = query.strip()[:MAX_QUERY_CHARS]
        if not query:
            raise InputError("There is no query to rerank for.")
        scores: list[float | None] = []
        for text in texts:
            messages = [{"role": "user",
                         "content": f"Passage: {text[:MAX_PASSAGE_CHARS]}\n\n{UPR_INSTRUCTION}"}]
            try:
                scores.append(self.model.continuation_logprob(messages, query))
            except InputError:
                scores.append(None)
        known = [s for s in scores if s is not None]
        floor = min(known) if known else 0.0
        return [floor if s is None else s for s in scores]

    def close(self) -> None:
        """Free the model."""
        self.model.close()


def rerank_hits(hits: Sequence[Hit], scores: Sequence[float], weight: float) -> list[Hit]:
    """``hits`` re-sorted by ``fused score + weight * reranker score``.

    Each returned hit carries that sum as ``score`` and the reranker's own score as
    ``scores["rerank"]``; the raw channel scores that abstention reads are kept.
    """
    if len(hits) != len(scores):
        raise ValueError(f"{len(hits)} hits but {len(scores)} scores")
    out = [
        dataclasses.replace(h, score=h.score + weight * s, scores={**h.scores, "rerank": s})
        for h, s in zip(hits, scores, strict=True)
    ]
    out.sort(key=lambda h: h.score, reverse=True)
    return out
