"""Evaluation: data sets, metrics, and the benchmarks built on them."""

from appliance.evaluate.squad import (
    DEV_ARTICLES,
    TEST_ARTICLES,
    Article,
    Paragraph,
    Question,
    answer_in_text,
    exact_match,
    load_squad,
    normalize_answer,
    split_articles,
    token_f1,
    write_corpus,
)

__all__ = [
    "DEV_ARTICLES",
    "TEST_ARTICLES",
    "Article",
    "Paragraph",
    "Question",
    "answer_in_text",
    "exact_match",
    "load_squad",
    "normalize_answer",
    "split_articles",
    "token_f1",
    "write_corpus",
]
