"""The fine-tuning acceptance tests (they need the [train] extra and setup's models).

- A few LoRA steps on SmolLM2-135M (dequantized from its Q4_1 GGUF), merge, convert,
  quantize to q8_0, register in a private data directory, load the GGUF with llama.cpp and
  pass the parity check, in well under five minutes on two cores.
- Bad data fails fast with line numbers and registers nothing (tests/test_train_data.py
  covers the CLI; here the library entry point).
- kill -9 during training, then a rerun resumes from the last checkpoint and ends with the
  same adapter as an uninterrupted run (on a tiny random model, so it costs seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.models import Registry
from appliance.train import TrainConfig, TrainingDataError, fine_tune
from appliance.train.config import RunOptions
from tests.conftest import REPO, _require_models, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "smollm2-135m-instruct-q4_1"

CAPITALS = {
    "France": "Paris", "Italy": "Rome", "Spain": "Madrid", "Germany": "Berlin",
    "Japan": "Tokyo", "Egypt": "Cairo", "Peru": "Lima", "Kenya": "Nairobi",
    "Chile": "Santiago", "Cuba": "Havana", "Norway": "Oslo", "Greece": "Athens",
    "Poland": "Warsaw", "Canada": "Ottawa", "Ghana": "Accra", "Nepal": "Kathmandu",
}


def _require_train_extra() -> None:
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:  # setup installs them; a missing one is a failure
        pytest.fail(f"the [train] extra is missing ({exc}): run scripts/setup.sh first.")


def capitals_data(path: Path) -> Path:
    """Short chat examples in one fixed format (answer, then a citation-like tag)."""
    with path.open("w", encoding="utf-8") as fh:
        for country, city in CAPITALS.items():
            fh.write(json.dumps({"messages": [
                {"role": "system", "content": "Answer in one short sentence."},
                {"role": "user", "content": f"What is the capital of {country}?"},
                {"role": "assistant", "content": f"The capital of {country} is {city} [1]."},
            ]}) + "\n")
    return path


def test_train_merge_export_register_and_parity(tmp_path: Path) -> None:
    _require_models()
    _require_train_extra()
    t0 = time.perf_counter()
    home = tmp_path / "home"
    settings = load_settings(home=home)
    data = capitals_data(tmp_path / "capitals.jsonl")
    config = TrainConfig(r=8, lora_alpha=16, epochs=1, max_steps=3, grad_accum=2,
                         val_split=0.25, learning_rate=5e-4, quant="q8_0", max_len=128)
    steps: list[tuple[int, int, float]] = []
    result = fine_tune(data, BASE, settings, Registry.load(settings), out_id="capitals-q8",
                       config=config, options=RunOptions(save_every=2), adapter_gguf=True,
                       progress=lambda s, n, info: steps.append((s, n, info["loss"])))
    elapsed = time.perf_counter() - t0
    assert [s for s, _, _ in steps] == [1, 2, 3] and all(n == 3 for _, n, _ in steps)

    # Parity: top-1 agreement on held-out prompts, chat template, EOS.
    parity = result.parity
    assert parity.passed, parity.summary()
    assert parity.held_out and parity.prompts == 4 and parity.positions > 20
    assert parity.top1_tie_aware >= 0.98 and parity.top1 >= 0.9
    assert parity.tokenizer_match == 1.0
    assert parity.chat_template and parity.eos_match and parity.eos_stops >= 1

    # Registered in the user manifest with hash and lineage.
    entry = Registry.load(settings).resolve("capitals-q8")  # hash-checked
    assert entry.origin == "user" and entry.format == "gguf" and entry.role == "generator"
    assert entry.path.parent == settings.user_models_dir and entry.path.is_file()
    lineage = entry.lineage or {}
    assert lineage["base"]["id"] == BASE and len(lineage["base"]["sha256"]) == 64
    assert lineage["data"]["sha256"] == result.lineage["data"]["sha256"]
    assert lineage["lora"]["r"] == 8 and lineage["lora"]["quant"] == "q8_0"
    assert lineage["metrics"]["val_loss"] is not None and lineage["metrics"]["steps"] == 3
    from appliance.train.lora import cpu_has_bf16

    if lineage["metrics"]["device"] == "cpu":  # auto: bf16 only where the CPU has it
        assert lineage["metrics"]["precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    assert lineage["parity"]["passed"] is True
    listed = run_cli("models", "list", "--json", home=home, check=True)
    mine = next(e for e in json.loads(listed.stdout) if e["id"] == "capitals-q8")
    assert mine["origin"] == "user" and mine["lineage"]["parity"]["top1_tie_aware"] >= 0.98

    # llama.cpp serves it through the project's generator, chat template included.
    from appliance.generate.llama import LlamaGenerator

    gen = LlamaGenerator("capitals-q8", entry.path, settings.generate)
    text = "".join(gen.stream([{"role": "system", "content": "Answer in one short sentence."},
                               {"role": "user", "content": "What is the capital of Peru?"}],
                              48))
    assert gen.last_stats.finish_reason == "stop", text  # ended at end-of-sequence
    assert text.strip() and gen.last_stats.completion_tokens > 0

    # The adapter alone, as a GGUF LoRA on the base GGUF.
    from llama_cpp import Llama

    assert result.adapter_gguf is not None and result.adapter_gguf.stat().st_size > 0
    base_gguf = Registry.load(settings).resolve(BASE).path
    llm = Llama(model_path=str(base_gguf), lora_path=str(result.adapter_gguf), n_ctx=256,
                verbose=False)
    assert llm.create_completion("The capital of Peru is", max_tokens=4)["choices"][0]["text"]
    llm.close()

    # An existing id is refused before any training.
    with pytest.raises(Exception, match="already registered"):
        fine_tune(data, BASE, settings, Registry.load(settings), out_id="capitals-q8",
                  config=config)
    assert elapsed < 300, f"the CI test took {elapsed:.0f} s"
    _publish_then_build_packaged(settings, tmp_path)
    print(f"\ntrain+export+parity+register: {elapsed:.1f} s; {result.seconds}; "
          f"{parity.summary()}")


def _publish_then_build_packaged(settings: Any, tmp_path: Path) -> None:
    """The committed-adapter path: publish the run's adapter, then build it as setup does."""
    from appliance.models.registry import _read_manifest
    from appliance.train.export import converter_dir
    from appliance.train.packaged import build_packaged, find_adapters, publish_adapter

    models = tmp_path / "packaged"
    dest = publish_adapter(settings, "capitals-q8", models / "adapters", out_id="capitals-pk",
                           description="test", reproduce=["appliance train ..."],
                           data_note="capitals", parity_examples=4, default=True)
    lineage = json.loads((dest / "lineage.json").read_text())
    assert lineage["base"]["id"] == BASE and set(lineage["files"]) >= {
        "adapter_model.safetensors", "adapter_config.json", "parity.jsonl"}
    assert len((dest / "parity.jsonl").read_text().splitlines()) == 4

    env = {"APPLIANCE_CONVERTER": str(converter_dir()), "APPLIANCE_CACHE": str(tmp_path / "c")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        logs: list[str] = []
        assert build_packaged(settings, logs.append, models_dir=models) == ["capitals-pk"]
        assert any("parity" in m for m in logs), logs
        built = _read_manifest(models / "built.toml", models, "packaged")
        assert [e.id for e in built] == ["capitals-pk"] and built[0].default
        assert (built[0].lineage or {})["build_parity"]["passed"] is True
        from appliance.models.registry import sha256_file

        assert sha256_file(built[0].path) == built[0].sha256
        # A second build reuses the cache (no model load) and gives the same file.
        logs.clear()
        assert build_packaged(settings, logs.append, models_dir=models) == ["capitals-pk"]
        assert len(logs) == 1 and logs[0].startswith("capitals-pk: built earlier"), logs
        assert len(find_adapters(models)) == 1
        # A changed adapter file is refused before anything is built.
        (dest / "adapter_config.json").write_text("{}")
        with pytest.raises(Exception, match="does not match its lineage"):
            build_packaged(settings, models_dir=models)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_bad_data_fails_before_loading_anything(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home")
    data = tmp_path / "bad.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, '
                    '{"role": "assistant", "content": "a"}]}\n'
                    '{"messages": [{"role": "narrator", "content": "x"}]}\n', encoding="utf-8")
    t0 = time.perf_counter()
    with pytest.raises(TrainingDataError, match="line 2"):
        fine_tune(data, BASE, settings, Registry.load(settings), out_id="never")
    assert time.perf_counter() - t0 < 5
    assert "never" not in Registry.load(settings)
    assert not (settings.home / "train").exists()


# -- kill -9 and resume (a tiny random model: seconds, not minutes) --------------------------


def tiny_model(folder: Path, data: Path) -> Path:
    """A 2-layer Llama with a word-level ChatML tokenizer, saved as a Hugging Face folder."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["[UNK]", "<|im_start|>", "<|im_end|>"]
    words: dict[str, int] = {t: i for i, t in enumerate(specials)}
    pre = Whitespace()
    for line in data.read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["messages"]:
            for text in (m["role"], m["content"]):
                for w, _ in pre.pre_tokenize_str(text):
                    words.setdefault(w, len(words))
    tok = Tokenizer(WordLevel(words, unk_token="[UNK]"))
    tok.pre_tokenizer = pre  # type: ignore[assignment]
    tok.add_special_tokens(specials[1:])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                   eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + "
        "'<|im_end|>' + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    fast.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(words), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, eos_token_id=2, pad_token_id=2,
                         bos_token_id=1, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


CHILD = """
import sys, time
from pathlib import Path
from appliance.config import load_settings
from appliance.models import Registry
from appliance.train.config import RunOptions, TrainConfig
from appliance.train.lora import resolve_base, train_lora
home, data, base, out, config = sys.argv[1:6]
settings = load_settings(home=Path(home))
spec = resolve_base(base, Registry.load(settings))
train_lora(Path(data), spec, out, TrainConfig.from_dict(__import__("json").loads(config)),
           settings, RunOptions(save_every=10, threads=1),
           progress=lambda step, total, info: time.sleep(0.05))
"""


def _adapter(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_kill_9_during_training_then_rerun_resumes(tmp_path: Path) -> None:
    _require_train_extra()
    import torch

    from appliance.train.lora import resolve_base, train_lora

    home = tmp_path / "home"
    settings = load_settings(home=home)
    data = capitals_data(tmp_path / "capitals.jsonl")
    base = tiny_model(tmp_path / "tiny-llama", data)
    config = TrainConfig(r=4, lora_alpha=8, epochs=20, grad_accum=1, val_split=0.25,
                         learning_rate=1e-3, max_len=64)
    total = 20 * 12  # epochs x (12 training examples / 1 per step)
    run = home / "train" / "killed"
    env = {**os.environ, "APPLIANCE_HOME": str(home)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), str(data), str(base), "killed",
         json.dumps(config.to_dict())], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            done = sorted((run / "checkpoints").glob("step-*/state.json"))
            if len(done) >= 2:
                break
            time.sleep(0.02)
        assert child.poll() is None, child.stderr.read().decode() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (run / "adapter").exists()
    checkpoints = sorted(p.name for p in (run / "checkpoints").glob("step-*"))
    last = int(checkpoints[-1].split("-")[1])
    assert 10 <= last < total

    spec = resolve_base(str(base), Registry.load(settings))
    logs: list[str] = []
    resumed = train_lora(data, spec, "killed", config, settings,
                         RunOptions(save_every=10, threads=1), log=logs.append)
    assert resumed.resumed_from >= last and resumed.metrics["steps"] == total
    assert any("resuming from step-" in m for m in logs), logs
    assert len(resumed.metrics["history"]) == 20  # every epoch's validation loss, kept

    reference = train_lora(data, spec, "uninterrupted", config, settings,
                           RunOptions(save_every=10, threads=1))
    assert reference.resumed_from == 0
    got, want = _adapter(run), _adapter(home / "train" / "uninterrupted")
    assert got.keys() == want.keys()
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)

    # A rerun after completion trains nothing; a changed config must not mix runs.
    again = train_lora(data, spec, "killed", config, settings, RunOptions(threads=1))
    assert again.skipped
    from appliance.train.errors import TrainConfigError

    with pytest.raises(TrainConfigError, match="--no-resume"):
        train_lora(data, spec, "killed", config.replace(learning_rate=2e-3), settings,
                   RunOptions(threads=1))
