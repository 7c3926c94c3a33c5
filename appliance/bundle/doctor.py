"""``appliance doctor``: is this installation able to answer questions?

Checks, in order: the CPU has the instructions the llama.cpp build needs; Python; every
registered model file matches its sha256 (read in full, no cache); the embedder loads and
embeds; the generator loads; each knowledge base opens, is consistent and matches the
embedder; and a smoke question gets an answer through the real pipeline.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import packaged_models_dir
from appliance.errors import ApplianceError
from appliance.files import format_bytes
from appliance.models.registry import sha256_file

if TYPE_CHECKING:
    from appliance.api import Appliance
    from appliance.types import Generator

__all__ = ["DEFAULT_CPU_FLAGS", "Check", "cpu_flags", "required_cpu_flags", "run_doctor"]

DEFAULT_CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "bmi2")
"""What the portable llama.cpp build of scripts/setup.sh uses."""


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """As ``doctor --json`` prints it."""
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (Linux), or None when they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def required_cpu_flags() -> tuple[str, ...]:
    """The flags the installed bundle says its llama.cpp build needs (else the defaults)."""
    info = packaged_models_dir().parent / "bundle.json"
    try:
        flags = json.loads(info.read_text(encoding="utf-8")).get("cpu_flags")
    except (OSError, ValueError, AttributeError):
        return DEFAULT_CPU_FLAGS
    if isinstance(flags, list) and all(isinstance(f, str) for f in flags):
        return tuple(flags)
    return DEFAULT_CPU_FLAGS


def _timed(name: str, fn: Callable[[], str]) -> Check:
    t = time.perf_counter()
    try:
        detail = fn()
        ok = True
    except ApplianceError as exc:
        detail, ok = exc.message, False
    except Exception as exc:  # a check must report, not crash the doctor
        detail, ok = f"{type(exc).__name__}: {exc}", False
    return Check(name, ok, detail, time.perf_counter() - t)


def run_doctor(
    app: Appliance,
    *,
    model: str | None = None,
    kbs: Sequence[str] | None = None,
    question: str | None = None,
    smoke: bool = True,
    report: Callable[[Check], None] | None = None,
) -> list[Check]:
    """Run every check; ``report`` receives each result as it is known."""
    checks: list[Check] = []

    def add(check: Check) -> Check:
        checks.append(check)
        if report is not None:
            report(check)
        return check

    def cpu() -> str:
        need = required_cpu_flags()
        have = cpu_flags()
        if have is None:
            raise ApplianceError("cannot read /proc/cpuinfo; this build needs Linux on x86-64 "
                                 f"with {', '.join(need)}.")
        missing = [f for f in need if f not in have]
        if missing:
            raise ApplianceError(
                f"this CPU lacks {', '.join(missing)}, which the llama.cpp build needs; use a "
                "newer machine (x86-64 with AVX2 and FMA, 2013 or later)."
            )
        return " ".join(need)

    add(_timed("cpu", cpu))

    def python() -> str:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if version not in ("3.11", "3.12"):
            raise ApplianceError(f"Python {version} is not supported; use 3.11 or 3.12.")
        return f"Python {platform.python_version()} on {platform.machine()} ({sys.prefix})"

    add(_timed("python", python))

    def models() -> str:
        entries = list(app.registry)
        if not entries:
            raise ApplianceError(f"no models are registered (looked in "
                                 f"{packaged_models_dir()}); reinstall the bundle.")
        bad = []
        size = 0
        for entry in entries:
            if not entry.path.is_file():
                bad.append(f"{entry.id} (missing)")
            elif sha256_file(entry.path) != entry.sha256:
                bad.append(f"{entry.id} (changed)")
            else:
                size += entry.path.stat().st_size
        if bad:
            raise ApplianceError(f"model files do not match the manifest: {', '.join(bad)}; "
                                 "reinstall the bundle.")
        return f"{len(entries)} files, {format_bytes(size)}, every sha256 matches"

    if not add(_timed("models", models)).ok:
        return checks

    def embedder() -> str:
        emb = app.embedder
        vec = emb.embed(["The appliance checks its embedder."])
        if vec.shape != (1, emb.dim):
            raise ApplianceError(f"the embedder returned shape {vec.shape}, expected "
                                 f"(1, {emb.dim}); reinstall the bundle.")
        return f"{emb.id} ({emb.dim} dimensions)"

    embed_ok = add(_timed("embedder", embedder)).ok

    generators: dict[str, Generator] = {}

    def generator() -> str:
        from appliance.generate import load_generator

        gen = load_generator(app.settings, app.registry, model)
        generators[gen.id] = gen
        return f"{gen.id} (llama.cpp, {gen.count_tokens('ready')} token(s) for 'ready')"

    gen_ok = add(_timed("generator", generator)).ok

    names = list(kbs) if kbs is not None else app.list_kbs()
    good_kbs: list[str] = []
    for name in names:
        def kb_check(name: str = name) -> str:
            with app.open_kb(name) as kb:
                if embed_ok:
                    kb.check_embedder(app.embedder)
                problems = kb.check()
                if problems:
                    raise ApplianceError(f"{problems[0]}; rebuild it or reinstall the bundle.")
                stats = kb.stats()
            good_kbs.append(name)
            return f"{stats['documents']} documents, {stats['chunks']} chunks"

        add(_timed(f"kb {name}", kb_check))

    if smoke and embed_ok and gen_ok:
        def smoke_question() -> str:
            from appliance.generate import load_generator
            from appliance.pipeline import Pipeline

            def loader(model_id: str) -> Generator:
                if model_id in generators:
                    return generators[model_id]
                return load_generator(app.settings, app.registry, model_id)

            pipeline = Pipeline(app, loader=loader)
            gen_id = next(iter(generators))
            if good_kbs:
                kb_name = good_kbs[0]
                q = question
                if not q:
                    with app.open_kb(kb_name) as kb:
                        docs = kb.documents()
                    title = (docs[0].title or Path(docs[0].path).stem) if docs else kb_name
                    q = f"What does '{title}' say?"
                result = pipeline.ask(q, kb=kb_name, mode="rag", model=gen_id)
            else:
                q = question or "Reply with one word: ready."
                result = pipeline.ask(q, mode="base", model=gen_id)
            if not result.answer.strip():
                raise ApplianceError(f"the model gave an empty answer to {q!r}; reinstall the "
                                     "bundle or try another --model.")
            how = "abstained" if result.abstained else f"{len(result.citations)} citation(s)"
            threads = app.settings.generate.threads or "auto"
            return (f"{q!r} -> {len(result.answer)} characters, {how}, "
                    f"{result.tokens_per_s:.1f} tokens/s with {threads} thread(s)")

        add(_timed("smoke question", smoke_question))
    for gen in generators.values():
        close = getattr(gen, "close", None)
        if callable(close):
            close()
    return checks
