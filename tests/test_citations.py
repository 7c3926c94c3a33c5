"""Citation parsing and abstention detection."""

from __future__ import annotations

import pytest

from appliance.generate.citations import (
    citation_numbers,
    is_abstention,
    resolve_citations,
    strip_citations,
)
from appliance.generate.prompt import ABSTAIN_SENTENCE, PromptSource
from appliance.types import Hit


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("It is blue [1].", [1]),
        ("Blue [2] and red [1].", [2, 1]),
        ("Both [1, 2].", [1, 2]),
        ("Both [1][3] and again [1].", [1, 3]),
        ("See [2; 4].", [2, 4]),
        ("A range [1-3].", [1, 2, 3]),
        ("As [Source 2] says, and [source: 3].", [2, 3]),
        ("No markers here, list[int] and x[i].", []),
        ("Years [1999] are not sources? They parse as numbers.", []),
    ],
)
def test_citation_numbers(text: str, numbers: list[int]) -> None:
    assert citation_numbers(text) == numbers


def _source(n: int) -> PromptSource:
    h = Hit(chunk_id=10 + n, path=f"/d/{n}.md", title="", heading=f"H{n}", text="t",
            score=0.01 * n)
    return PromptSource(n, h, "t")


def test_resolve_maps_to_given_sources_and_flags_unknown() -> None:
    cites, flags = resolve_citations("A [2]. B [7]. C [1, 2].", [_source(1), _source(2)])
    assert [(c.n, c.path, c.heading, c.chunk_id) for c in cites] == [
        (2, "/d/2.md", "H2", 12), (1, "/d/1.md", "H1", 11)]
    assert cites[0].score == pytest.approx(0.02)
    assert flags == ["unknown_citation:7"]


def test_strip_citations() -> None:
    assert strip_citations("In 1066 [1]. Also [2, 3] here .") == "In 1066. Also here."


@pytest.mark.parametrize(
    "text",
    [
        ABSTAIN_SENTENCE,
        "I could not find this in the documents",
        "i COULD NOT find this in the documents!!",
        "I couldn't find this in the documents.",
        "I couldn’t find that information in the provided documents.",
        "I could not find the answer in the sources.",
        "Sorry, I could not find this in the documents.",
        "The documents do not contain this information.",
        "The provided sources do not mention who that was.",
        "There is no information about that in the documents.",
        "  ",
        "I could not find this in the documents. The closest is [1].",
    ],
)
def test_abstention_detected(text: str) -> None:
    assert is_abstention(text)


@pytest.mark.parametrize(
    "text",
    [
        "Paris is the capital of France [1].",
        "William led the conquest in 1066 [2]. I could not find this in the documents about "
        "Harold.",
        "The documents describe the oil crisis of 1973 [1].",
        "I found it in the documents: 1066 [1].",
    ],
)
def test_answers_are_not_abstentions(text: str) -> None:
    assert not is_abstention(text)


def test_code_spans_are_not_citations() -> None:
    assert citation_numbers("Use `x[0]` to get it [2].\n```\nitems[1]\n```") == [2]
