"""What a GGUF file says about itself, read by llama.cpp in a child process.

``appliance models add`` registers a GGUF the user brings (a bigger instruct model carried
on the stick, say). Before it is registered, the very llama.cpp that will later answer
with it reads the file's header and vocabulary (``vocab_only``: no weights are loaded, so
this takes a second even for a model of many gigabytes). A hostile or damaged file may
crash the parser or make it allocate without end, so the reading happens in a fresh
interpreter with an address-space limit and a time limit; the parent only reads the JSON
line it prints.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.errors import InputError, ModelError
from appliance.files import check_input_file

__all__ = ["GGUF_MAGIC", "GGUFInfo", "probe_gguf"]

GGUF_MAGIC = b"GGUF"
"""The first four bytes of every GGUF file."""

_PROBE_MEMORY = 4 << 30
"""Address space of the reading process beyond the file's own size (it maps the file)."""

_CHILD = r"""
import json, os, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from llama_cpp import Llama
name = os.path.basename(sys.argv[1])
def text(value):
    return "".join(c for c in value if c.isprintable())[:300] if isinstance(value, str) else ""
def number(value):
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0
try:
    llm = Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
    md = llm.metadata
    arch = text(md.get("general.architecture"))
    info = {
        "architecture": arch,
        "name": text(md.get("general.name")),
        "size_label": text(md.get("general.size_label")),
        "licence": text(md.get("general.license")),
        "context_length": number(md.get(arch + ".context_length")),
        "chat_template": bool(md.get("tokenizer.chat_template")),
        "n_vocab": number(llm.n_vocab()),
    }
    if info["chat_template"]:
        from appliance.errors import ModelError
        from appliance.generate.llama import ChatTemplate
        try:
            info["system_role"] = ChatTemplate.from_llama(llm, name).system_role
        except ModelError as exc:
            info["template_error"] = text(exc.message)
except Exception as exc:
    from jinja2 import TemplateError
    if isinstance(exc, TemplateError):  # llama-cpp-python compiles the template on load
        from appliance.generate.llama import template_parse_error
        info = {"chat_template": True, "template_error": text(template_parse_error(name, exc))}
    else:
        info = {"error": str(exc)[:200]}
print(json.dumps(info))
"""


@dataclass(frozen=True)
class GGUFInfo:
    """The metadata of a GGUF that matters for answering with it."""

    architecture: str = ""
    """``general.architecture`` (``llama``, ``qwen2``, ``gemma3`` ...)."""
    name: str = ""
    """``general.name``, when the file has one."""
    size_label: str = ""
    """``general.size_label`` (``135M``, ``0.5B`` ...), when the file has one."""
    licence: str = ""
    """``general.license``, when the file has one."""
    context_length: int = 0
    """The context the model was trained for, in tokens (0 when the file does not say)."""
    chat_template: bool = False
    """Whether the file carries a chat template: answering needs one."""
    n_vocab: int = 0
    """Tokens in the vocabulary (0 when the template stopped the reading first)."""
    system_role: bool = False
    """Whether the chat template takes a system message (else the system prompt goes at the
    start of the first user message: :class:`appliance.generate.llama.ChatTemplate`)."""
    template_error: str = ""
    """Why the chat template cannot render a question, when it cannot (one sentence)."""

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON-ready data."""
        return asdict(self)


def probe_gguf(path: Path, *, timeout: float = 60.0) -> GGUFInfo:
    """Read ``path``'s GGUF metadata with llama.cpp (vocabulary only, no weights).

    InputError when ``path`` is not a regular file or does not start with the GGUF magic;
    ModelError when llama.cpp cannot read it (damaged, an architecture this llama.cpp does
    not know), crashes on it, or takes longer than ``timeout`` seconds.
    """
    path = Path(path)
    check_input_file(path, "a .gguf model file", max_bytes=1 << 50)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    if magic != GGUF_MAGIC:
        raise InputError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give "
                         "a llama.cpp model file (.gguf).")
    limit = path.stat().st_size + _PROBE_MEMORY
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, str(path.resolve()), str(limit)],
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired:
        raise ModelError(f"llama.cpp took longer than {timeout:g} s to read {path}; the file "
                         "is damaged or not a model.") from None
    if proc.returncode < 0:
        try:
            how = signal.Signals(-proc.returncode).name
        except ValueError:
            how = f"signal {-proc.returncode}"
        raise ModelError(f"llama.cpp crashed reading {path} ({how}); the file is damaged or "
                         "not a model.")
    lines = proc.stdout.strip().splitlines()
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if proc.returncode != 0 or not isinstance(data, dict):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelError(f"llama.cpp could not read {path} ({last[:200]}); the file is "
                         "damaged or not a model.")
    if "error" in data:
        raise ModelError(f"llama.cpp cannot load {path}: the file is damaged, or made for an "
                         "architecture this llama.cpp does not know.")
    return GGUFInfo(**data)
