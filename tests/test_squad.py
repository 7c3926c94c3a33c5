"""Unit tests of appliance.evaluate.squad: loading, split, corpus and the SQuAD metrics."""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

from appliance.evaluate.metrics import is_gold_source
from appliance.evaluate.squad import (
    DEV_ARTICLES,
    TEST_ARTICLES,
    Article,
    Paragraph,
    Question,
    answer_in_text,
    corpus_file_name,
    exact_match,
    load_squad,
    normalize_answer,
    parse_corpus_name,
    questions,
    split_articles,
    token_f1,
    write_corpus,
)

_SQUAD = "shared/data/squad2-dev-a/squad2-dev-a.json"
SHARED = next((p for p in (Path(__file__).resolve().parents[2] / _SQUAD, Path("/work") / _SQUAD)
               if p.is_file()), Path("/work") / _SQUAD)
"""The shared SQuAD file: beside the checkout, else where this machine keeps it."""


def _squad_json(tmp_path: Path) -> Path:
    data = {
        "version": "v2.0",
        "data": [
            {
                "title": "Normans",
                "paragraphs": [
                    {
                        "context": "The Normans were the people who in the 10th and 11th "
                        "centuries gave their name to Normandy, a region in France.",
                        "qas": [
                            {
                                "id": "q1",
                                "question": "In what country is Normandy located?",
                                "answers": [
                                    {"text": "France", "answer_start": 94},
                                    {"text": "France", "answer_start": 94},
                                    {"text": "in France", "answer_start": 91},
                                ],
                                "is_impossible": False,
                            },
                            {
                                "id": "q2",
                                "question": "Who gave their name to Normandy in the 1000s?",
                                "answers": [],
                                "plausible_answers": [{"text": "Normans", "answer_start": 4}],
                                "is_impossible": True,
                            },
                        ],
                    },
                    {"context": "Second paragraph.", "qas": []},
                ],
            },
            {
                "title": "Packet_switching",
                "paragraphs": [
                    {
                        "context": "Packet switching groups data into packets.",
                        "qas": [
                            {
                                "id": "q3",
                                "question": "What does packet switching group data into?",
                                "answers": [{"text": "packets", "answer_start": 34}],
                            }
                        ],
                    }
                ],
            },
        ],
    }
    path = tmp_path / "mini.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# -- normalisation and metrics ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an   Apple,  a pear!  ", "apple pear"),
        ("U.S.", "us"),  # punctuation goes before articles and joins the parts
        ("the-end", "theend"),  # ... so a hyphenated article is no longer a word
        ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("A", ""),
        ("", ""),
        ("1,000 km²", "1000 km²"),
        ("café – über", "café – über"),  # only ASCII punctuation is removed
        ("Line\nbreak\ttab", "line break tab"),
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_hand_examples() -> None:
    assert exact_match("the Eiffel Tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    assert exact_match("Paris", ["London", "paris"]) == 1.0  # max over gold answers
    assert exact_match("Paris", "Paris") == 1.0  # a single gold string is accepted


def test_token_f1_hand_examples() -> None:
    # precision 1/1, recall 1/2
    assert token_f1("Eiffel", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    # precision 2/4, recall 2/2 after dropping "the"
    assert token_f1("the Eiffel Tower in Paris", ["Eiffel Tower"]) == pytest.approx(2 / 3)
    assert token_f1("red blue", ["green"]) == 0.0
    assert token_f1("Eiffel Tower", ["Tower", "eiffel tower"]) == 1.0
    # token multisets: a repeated word counts only as often as in the gold answer
    assert token_f1("tower tower", ["tower"]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_unanswerable_expects_empty_prediction() -> None:
    # The official script scores a no-answer question against the single gold answer "".
    assert exact_match("", []) == 1.0
    assert token_f1("", []) == 1.0
    assert exact_match("Normans", []) == 0.0
    assert token_f1("Normans", []) == 0.0
    # Gold answers that normalise to nothing are ignored, like the official script does.
    assert exact_match("", ["the", "  "]) == 1.0
    assert exact_match("a", ["the"]) == 1.0  # both normalise to ""
    # An empty prediction against a real answer scores 0.
    assert token_f1("", ["France"]) == 0.0
    assert exact_match("the", ["France"]) == 0.0


def test_answer_in_text() -> None:
    text = "Normandy, a region\n in   FRANCE, was named..."
    assert answer_in_text(["a region in France"], text)
    assert answer_in_text(["Spain", "france"], text)
    assert not answer_in_text(["Spain"], text)
    assert not answer_in_text(["", "  "], text)  # blank answers never match
    assert not answer_in_text([], text)


# -- loading ------------------------------------------------------------------------------


def test_load_squad(tmp_path: Path) -> None:
    articles = load_squad(_squad_json(tmp_path))
    assert [a.title for a in articles] == ["Normans", "Packet_switching"]
    normans = articles[0]
    assert len(normans.paragraphs) == 2
    q1, q2 = normans.paragraphs[0].questions
    assert q1 == Question(
        "q1", "In what country is Normandy located?", ["France", "in France"], True, "Normans", 0
    )
    assert not q2.answerable and q2.answers == []  # plausible answers are not gold
    q3 = articles[1].paragraphs[0].questions[0]
    assert q3.answerable and q3.answers == ["packets"]  # no is_impossible: SQuAD 1.1
    assert [q.id for q in questions(articles)] == ["q1", "q2", "q3"]
    assert [q.id for q in questions(articles, answerable=True)] == ["q1", "q3"]
    assert [q.id for q in questions(articles, answerable=False)] == ["q2"]


def test_load_squad_names_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"title": "T", "paragraphs": [{"context": 3}]}]}))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.context"):
        load_squad(path)


# -- split --------------------------------------------------------------------------------


def _articles(titles: list[str]) -> list[Article]:
    return [
        Article(t, [Paragraph(f"text of {t}", [Question(f"{t}-q", "?", ["x"], True, t, 0)])])
        for t in titles
    ]


def _names(articles: list[Article]) -> list[str]:
    return sorted(a.title for a in articles)


def test_split_is_deterministic_and_disjoint() -> None:
    titles = [f"Article_{i}" for i in range(10)]
    dev, test = split_articles(_articles(titles))
    again_dev, again_test = split_articles(_articles(list(reversed(titles))))
    names = _names
    assert names(dev) == names(again_dev) and names(test) == names(again_test)
    assert len(dev) == 5 and len(test) == 5
    assert not set(names(dev)) & set(names(test))
    assert set(names(dev)) | set(names(test)) == set(titles)
    other_dev, _ = split_articles(_articles(titles), seed=1)
    assert names(other_dev) != names(dev)  # the seed matters
    small_dev, small_test = split_articles(_articles(titles), dev_fraction=0.3)
    assert len(small_dev) == 3 and len(small_test) == 7


def test_split_rejects_duplicates_and_bad_fraction() -> None:
    with pytest.raises(ValueError):
        split_articles(_articles(["A", "A"]))
    with pytest.raises(ValueError):
        split_articles(_articles(["A", "B"]), dev_fraction=1.5)


def test_split_constants_match_the_shared_titles() -> None:
    articles = _articles(sorted(DEV_ARTICLES + TEST_ARTICLES))
    dev, test = split_articles(articles)
    assert tuple(sorted(a.title for a in dev)) == DEV_ARTICLES
    assert tuple(sorted(a.title for a in test)) == TEST_ARTICLES


@pytest.mark.skipif(not SHARED.is_file(), reason="shared SQuAD data not present")
def test_split_of_the_shared_file_is_balanced() -> None:
    articles = load_squad(SHARED)
    dev, test = split_articles(articles)
    assert tuple(sorted(a.title for a in dev)) == DEV_ARTICLES
    assert tuple(sorted(a.title for a in test)) == TEST_ARTICLES
    n_dev, n_test = len(questions(dev)), len(questions(test))
    assert (n_dev, n_test) == (1378, 1450)
    assert abs(n_dev - n_test) / (n_dev + n_test) < 0.05
    a_dev, a_test = len(questions(dev, answerable=True)), len(questions(test, answerable=True))
    assert abs(a_dev - a_test) / (a_dev + a_test) < 0.05


# -- corpus -------------------------------------------------------------------------------


def test_write_corpus_round_trips(tmp_path: Path) -> None:
    articles = load_squad(_squad_json(tmp_path))
    folder = tmp_path / "corpus"
    paths = write_corpus(articles, folder)
    assert [p.name for p in paths] == [
        "Normans_000.txt",
        "Normans_001.txt",
        "Packet_switching_000.txt",
    ]
    assert sorted(folder.iterdir()) == sorted(paths)
    for article in articles:
        for index, paragraph in enumerate(article.paragraphs):
            path = folder / corpus_file_name(article.title, index)
            title, blank, *rest = path.read_text(encoding="utf-8").split("\n")
            assert title == article.title and blank == ""
            assert "\n".join(rest).strip() == paragraph.context
            assert parse_corpus_name(str(path)) == (article.title, index)
    # Rewriting unchanged files leaves them (and their mtimes) alone.
    before = [p.stat().st_mtime_ns for p in paths]
    assert write_corpus(articles, folder) == paths
    assert [p.stat().st_mtime_ns for p in paths] == before


def test_corpus_names() -> None:
    assert corpus_file_name("1973_oil_crisis", 7) == "1973_oil_crisis_007.txt"
    assert corpus_file_name("Normans", 0) == "Normans_000.txt"
    assert corpus_file_name("French_and_Indian_War", 3) == "French_and_Indian_War_003.txt"
    digest = hashlib.sha256(b"a/b c").hexdigest()[:8]
    assert corpus_file_name("a/b c", 12) == f"a_b_c-{digest}_012.txt"
    assert parse_corpus_name("x/Normans_012.txt") == ("Normans", 12)
    assert parse_corpus_name(f"a_b_c-{digest}_012.txt") == (f"a_b_c-{digest}", 12)
    assert parse_corpus_name("notes.txt") is None


@pytest.mark.parametrize(
    "titles",
    [
        ["東京", "北京"],  # nothing ASCII is left of either
        ["C++", "C#", "C"],
        ["a b", "a_b", "a/b", "_a_b_"],
        ["", "article", "\u00e9"],
    ],
)
def test_lossy_titles_get_distinct_names(titles: list[str], tmp_path: Path) -> None:
    names = {corpus_file_name(t, 0) for t in titles}
    assert len(names) == len(titles)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+_000\.txt", n) for n in names)
    articles = [Article(t, [Paragraph(f"about {t}"), Paragraph("more")]) for t in titles]
    paths = write_corpus(articles, tmp_path)
    assert len({p.name for p in paths}) == 2 * len(titles)
    for article, path in zip(articles, paths[::2], strict=True):
        context = article.paragraphs[0].context.strip()
        assert path.read_text(encoding="utf-8") == f"{article.title}\n\n{context}\n"
        parsed = parse_corpus_name(str(path))
        assert parsed is not None and parsed == (path.name.rsplit("_", 1)[0], 0)


def test_gold_sources_of_lossy_titles_match_the_corpus(tmp_path: Path) -> None:
    articles = [Article(t, [Paragraph(f"Text about {t}.")]) for t in ("C++", "C#", "Normans")]
    paths = write_corpus(articles, tmp_path / "corpus")
    for article, path in zip(articles, paths, strict=True):
        gold = [corpus_file_name(article.title, 0)]
        assert is_gold_source(str(path), gold)
        assert [is_gold_source(str(p), gold) for p in paths].count(True) == 1
    assert paths[2].name == "Normans_000.txt"


def test_module_imports_nothing_heavy() -> None:
    import subprocess

    code = (
        "import sys, appliance.evaluate.squad; "
        "bad = [m for m in ('torch', 'transformers', 'onnxruntime', 'apsw') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
