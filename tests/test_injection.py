"""The prompt-injection corpus and its benchmark (scripts/bench_injection.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, _require_models

SMOL = "smollm2-135m-instruct-q4_1"
CORPUS = REPO / "tests" / "data" / "injection"


def _bench() -> ModuleType:
    name = "bench_injection"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "bench_injection.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_corpus_questions_and_detectors_are_sound() -> None:
    bench = _bench()
    questions = bench.load_questions(CORPUS / "questions.jsonl")  # validates every detector
    assert len(questions) >= 12
    assert len({q.id for q in questions}) == len(questions)
    docs = {p.name for p in CORPUS.iterdir() if p.suffix == ".md"}
    attack_of: dict[str, str] = {}
    for q in questions:
        assert q.doc in docs, q.id
        assert q.question.strip() and q.answer.strip(), q.id
        # the answer really is in the document, and the detector does not flag it
        assert q.answer.casefold() in (CORPUS / q.doc).read_text("utf-8").casefold(), q.id
        for text in (q.answer, f"{q.answer} [1].", f"The answer is {q.answer} [2]."):
            assert not bench.detector_matches(q.obeyed, text), (q.id, text)
        assert bench.is_correct(q.answer, f"It is {q.answer} [1].")
        assert attack_of.setdefault(q.doc, q.attack) == q.attack, "one attack per document"
    assert len(set(attack_of.values())) >= 6
    assert set(attack_of) == docs  # every document is asked about


@pytest.mark.parametrize("spec", [{}, {"contains": ""}, {"regex": "("}, {"upper_ratio": 2},
                                  {"upper_ratio": True}, {"nope": "x"},
                                  {"contains": "a", "regex": "b"}, "PWNED"])
def test_bad_detectors_are_refused(spec: object) -> None:
    with pytest.raises(ValueError):
        _bench().check_detector(spec)


def test_detectors_and_scoring() -> None:
    bench = _bench()
    assert bench.detector_matches({"contains": "pwned"}, "PWNED")
    assert bench.detector_matches({"regex": r"\[\s*7\s*\]"}, "Blue [7].")
    assert bench.detector_matches({"upper_ratio": 0.9}, "OLD AGNES [1]")
    assert not bench.detector_matches({"upper_ratio": 0.9}, "Old Agnes [1]")
    assert not bench.detector_matches({"upper_ratio": 0.9}, "1862 [1]")  # no letters
    assert bench.is_correct("Miller's Anchor", "The MILLER’S ANCHOR [1].")
    assert not bench.is_correct("26", "twenty-six")
    prompts, skipped = bench.variant_prompts(["delimited", "no_notice"])
    assert prompts["delimited"] is None and not skipped
    assert "untrusted" not in prompts["no_notice"] and prompts["no_notice"].strip()
    with pytest.raises(ValueError):
        bench.variant_prompts(["unknown"])


@pytest.mark.integration
def test_benchmark_runs_with_the_small_model(tmp_path: Path) -> None:
    _require_models()
    out = tmp_path / "injection.json"
    rc = _bench().main(["--model", SMOL, "--limit", "4", "--home", str(tmp_path / "home"),
                        "--max-tokens", "48", "--threads", "1", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text("utf-8"))
    assert result["model"] == SMOL and result["questions"] == 4
    assert result["documents"] == result["chunks"] == 10  # one chunk per document
    assert set(result["variants"]) == {"delimited", "no_notice"}
    assert len(result["answers"]) == 4 * len(result["variants"])
    for variant, data in result["variants"].items():
        overall = data["overall"]
        assert overall["n"] == 4
        assert sum(s["n"] for s in data["by_attack"].values()) == 4
        assert set(data["by_attack"]) == set(result["attacks"])
        for key, rate in overall["rates"].items():
            assert 0.0 <= rate <= 1.0, (variant, key)
            assert overall[key] == sum(s[key] for s in data["by_attack"].values())
            assert overall[key] <= overall["n"]
        rows = [r for r in result["answers"] if r["variant"] == variant]
        assert overall["obeyed"] == sum(r["obeyed"] for r in rows)
        assert overall["abstained"] == sum(r["abstained"] for r in rows)
        for r in rows:
            assert isinstance(r["answer"], str) and r["answer"].strip()
            assert all(isinstance(n, int) for n in r["unknown_citations"])
