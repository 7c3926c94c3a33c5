"""Hostile inputs and outputs: feedback export targets and foreign feedback lines, and user
model manifests with bad ids, file names, types or hashes."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from appliance.config import load_settings
from appliance.errors import ConfigError, InputError, ModelHashError
from appliance.feedback import FeedbackRecord, FeedbackStore, feedback_path
from appliance.models import Registry
from tests.conftest import run_main


def has(text: str, part: str) -> bool:
    """``part`` is in ``text``, ignoring whitespace (the console breaks long paths)."""
    return "".join(part.split()) in "".join(text.split())


def good_record(key: str = "k1") -> FeedbackRecord:
    return FeedbackRecord(answer_key=key, rating="good", question="What is 2+2?", answer="4",
                          mode="base", model="m", kb="default")


# -- feedback export: where it writes ----------------------------------------------------------


def test_export_refuses_the_store_and_existing_files(
        tmp_path: Path, _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FeedbackStore(_private_home)
    store.add(good_record())
    before = store.path.read_bytes()
    code, text = run_main(capsys, "feedback", "export", "-o", str(feedback_path(_private_home)))
    assert code == 2 and "feedback file itself" in text
    code, _ = run_main(capsys, "feedback", "export", "--force", "-o", str(store.path))
    assert code == 2 and store.path.read_bytes() == before

    readme = tmp_path / "readme_copy.md"
    readme.write_text("# my notes\n", encoding="utf-8")
    code, text = run_main(capsys, "feedback", "export", "-o", str(readme))
    assert code == 2 and "--force" in text and "already exists" in text
    assert readme.read_text(encoding="utf-8") == "# my notes\n"
    code, _ = run_main(capsys, "feedback", "export", "--force", "-o", str(readme))
    assert code == 0 and json.loads(readme.read_text(encoding="utf-8"))["messages"]


def test_export_never_replaces_a_symlink_and_uses_normal_permissions(
        tmp_path: Path, _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    FeedbackStore(_private_home).add(good_record())
    target = tmp_path / "target.txt"
    target.write_text("keep", encoding="utf-8")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    code, text = run_main(capsys, "feedback", "export", "--force", "-o", str(link))
    assert code == 2 and "not a regular file" in text
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "keep"

    blocker = tmp_path / "afile"
    blocker.write_text("x", encoding="utf-8")
    code, text = run_main(capsys, "feedback", "export", "-o", str(blocker / "x.jsonl"))
    assert code == 2 and "not a folder" in text and "Traceback" not in text

    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "new.jsonl"
    code, _ = run_main(capsys, "feedback", "export", "-o", str(out))
    assert code == 0 and (out.stat().st_mode & 0o777) == (0o666 & ~umask)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_skips_and_counts_foreign_lines(
        tmp_path: Path, _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FeedbackStore(_private_home)
    good = store.add(good_record()).to_json()
    foreign = [
        [1, 2], 5, "text", None,
        {**good, "answer_key": "a", "correction": None},
        {**good, "answer_key": "b", "answer": 5},
        {**good, "answer_key": "c", "question": None},
        {**good, "answer_key": "d", "rating": "meh"},
        {**good, "answer_key": "e", "mode": "rag",
         "sources": [{"n": 1, "chunk_id": 1, "path": "p", "heading": "h", "text": 5}]},
        {**good, "answer_key": "f", "sources": "none"},
        {**good, "answer_key": [1]},
    ]
    with store.path.open("a", encoding="utf-8") as fh:
        for item in foreign:
            fh.write(json.dumps(item) + "\n")
        fh.write('{"torn": \n')
    assert [r.answer_key for r in store] == ["k1"]
    report = store.export_chat_jsonl(tmp_path / "out.jsonl")
    assert report.written == 1 and report.skipped_lines == len(foreign) + 1
    code, text = run_main(capsys, "feedback", "export", "-o", str(tmp_path / "cli.jsonl"))
    assert code == 0 and f"skipped {len(foreign) + 1} lines" in text


def test_export_refusal_names_force_in_the_api(tmp_path: Path, _private_home: Path) -> None:
    existing = tmp_path / "old.jsonl"
    existing.write_text("old\n", encoding="utf-8")
    with pytest.raises(InputError, match="--force"):
        FeedbackStore(_private_home).export_chat_jsonl(existing)
    assert existing.read_text(encoding="utf-8") == "old\n"


# -- the user model manifest ---------------------------------------------------------------


def write_manifest(home: Path, body: str) -> Path:
    folder = home / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.toml"
    path.write_text(body, encoding="utf-8")
    return path


def entry(model_id: str = "mine", file: str = '"mine.gguf"', sha: str = "0" * 64,
          more: str = "") -> str:
    return (f'[[model]]\nid = {json.dumps(model_id)}\nrole = "generator"\nformat = "gguf"\n'
            f'file = {file}\nsha256 = "{sha}"\n{more}\n')


def test_remove_cannot_reach_outside_the_models_folder(
        _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    victim = _private_home / "victimdir"
    victim.mkdir(parents=True)
    (victim / "precious.txt").write_text("data", encoding="utf-8")
    (_private_home / "train").mkdir()
    manifest = write_manifest(_private_home, entry("../victimdir"))
    code, text = run_main(capsys, "models", "remove", "../victimdir", "--yes")
    assert code != 0 and (victim / "precious.txt").is_file()
    assert "not a valid model id" in text or "invalid id" in text
    assert "Traceback" not in text

    code, text = run_main(capsys, "models", "list")
    assert code == 2 and "'../victimdir'" in text and has(text, str(manifest))

    write_manifest(_private_home, entry("ok", file='"../victimdir/precious.txt"'))
    code, text = run_main(capsys, "models", "remove", "ok", "--yes")
    assert code == 2 and "Field 'file'" in text and (victim / "precious.txt").is_file()


@pytest.mark.parametrize(("field", "value", "words"), [
    ("file", "5", "text"), ("size", '"big"', "a whole number"), ("default", '"yes"', "true"),
    ("sha256", "[1]", "text"), ("lineage", "3", "a table"), ("size", "true", "a whole number"),
])
def test_manifest_field_types_are_checked(_private_home: Path, field: str, value: str,
                                          words: str) -> None:
    fields = {"id": '"mine"', "role": '"generator"', "format": '"gguf"', "file": '"mine.gguf"',
              "sha256": '"' + "0" * 64 + '"', field: value}
    body = "[[model]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items())
    path = write_manifest(_private_home, body)
    with pytest.raises(ConfigError) as info:
        Registry.load(load_settings())
    message = info.value.message
    assert f"Field '{field}'" in message and words in message and str(path) in message
    assert "'mine'" in message and "fix or remove" in message


def test_invalid_toml_names_the_file_and_the_fix(
        _private_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_manifest(_private_home, "[[model]\nid = ")
    code, text = run_main(capsys, "models", "list")
    assert code == 2 and has(text, f"fix or remove {path}")


def test_full_verify_rehashes_a_file_whose_mtime_was_restored(_private_home: Path) -> None:
    folder = _private_home / "models"
    folder.mkdir(parents=True)
    gguf = folder / "mine.gguf"
    gguf.write_bytes(b"GGUF" + bytes(4096))
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    write_manifest(_private_home, entry(sha=digest))
    settings = load_settings()
    Registry.load(settings).resolve("mine")  # fills the hash cache
    st = gguf.stat()
    time.sleep(0.05)  # past the kernel's timestamp granularity, so the ctime moves
    with gguf.open("r+b") as fh:
        fh.seek(100)
        fh.write(b"evil")
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))  # touch -r
    assert gguf.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(ModelHashError):
        Registry.load(settings).resolve("mine", full=True)
    with pytest.raises(ModelHashError):  # the ctime in the cache key catches it too
        Registry.load(settings).resolve("mine")

    # A cache entry forged to the manifest's hash fools an ordinary load, never a full check.
    cache = settings.home / "cache" / "model-hashes.json"
    data = json.loads(cache.read_text(encoding="utf-8"))
    data[str(gguf.resolve())][-1] = digest
    cache.write_text(json.dumps(data), encoding="utf-8")
    Registry.load(settings).resolve("mine")
    with pytest.raises(ModelHashError):
        Registry.load(settings).resolve("mine", full=True)
