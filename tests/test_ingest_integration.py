"""Ingest and search with the real embedder, the real loaders and the real store."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from appliance.api import Appliance
from appliance.config import load_settings
from appliance.store import KnowledgeBase
from tests.conftest import REPO, run_cli
from tests.hostile import GOOD_FILES, make_hostile_corpus

pytestmark = pytest.mark.integration


def test_demo_search_finds_the_with_statement(demo_kb: tuple[Appliance, Path]) -> None:
    app, _ = demo_kb
    for mode in ("hybrid", "vector", "keyword"):
        hits = app.search("how does the with statement call __exit__", kb="demo", k=3,
                          mode=mode).hits
        # the topic lives in with.rst, in compound.rst's "with" section and in the
        # context-manager sections; the best hit must be one of them
        top = hits[0]
        assert "with" in top.heading.lower(), (mode, [(h.path, h.heading) for h in hits])
        assert os.path.basename(top.path) in (
            "with.rst", "compound.rst", "context-managers.rst", "specialnames.rst"
        )


def test_demo_chunks_fit_the_embedder_window(demo_kb: tuple[Appliance, Path]) -> None:
    app, _ = demo_kb
    with app.open_kb("demo") as kb:
        biggest = kb.conn.execute("SELECT max(token_count) FROM chunks").fetchall()[0][0]
        assert biggest <= 256
        assert kb.check() == []


def test_reingest_is_incremental(tmp_path: Path) -> None:
    from appliance.demo import write_pydoc_corpus

    corpus = tmp_path / "corpus"
    write_pydoc_corpus(corpus)
    for extra in list(corpus.iterdir())[10:]:
        extra.unlink()  # ten files keep this test quick
    app = Appliance(load_settings(home=tmp_path / "h"))
    first = app.ingest([corpus], kb="inc")
    assert first.added == 10 and first.chunks > 10
    second = app.ingest([corpus], kb="inc")
    assert (second.added, second.updated, second.unchanged, second.chunks) == (0, 0, 10, 0)
    changed = sorted(corpus.iterdir())[0]
    changed.write_text(changed.read_text() + "\nA new closing paragraph about zebras.\n")
    gone = sorted(corpus.iterdir())[1]
    gone.unlink()
    third = app.ingest([corpus], kb="inc", prune=True)
    assert (third.added, third.updated, third.unchanged, third.removed) == (0, 1, 8, 1)
    assert app.search("zebras", kb="inc", k=1, mode="keyword").hits[0].path == str(changed)
    assert app.kb_check("inc") == []
    app.close()


def test_hostile_folder(tmp_path: Path) -> None:
    corpus = tmp_path / "hostile"
    corpus.mkdir()
    expected = make_hostile_corpus(corpus)
    home = tmp_path / "h"
    proc = run_cli("ingest", str(corpus), "--kb", "hostile", "--json", home=home, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    failed = {os.path.relpath(f["path"], corpus): f["reason"].lower() for f in report["failed"]}
    for name, reason in expected.items():
        assert name in failed, (name, failed)
        assert reason in failed[name], (name, failed[name])
    assert report["added"] == len(GOOD_FILES)
    strict = run_cli("ingest", str(corpus), "--kb", "hostile", "--strict", home=home)
    assert strict.returncode == 1
    for name, word in GOOD_FILES.items():
        out = run_cli("search", word, "--kb", "hostile", "--json", "--mode", "keyword",
                      home=home, check=True)
        hits = json.loads(out.stdout)["hits"]
        assert hits and os.path.basename(hits[0]["path"]) == name, (name, hits)


def test_kill_during_ingest_then_resume(tmp_path: Path) -> None:
    from appliance.demo import write_pydoc_corpus

    corpus = tmp_path / "corpus"
    write_pydoc_corpus(corpus)
    home = tmp_path / "h"
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "ingest", str(corpus),
                             "--kb", "k9"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kb_path = home / "kb" / "k9.sqlite"
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if kb_path.exists():
            try:
                with KnowledgeBase(kb_path, readonly=True) as kb:
                    done = kb.count("documents")
            except Exception:
                continue
            if done >= 5:
                break
    assert proc.poll() is None, "ingest finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done < 79
    check = run_cli("kb", "check", "k9", home=home)
    assert check.returncode == 0, check.stdout + check.stderr
    rerun = run_cli("ingest", str(corpus), "--kb", "k9", "--json", home=home, check=True)
    report = json.loads(rerun.stdout)
    assert report["added"] + report["unchanged"] == 79 and report["unchanged"] >= 5
    assert run_cli("kb", "check", "k9", home=home).returncode == 0
    stats = json.loads(run_cli("kb", "stats", "k9", "--json", home=home, check=True).stdout)
    assert stats["documents"] == 79


def test_ingest_and_search_offline(tmp_path: Path) -> None:
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    assert probe.returncode == 0, "unshare -rn must work on this machine: " + probe.stderr.decode()
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.md").write_text("# Tea\n\nGreen tea is steamed; black tea is oxidised.\n")
    home = tmp_path / "h"
    run_cli("ingest", str(corpus), "--kb", "off", home=home, check=True, prefix=("unshare", "-rn"))
    out = run_cli("search", "how is black tea made", "--kb", "off", "--json", home=home,
                  check=True, prefix=("unshare", "-rn"))
    assert json.loads(out.stdout)["hits"][0]["path"].endswith("a.md")


def test_a_folder_given_twice_through_a_symlink_is_ingested_once(tmp_path: Path) -> None:
    from appliance.ingest.runner import discover

    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.txt"):
        (docs / name).write_text(f"# {name}\n\ntext\n", encoding="utf-8")
    os.link(docs / "a.md", docs / "hard-a.md")
    (tmp_path / "docslink").symlink_to(docs)
    found, failed, roots = discover([docs, tmp_path / "docslink"], [".md", ".txt"])
    assert sorted(os.path.basename(c.path) for c in found) == ["a.md", "b.txt"]
    assert all(c.path.startswith(str(docs) + os.sep) for c in found)
    assert failed == [] and len(roots) == 2


def test_chinese_and_japanese_words_are_keyword_searchable(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "australia.md").write_text(
        "# 澳大利亚\n\n堪培拉是澳大利亚的首都，位于澳大利亚首都领地。悉尼是人口最多的城市。\n",
        encoding="utf-8")
    (docs / "japan.md").write_text(
        "# 日本\n\n東京は日本の首都です。富士山は日本で一番高い山です。\n", encoding="utf-8")
    (docs / "tea.md").write_text("# Tea\n\nGreen tea is steamed or pan-fired.\n",
                                 encoding="utf-8")
    app = Appliance(load_settings(home=tmp_path / "h"))
    assert app.ingest([docs], kb="cjk").added == 3
    for query, expected in (("澳大利亚的首都是哪里", "australia.md"), ("富士山", "japan.md")):
        for mode in ("keyword", "hybrid"):
            hits = app.search(query, kb="cjk", k=2, mode=mode).hits
            assert os.path.basename(hits[0].path) == expected, (query, mode)
            if mode == "keyword":
                assert hits[0].scores["keyword"] is not None
    with app.open_kb("cjk") as kb:
        assert kb.count("chunks_cjk") == 2 and kb.check() == []
