"""Merge, convert and quantize: a trained adapter becomes a GGUF that llama.cpp serves.

1. ``merge_and_unload`` folds the adapter into the (dequantized, float32) base weights;
   the GGUF quantizer state (``model.hf_quantizer``, ``config.quantization_config``) is
   cleared so the weights save as plain safetensors.
2. The merged model and the base's tokenizer are saved; the saved tokenizer is reloaded and
   compared with the original (special tokens and their ids, chat template, the ids of a
   rendered conversation), so broken chat tokens stop the export here.
3. The GGUF converter of the pinned llama-cpp-python source distribution (extracted by
   setup into the per-user cache) runs as a subprocess with this interpreter and
   ``PYTHONPATH`` set to its ``gguf-py``: f16 directly, else f32 for the next step.
4. ``llama_cpp.llama_model_quantize`` (no binary needed) makes q8_0 or q4_k_m, in a
   subprocess, so llama.cpp's log and any crash stay out of this process.

Torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.config import cache_dir
from appliance.train.errors import ExportError

__all__ = [
    "ExportResult",
    "convert_to_gguf",
    "converter_dir",
    "export_adapter_gguf",
    "llama_version",
    "merge_adapter",
    "quantize_gguf",
    "save_merged",
]

LLAMA_CPP_VERSION = "0.3.36"
"""Version of the pinned llama-cpp-python whose converter is used (when not installed)."""

_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}

_QUANTIZE = """
import ctypes, sys
import llama_cpp
src, dst, ftype, nthread = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, ftype)
params.nthread = nthread
rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
sys.exit(0 if rc == 0 else 3)
"""


def llama_version() -> str:
    """The installed llama-cpp-python version (the pinned one when not installed)."""
    from importlib import metadata

    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return LLAMA_CPP_VERSION


def converter_dir() -> Path:
    """The cached converter folder; ExportError (run setup) when it is not there."""
    env = os.environ.get("APPLIANCE_CONVERTER")
    folder = (Path(env).expanduser() if env else
              cache_dir() / "converter" / f"llama-cpp-python-{llama_version()}")
    if not (folder / "convert_hf_to_gguf.py").is_file() or not (folder / "gguf-py").is_dir():
        raise ExportError(
            f"The GGUF converter is missing from {folder}; run scripts/setup.sh, which "
            "extracts it from the pinned llama-cpp-python source distribution."
        )
    return folder


@dataclass
class ExportResult:
    """Where the export put things and what each stage cost."""

    gguf: Path
    quant: str
    size: int
    merged_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)
    adapter_gguf: Path | None = None


def merge_adapter(peft_model: Any) -> Any:
    """The base model with the adapter folded in, quantizer state cleared."""
    from appliance.train.lora import clear_quantizer

    merged = peft_model.merge_and_unload() if hasattr(peft_model, "merge_and_unload") \
        else peft_model
    clear_quantizer(merged)
    merged.config.use_cache = True
    merged.eval()
    return merged


def _tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any]:
    sample = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Is 2 + 2 = 4? Say <b>yes</b> [1]."},
        {"role": "assistant", "content": "Yes, 2 + 2 = 4 [1]."},
    ]
    text = tokenizer.apply_chat_template(sample, tokenize=False)
    return {
        "special": {str(t): tokenizer.convert_tokens_to_ids(t)
                    for t in tokenizer.all_special_tokens},
        "eos": tokenizer.eos_token_id,
        "bos": tokenizer.bos_token_id,
        "template": tokenizer.chat_template,
        "ids": list(tokenizer(text, add_special_tokens=False)["input_ids"]),
    }


def save_merged(model: Any, tokenizer: Any, out_dir: Path) -> Path:
    """Save merged weights (safetensors) and the tokenizer; check the tokenizer survived."""
    import json

    from transformers import AutoTokenizer

    from appliance.train.lora import clear_quantizer

    clear_quantizer(model)
    tmp = out_dir.with_name(f".{out_dir.name}-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    if not list(tmp.glob("*.safetensors")):
        raise ExportError(f"Saving the merged model to {tmp} wrote no safetensors file.")
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise ExportError("The merged model's config still names a quantizer; cannot convert.")
    before = _tokenizer_fingerprint(tokenizer)
    after = _tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(tmp)))
    broken = [k for k in before if before[k] != after[k]]
    if broken:
        raise ExportError(
            f"The saved tokenizer differs from the base's ({', '.join(broken)}); the chat "
            "tokens would break after conversion."
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


def _run(cmd: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd[:2])} ...\n".encode())
        fh.flush()
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise ExportError(
            f"{what} failed (exit {proc.returncode}): {' | '.join(tail)[-400:]}; the full "
            f"log is {log}."
        )


def _converter_env(conv: Path) -> dict[str, str]:
    env = dict(os.environ)
    gguf_py = str(conv / "gguf-py")
    env["PYTHONPATH"] = gguf_py + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                   else "")
    env.pop("NO_LOCAL_GGUF", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    return env


def convert_to_gguf(merged_dir: Path, out_file: Path, outtype: str, name: str, log: Path
                    ) -> Path:
    """Run the cached ``convert_hf_to_gguf.py`` on a saved model folder."""
    conv = converter_dir()
    return _convert(conv, [str(conv / "convert_hf_to_gguf.py"), str(merged_dir),
                           "--outtype", outtype, "--model-name", name],
                    out_file, log, "GGUF conversion")


def _convert(conv: Path, args: list[str], out_file: Path, log: Path, what: str) -> Path:
    """Run a converter script of ``conv`` writing ``out_file`` atomically."""
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    try:
        _run([sys.executable, *args, "--outfile", str(tmp)], log, what,
             env=_converter_env(conv))
        os.replace(tmp, out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return out_file


def _threads() -> int:
    from appliance.train.lora import auto_threads

    return auto_threads()


def quantize_gguf(src: Path, dst: Path, quant: str, log: Path, threads: int = 0) -> Path:
    """Quantize a float GGUF with ``llama_cpp.llama_model_quantize`` (in a subprocess)."""
    if quant not in _FTYPES:
        raise ExportError(f"Cannot quantize to {quant!r}; use one of {', '.join(_FTYPES)}.")
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    cmd = [sys.executable, "-c", _QUANTIZE, str(src), str(tmp), _FTYPES[quant],
           str(threads or _threads())]
    try:
        _run(cmd, log, f"Quantization to {quant}")
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def export_merged(model: Any, tokenizer: Any, work_dir: Path, name: str, quant: str,
                  log: Path, keep_merged: bool = True) -> ExportResult:
    """Save ``model`` (already merged), convert it and quantize it to ``quant``.

    Returns the GGUF in ``work_dir``; intermediate float GGUFs are removed.
    """
    converter_dir()  # fail before saving gigabytes
    times: dict[str, float] = {}
    t = time.perf_counter()
    merged_dir = save_merged(model, tokenizer, work_dir / "merged")
    times["save"] = time.perf_counter() - t
    final = work_dir / f"{name}.gguf"
    t = time.perf_counter()
    if quant == "f16":
        convert_to_gguf(merged_dir, final, "f16", name, log)
        times["convert"] = time.perf_counter() - t
    else:
        f32 = work_dir / f"{name}.f32.gguf"
        convert_to_gguf(merged_dir, f32, "f32", name, log)
        times["convert"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            quantize_gguf(f32, final, quant, log)
        finally:
            f32.unlink(missing_ok=True)
        times["quantize"] = time.perf_counter() - t
    if not keep_merged:
        shutil.rmtree(merged_dir, ignore_errors=True)
    return ExportResult(gguf=final, quant=quant, size=final.stat().st_size,
                        merged_dir=merged_dir, seconds={k: round(v, 2) for k, v in times.items()})


def export_adapter_gguf(adapter_dir: Path, base_config_dir: Path, out_file: Path, log: Path
                        ) -> Path:
    """The adapter alone as a GGUF LoRA (llama_cpp ``lora_path``), via the cached
    ``convert_lora_to_gguf.py``; ``base_config_dir`` holds the base's config.json."""
    conv = converter_dir()
    script = conv / "convert_lora_to_gguf.py"
    if not script.is_file():
        raise ExportError(f"{script} is missing; run scripts/setup.sh.")
    return _convert(conv, [str(script), "--base", str(base_config_dir), "--outtype", "f16",
                           str(adapter_dir)], out_file, log, "Adapter conversion")
