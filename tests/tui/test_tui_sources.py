"""What the sources panel and the citation view compute (pure functions)."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.tui.sources import (
    cited_passage,
    citing_sentences,
    display_path,
    linkify_citations,
    sources_for,
)
from appliance.types import Answer, Citation, Hit


def _answer(text: str, citations: list[Citation], closest: list[Citation] | None = None,
            abstained: bool = False) -> Answer:
    return Answer(id="q", question="?", answer=text, abstained=abstained, citations=citations,
                  closest=closest or [], mode="rag", model="m", timings_ms={}, tokens={},
                  tokens_per_s=0.0)


def _hit(i: int) -> Hit:
    return Hit(chunk_id=10 + i, path=f"/d/{i}.md", title="", heading=f"H{i}", text=f"text {i}",
               score=1 / (60 + i), scores={"vector": 0.5, "keyword": None})


def test_sources_from_the_pipeline_hits_keep_rank_numbers_and_channel_scores() -> None:
    answer = _answer("A [2].", [Citation(2, "/d/2.md", "H2", 12, 0.1)])
    views = sources_for(answer, [_hit(1), _hit(2), _hit(3)])
    assert [(v.n, v.chunk_id, v.cited) for v in views] == [(1, 11, False), (2, 12, True),
                                                           (3, 13, False)]
    assert views[0].scores_line() == "fused 0.0164 · cos 0.50 · bm25 -"


def test_sources_without_hits_come_from_citations_and_the_store() -> None:
    answer = _answer("A [2] and [1].", [Citation(2, "/d/2.md", "H2", 12, 0.2),
                                        Citation(1, "/d/1.md", "H1", 11, 0.3)])
    seen: list[list[int]] = []

    def lookup(ids: object) -> dict[int, tuple[str, str, str]]:
        seen.append(list(ids))  # type: ignore[call-overload]
        return {11: ("/d/1.md", "H1", "one"), 12: ("/d/2.md", "H2", "two")}

    views = sources_for(answer, None, lookup)
    assert [(v.n, v.text, v.cited) for v in views] == [(1, "one", True), (2, "two", True)]
    assert sorted(seen[0]) == [11, 12]
    assert views[0].scores_line() == "fused 0.3000"
    abstained = _answer("I could not find this in the documents.", [],
                        [Citation(1, "/d/1.md", "H1", 11, 0.3)], abstained=True)
    assert [v.cited for v in sources_for(abstained, None, lookup)] == [False]


def test_linkify_citations_skips_unknown_numbers_and_code() -> None:
    text = "Use `x[1]` here [1][2], see [1, 2] and [7]."
    out = linkify_citations(text, [1, 2])
    assert "`x[1]`" in out
    assert out.count("(cite:1)") == 2 and out.count("(cite:2)") == 2
    assert "[7]" in out and "cite:7" not in out
    assert linkify_citations("calls __exit__ [1]", [1]).startswith("calls \\_\\_exit\\_\\_ ")


def test_citing_sentences_and_passage() -> None:
    answer = "Green tea wants 80 degrees [1]. Espresso uses nine bars [2]. Both are hot [1][2]."
    assert citing_sentences(answer, 2) == ["Espresso uses nine bars [2].",
                                           "Both are hot [1][2]."]
    wrapped = "The statement binds names\nin the enclosing scope. [1]\n\n- a list item [2]\n- more"
    assert citing_sentences(wrapped, 1) == ["The statement binds names in the enclosing scope. [1]"]
    assert citing_sentences(wrapped, 2) == ["a list item [2]"]
    chunk = "Coffee is old. An espresso is made at nine bars of pressure. It is strong."
    span = cited_passage(chunk, citing_sentences(answer, 2))
    assert span is not None
    assert chunk[span[0]:span[1]] == "An espresso is made at nine bars of pressure."
    assert cited_passage("nothing shared here", ["Espresso [2]."]) is None


def test_display_path(tmp_path: Path) -> None:
    assert display_path(str(tmp_path / "a" / "b.md"), str(tmp_path)) == os.path.join("a", "b.md")
    home = str(Path.home())
    assert display_path(os.path.join(home, "x.md"), "/nonexistent") == os.path.join("~", "x.md")
    assert display_path("/etc/hosts", "/nonexistent") == "/etc/hosts"
