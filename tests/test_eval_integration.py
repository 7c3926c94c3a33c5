"""`appliance eval` and `eval-retrieval` end to end: real SmolLM2, real embedder, tiny corpora.

The report's HTML page is rendered in headless Chromium (Debian's ``chromium`` package) to
check that the inline SVG charts are there and the page is not blank.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.generate import is_fine_tuned
from appliance.models import Registry
from tests.conftest import packaged_without_built_models, run_cli
from tests.test_eval import EXAMPLE, SMOL, beir_fixture, squad_fixture

pytestmark = pytest.mark.integration

TOPICS = ("assert", "break", "raise", "with", "power", "return")
SUBSET = ("unans-pip", "assert-exception", "bare-raise", "json-zero-power")
"""The unanswerable question comes first: `--limit 1` runs it (rag abstains on retrieval)."""
MODES = ("base", "rag", "ft", "hybrid")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _home(root: Path) -> Path:
    home = root / "home"
    home.mkdir(parents=True)
    # short answers, small chunks and a small window (short prompts) keep the generations
    # fast on a shared 2-core machine
    (home / "config.toml").write_text(
        "[generate]\nmax_tokens = 16\nn_ctx = 512\n[ingest]\nchunk_tokens = 64\n"
        "chunk_overlap = 8\n", encoding="utf-8")
    return home


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A knowledge base of six pydoc topics and four questions about them (one unanswerable,
    one with a JSON-schema format)."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("eval")
    home = _home(root)
    corpus = root / "corpus"
    corpus.mkdir()
    for name in TOPICS:
        (corpus / f"{name}.rst").write_text(topics[name], encoding="utf-8")
    run_cli("ingest", str(corpus), "--kb", "tiny", home=home, check=True, timeout=300)
    rows = [json.loads(line) for line in EXAMPLE.read_text(encoding="utf-8").splitlines()]
    chosen = sorted((r for r in rows if r["id"] in SUBSET), key=lambda r: r["answerable"])
    assert len(chosen) == len(SUBSET)
    questions = root / "subset.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")
    return {"root": root, "home": home, "set": questions}


@pytest.fixture(scope="module")
def four_modes(tiny: dict[str, Path]) -> dict[str, Any]:
    """One eval run of all four modes (SmolLM2 standing in for the fine-tuned model)."""
    out = tiny["root"] / "report"
    proc = run_cli("eval", str(tiny["set"]), "--kb", "tiny", "--modes", ",".join(MODES),
                   "--model", SMOL, "--ft-model", SMOL, "-o", str(out), home=tiny["home"],
                   timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {"out": out, "proc": proc}


def test_eval_runs_all_four_modes_and_writes_the_reports(four_modes: dict[str, Any]) -> None:
    out: Path = four_modes["out"]
    for name in ("report.json", "report.md", "report.html", "questions.jsonl",
                 "retrieval.jsonl", *(f"answers-{m}.jsonl" for m in MODES)):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report["modes"]) == list(MODES) and not report["skipped"]
    for mode in MODES:
        entry = report["modes"][mode]
        assert entry["model"] == SMOL and entry["missing"] == 0 and not entry["failed"]
        m = entry["metrics"]
        assert m["questions"] == 4 and m["answerable"] == 3 and m["unanswerable"] == 1
        assert m["format_questions"] == 1 and m["p50_ms"] > 0
        for key in ("accuracy", "em", "f1", "contained", "abstention_accuracy",
                    "false_abstention", "format_compliance"):
            assert 0.0 <= m[key] <= 1.0, (mode, key)
            low, high = m["intervals"][key]
            assert low <= m[key] <= high, (mode, key)
            if key not in ("em", "f1"):  # a Wilson interval on 1-4 questions is wide
                assert high - low > 0.3, (mode, key)
        records = [json.loads(x) for x in (out / f"answers-{mode}.jsonl").read_text(
            encoding="utf-8").splitlines()]
        assert {r["id"] for r in records} == set(SUBSET)
        assert all(r["mode"] == mode and r["model"] == SMOL for r in records)
    for mode in ("rag", "hybrid"):
        assert report["modes"][mode]["metrics"]["citation_coverage"] is not None
    retrieval = report["retrieval"]
    assert retrieval["questions"] == 3 and retrieval["hit@5"] >= 2 / 3
    assert report["decision"]["verdict"] in MODES and report["decision"]["headline"]
    pairs = {(c["before_mode"], c["after_mode"]) for c in report["comparisons"]}
    assert pairs == {("base", "rag"), ("base", "ft"), ("rag", "hybrid"), ("ft", "hybrid")}
    assert all(c["n"] >= 1 and c["low"] <= c["delta"] <= c["high"]
               for c in report["comparisons"])
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | base | rag | ft | hybrid |" in md and "## Decision" in md
    assert "## Paired comparisons" in md
    assert "Decision:" in four_modes["proc"].stdout


def test_a_rerun_resumes_without_answering_again(tiny: dict[str, Path],
                                                 four_modes: dict[str, Any]) -> None:
    out: Path = four_modes["out"]
    journal = out / "answers-base.jsonl"
    lines = journal.read_text(encoding="utf-8").splitlines()
    journal.write_text("\n".join(lines[:3]) + "\n", encoding="utf-8")  # as if killed
    proc = run_cli("eval", str(tiny["set"]), "--kb", "tiny", "--modes", ",".join(MODES),
                   "--model", SMOL, "--ft-model", SMOL, "-o", str(out), home=tiny["home"])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    answered = {m: report["modes"][m]["answered_this_run"] for m in MODES}
    assert answered == {"base": 1, "rag": 0, "ft": 0, "hybrid": 0}
    assert len(journal.read_text(encoding="utf-8").splitlines()) == 4


def test_html_report_renders_with_charts_in_chromium(four_modes: dict[str, Any],
                                                     tmp_path: Path) -> None:
    if CHROMIUM is None:
        pytest.fail("chromium is missing: install Debian's package (apt-get install chromium)")
    page = four_modes["out"] / "report.html"
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for chart in ("chart-quality", "chart-latency", "chart-retrieval"):
        assert f'id="{chart}"' in dom.stdout, chart
    assert dom.stdout.count('class="bar"') >= 4 * 5
    assert "Decision" in dom.stdout and "<script" not in dom.stdout

    def screenshot(url: str, png: Path) -> int:
        proc = subprocess.run([*flags, f"--screenshot={png}", "--window-size=1200,1600", url],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
        return png.stat().st_size

    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>", encoding="utf-8")
    blank_size = screenshot(blank.as_uri(), tmp_path / "blank.png")
    size = screenshot(page.as_uri(), tmp_path / "report.png")
    assert size > 20_000 and size > 5 * blank_size  # text, tables and charts, not a blank page


def test_eval_takes_squad_json_and_ingests_the_chosen_articles(tmp_path: Path) -> None:
    home = _home(tmp_path)
    squad = squad_fixture(tmp_path / "squad.json")
    out = tmp_path / "report"
    proc = run_cli("eval", str(squad), "--articles", "Library", "--kb", "sq", "--modes", "base",
                   "--model", SMOL, "--limit", "2", "-o", str(out), home=home)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (home / "kb" / "sq.sqlite").is_file()
    assert sorted(p.name for p in (home / "eval" / "squad" / "sq").iterdir()) == [
        "Library_000.txt", "Library_001.txt"]
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["set"]["kind"] == "squad" and report["set"]["articles"] == ["Library"]
    assert report["set"]["questions"] == 2 and report["set"]["total_in_set"] == 4
    assert report["modes"]["base"]["metrics"]["questions"] == 2
    assert report["retrieval"]["questions"] >= 1  # the knowledge base was searched


def test_fine_tuned_modes_without_a_fine_tuned_model(tiny: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APPLIANCE_MODELS_DIR",
                       str(packaged_without_built_models(tmp_path / "models")))
    settings = load_settings(home=tiny["home"])
    assert not any(is_fine_tuned(e) for e in Registry.load(settings))
    proc = run_cli("eval", str(tiny["set"]), "--kb", "tiny", "--modes", "rag,ft",
                   "-o", str(tmp_path / "r1"), home=tiny["home"])
    assert proc.returncode == 5
    assert "Mode 'ft' needs a fine-tuned model" in proc.stderr and "Traceback" not in proc.stderr
    # by default ft and hybrid are skipped with a note
    out = tmp_path / "r2"
    proc = run_cli("eval", str(tiny["set"]), "--kb", "tiny", "--model", SMOL, "--limit", "1",
                   "-o", str(out), home=tiny["home"])
    assert proc.returncode == 0, proc.stderr
    assert "ft skipped" in proc.stderr and "hybrid skipped" in proc.stderr
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert list(report["modes"]) == ["base", "rag"] and set(report["skipped"]) == {"ft", "hybrid"}
    assert "**ft skipped**" in (out / "report.md").read_text(encoding="utf-8")


def test_eval_retrieval_on_a_tiny_beir_set(tmp_path: Path) -> None:
    home = _home(tmp_path)
    folder = beir_fixture(tmp_path / "beir")
    proc = run_cli("eval-retrieval", str(folder), "--k", "20", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["queries"] == 4 and result["documents"] == 4 and result["ingested"] == 4
    assert set(result["modes"]) == {"keyword", "vector", "hybrid"}
    for m in result["modes"].values():
        assert set(m) == {"ndcg@10", "recall@10", "recall@20", "mrr@10"}
        assert all(0.0 <= v <= 1.0 for v in m.values())
    assert result["modes"]["hybrid"]["recall@20"] == 1.0
    assert result["modes"]["hybrid"]["ndcg@10"] >= 0.75
    assert not (home / "kb").exists()  # the knowledge base was temporary
    table = run_cli("eval-retrieval", str(folder), home=home)
    assert table.returncode == 0 and "nDCG@10" in table.stdout and "hybrid" in table.stdout
