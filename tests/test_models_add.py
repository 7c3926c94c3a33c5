"""`appliance models add`: a GGUF chat model the user brings, read by the real llama.cpp,
registered in the user manifest and answering through --model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from appliance.config import load_settings, packaged_models_dir
from appliance.errors import InputError, ModelError
from appliance.models import Registry
from appliance.models import gguf as gguf_mod
from appliance.models.gguf import probe_gguf
from tests.conftest import run_cli, unwrapped

SMALL = "smollm2-135m-instruct-q4_1"


def _small_gguf() -> Path:
    return Registry.load(load_settings()).resolve(SMALL).path


def _copy(tmp_path: Path, name: str = "mine.gguf") -> Path:
    dest = tmp_path / "stick" / name
    dest.parent.mkdir(exist_ok=True)
    shutil.copyfile(_small_gguf(), dest)
    return dest


def _user_ids(home: Path) -> list[str]:
    return [e.id for e in Registry.load(load_settings(home=home)) if e.origin == "user"]


def test_probe_reads_the_header_of_the_real_small_model() -> None:
    info = probe_gguf(_small_gguf())
    assert info.architecture == "llama" and info.chat_template
    assert info.context_length == 8192 and info.n_vocab == 49152
    assert info.licence == "apache-2.0"


def test_added_model_answers_and_its_removal_keeps_the_users_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine = _copy(tmp_path)
    offline = ("unshare", "-rn")  # adding and answering need no network
    proc = run_cli("models", "add", str(mine), "--id", "my-small", home=home, prefix=offline)
    assert proc.returncode == 0, proc.stderr
    said = unwrapped(proc.stdout)
    assert "added 'my-small'" in said and "8,192-token context" in said
    assert "--model my-small" in said

    listed = json.loads(run_cli("models", "list", "--json", home=home, check=True).stdout)
    entry = next(e for e in listed if e["id"] == "my-small")
    assert entry["origin"] == "user" and entry["role"] == "generator"
    assert "lineage" not in entry  # not a trained model: ft/hybrid never pick it by default
    assert entry["gguf"]["architecture"] == "llama" and entry["source"] == str(mine)
    assert entry["sha256"] == Registry.load(load_settings()).get(SMALL).sha256
    assert Path(entry["path"]).parent == home / "models"

    proc = run_cli("ask", "What is two plus two?", "--mode", "base", "--model", "my-small",
                   "--json", home=home, prefix=offline)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["model"] == "my-small" and record["mode"] == "base"
    assert record["tokens"]["completion"] > 0

    proc = run_cli("models", "remove", "my-small", "--yes", home=home)
    assert proc.returncode == 0, proc.stderr
    assert _user_ids(home) == [] and not Path(entry["path"]).exists()
    assert mine.is_file() and mine.stat().st_size == _small_gguf().stat().st_size


def _no_template(tmp_path: Path) -> Path:
    """The small model with its chat template's key renamed: a GGUF llama.cpp reads, but
    one that cannot render a chat (as a base model's)."""
    path = _copy(tmp_path, "base.gguf")
    data = bytearray(path.read_bytes())
    at = data.find(b"tokenizer.chat_template")
    assert at > 0
    data[at:at + 23] = b"tokenizer.chat_templatX"
    path.write_bytes(bytes(data))
    return path


def _bad_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.gguf"
    if kind == "not-gguf":
        path.write_bytes(b"PK\x03\x04" + os.urandom(4000))
    elif kind == "truncated":
        path.write_bytes(_small_gguf().read_bytes()[:1000])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "no-template":
        return _no_template(tmp_path)
    return path  # "missing": never created


BAD = {"not-gguf": ("not a GGUF file", 2), "truncated": ("damaged", 5),
       "empty": ("not a GGUF file", 2), "folder": ("is a folder", 2),
       "fifo": ("not a regular file", 2), "missing": ("does not exist", 2),
       "no-template": ("has no chat template", 5)}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_file_that_cannot_answer_is_refused_and_nothing_registered(
        tmp_path: Path, kind: str) -> None:
    home = tmp_path / "home"
    path = _bad_file(tmp_path, kind)
    proc = run_cli("models", "add", str(path), "--id", "mine", home=home, timeout=120)
    reason, code = BAD[kind]
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert reason in unwrapped(proc.stderr) and "Traceback" not in proc.stderr
    assert _user_ids(home) == []
    assert not list((home / "models").glob("*.gguf*")), "a file was left behind"


def test_ids_are_checked_before_the_file_is_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    mine = _copy(tmp_path)
    not_gguf = _bad_file(tmp_path, "not-gguf")  # the id is refused first, not the file
    proc = run_cli("models", "add", str(not_gguf), "--id", SMALL, home=home)
    assert proc.returncode == 2 and "packaged model" in unwrapped(proc.stderr)
    proc = run_cli("models", "add", str(not_gguf), "--id", "bad id", home=home)
    assert proc.returncode == 2 and "not a valid model id" in unwrapped(proc.stderr)
    assert run_cli("models", "add", str(mine), "--id", "m", home=home).returncode == 0
    proc = run_cli("models", "add", str(mine), "--id", "m", home=home)
    assert proc.returncode == 2 and "--force" in unwrapped(proc.stderr)
    proc = run_cli("models", "add", str(mine), "--id", "m", "--force", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["id"] == "m" and _user_ids(home) == ["m"]
    assert len(list((home / "models").glob("*.gguf*"))) == 1  # the replaced file is gone


def test_a_reader_that_crashes_or_hangs_is_a_model_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header is read in a child process: a llama.cpp that dies on a hostile file, or
    never finishes, costs the command one sentence, not the process."""
    path = _copy(tmp_path)
    monkeypatch.setattr(gguf_mod, "_CHILD", "import os; os.abort()")
    with pytest.raises(ModelError, match=r"crashed .*SIGABRT"):
        probe_gguf(path)
    monkeypatch.setattr(gguf_mod, "_CHILD", "import time; time.sleep(30)")
    with pytest.raises(ModelError, match=r"took longer than 0\.5 s"):
        probe_gguf(path, timeout=0.5)
    with pytest.raises(InputError, match="not a GGUF file"):
        probe_gguf(packaged_models_dir() / "manifest.toml")


def test_metadata_from_the_file_is_made_printable(tmp_path: Path) -> None:
    """A file's own name string goes into the manifest, descriptions and the terminal:
    escape codes and DEL (which TOML refuses raw) from a hostile file are dropped."""
    path = _copy(tmp_path, "odd.gguf")
    data = bytearray(path.read_bytes())
    at = data.find(b"Smollm2 135M")
    assert at > 0
    data[at:at + 7] = b"\x1b[31m\x7fX"  # same length: the header stays valid
    path.write_bytes(bytes(data))
    info = probe_gguf(path)
    assert info.name.startswith("[31mX 135M") and info.name.isprintable()


def _with_template(tmp_path: Path, name: str, template: str) -> Path:
    """The small model with another chat template of the same byte length (padded with a
    Jinja comment), so the GGUF's header stays valid."""
    path = _copy(tmp_path, name)
    data = path.read_bytes()
    start = data.find(b"{% for message in messages %}")
    end = data.find(b"{% endif %}", data.find(b"add_generation_prompt", start)) + 11
    assert 0 < start < end
    new = template.encode()
    pad = end - start - len(new) - 4
    assert pad >= 0, "the template must be shorter than SmolLM2's"
    new += b"{#" + b" " * pad + b"#}"
    path.write_bytes(data[:start] + new + data[end:])
    return path


NO_SYSTEM = ("{% for message in messages %}{% if message['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}"
             "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n'}}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
             "{% endif %}")


def test_a_template_without_a_system_role_gets_the_instructions_in_the_question(
        tmp_path: Path) -> None:
    """Gemma 2's template raises on a system message and Mistral's wants user and assistant
    turns only: such a model still answers, its instructions folded into the question."""
    from appliance.generate.llama import LlamaGenerator

    path = _with_template(tmp_path, "nosys.gguf", NO_SYSTEM)
    info = probe_gguf(path)
    assert info.chat_template and not info.system_role and not info.template_error
    gen = LlamaGenerator("nosys", path, load_settings().generate)
    try:
        assert not gen.template.system_role
        tokens = gen.render([{"role": "system", "content": "Cite [n]."},
                             {"role": "user", "content": "Why?"}])
        text = gen.llm.detokenize(tokens).decode()
        assert "user\nCite [n].\n\nWhy?\n" in text and "system" not in text
    finally:
        gen.close()

    home = tmp_path / "home"
    proc = run_cli("models", "add", str(path), "--id", "nosys", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "takes no system message" in unwrapped(proc.stdout)
    proc = run_cli("ask", "What is two plus two?", "--mode", "base", "--model", "nosys",
                   "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["model"] == "nosys"


def test_a_template_that_does_not_parse_is_refused(tmp_path: Path) -> None:
    path = _with_template(tmp_path, "broken.gguf", "{% for message in messages %}{{ oops")
    assert "does not parse" in probe_gguf(path).template_error
    from appliance.generate.llama import LlamaGenerator

    with pytest.raises(ModelError, match="does not parse"):  # not a jinja2 traceback
        LlamaGenerator("broken", path, load_settings().generate)
    proc = run_cli("models", "add", str(path), "--id", "broken", home=tmp_path / "home")
    assert proc.returncode == 5 and "does not parse" in unwrapped(proc.stderr), proc.stderr
    assert _user_ids(tmp_path / "home") == []


def test_prompts_fit_the_context_a_model_was_trained_for(tmp_path: Path) -> None:
    """generate.n_ctx is 4,096; a model trained for 1,024 tokens gets prompts of at most
    1,024, and models add says so."""
    import struct

    from appliance.generate.llama import LlamaGenerator

    path = _copy(tmp_path, "short.gguf")
    data = bytearray(path.read_bytes())
    key = data.find(b"llama.context_length") + len(b"llama.context_length")
    assert struct.unpack_from("<II", data, key) == (4, 8192)  # a uint32 of 8192
    struct.pack_into("<I", data, key + 4, 1024)
    path.write_bytes(bytes(data))
    assert probe_gguf(path).context_length == 1024
    gen = LlamaGenerator("short", path, load_settings().generate)
    try:
        assert gen.n_ctx == 1024 and int(gen.llm.n_ctx()) == 4096
    finally:
        gen.close()
    proc = run_cli("models", "add", str(path), "--id", "short", home=tmp_path / "home")
    assert proc.returncode == 0, proc.stderr
    assert "prompts are fitted to 1,024" in unwrapped(proc.stdout)
