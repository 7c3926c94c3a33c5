"""LoRA training with peft: loss on assistant tokens only, checkpoints, resume.

torch, transformers and peft (the ``[train]`` extra) are imported inside the functions
here, never at module level: the appliance's run-time path must not import them.

A run lives in ``<data dir>/train/<out id>/``:

- ``run.json``: base (id, sha256), data (path, sha256), the :class:`TrainConfig` and the
  run's fingerprint (a hash of those three);
- ``checkpoints/step-NNNNNNN/``: the adapter, the optimiser state and the torch RNG (all
  safetensors, nothing pickled), and ``state.json`` (step, losses, validation history),
  written every ``save_every`` optimiser steps and at the end of each epoch, atomically
  (a temporary folder renamed into place); the newest ``keep_checkpoints`` are kept;
- ``adapter/``: the finished adapter (peft layout) with ``metrics.json``.

A rerun with the same fingerprint continues from the newest complete checkpoint (a kill -9
loses at most ``save_every`` steps) or, when the adapter is finished, skips training. The
data order of epoch ``e`` is a shuffle seeded by ``seed + e``, and dropout draws from the
restored RNG, so a resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.files import write_atomic
from appliance.train.config import RunOptions, TrainConfig
from appliance.train.data import (
    ChatExample,
    DataReport,
    check_lengths,
    split_examples,
    validate_chat_jsonl,
)
from appliance.train.errors import (
    TrainConfigError,
    TrainDependencyError,
    TrainingDataError,
    TrainingError,
)

if TYPE_CHECKING:
    from appliance.config import Settings
    from appliance.models import Registry

__all__ = [
    "BaseSpec",
    "ChatEncoder",
    "Encoded",
    "ProgressFn",
    "RunDir",
    "TrainResult",
    "auto_threads",
    "load_base",
    "require_train_packages",
    "resolve_base",
    "train_lora",
]

ProgressFn = Callable[[int, int, dict[str, Any]], None]
"""``progress(step, total_steps, info)``; ``info`` has ``loss``, ``epoch`` and, at the end
of an epoch, ``val_loss``."""

IGNORE = -100
"""Label of tokens that carry no loss (everything but assistant turns)."""

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" lets "id\n" through


def require_train_packages() -> None:
    """Raise TrainDependencyError unless torch, transformers and peft import."""
    missing = []
    for name in ("torch", "transformers", "peft", "safetensors"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise TrainDependencyError(
            f"Training needs {', '.join(missing)} (the [train] extra), which is not "
            "installed; install it with `.venv/bin/pip install torch==2.13.0` and then "
            "`.venv/bin/pip install --no-deps --require-hashes -r requirements/train.lock`."
        )


def auto_threads() -> int:
    """CPU threads worth using now: the physical cores not already busy (at least one).

    On a shared machine, torch's and llama.cpp's worker threads synchronise many times per
    token; when another process holds a core, every barrier waits for a descheduled thread
    and two threads run several times slower than one (measured on the 2-core build
    machine under load: a training step 4-5x, a llama.cpp decode up to 100x).
    """
    from appliance.embed import physical_cores

    cores = physical_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, int(cores - load + 0.5)))


def _quiet_transformers() -> None:
    """Keep transformers' progress bars and advisory warnings off the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as _hf_logging

    hf_logging: Any = _hf_logging
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    warnings.filterwarnings("ignore", message="Could not find a config file")
    warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter")


# -- the base model --------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseSpec:
    """The model a run starts from: a registry GGUF or a Hugging Face folder."""

    id: str
    path: Path
    sha256: str
    format: str
    """``gguf`` (dequantized by transformers on load) or ``hf`` (a folder)."""

    def to_json(self) -> dict[str, Any]:
        """Lineage data: id, sha256, format."""
        return {"id": self.id, "sha256": self.sha256, "format": self.format}


def _folder_sha256(folder: Path) -> str:
    """A hash over a Hugging Face folder's weights, config and tokenizer files."""
    from appliance.models.registry import sha256_file

    names = sorted(
        p.name for p in folder.iterdir()
        if p.is_file() and (p.suffix in (".safetensors", ".json", ".model", ".jinja")
                            or p.name == "merges.txt")
    )
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{sha256_file(folder / name)}\n".encode())
    return digest.hexdigest()


def resolve_base(base: str, registry: Registry) -> BaseSpec:
    """A registry id (a GGUF generator, hash-checked) or a Hugging Face model folder."""
    from appliance.errors import InputError

    folder = Path(base).expanduser()
    if base not in registry and folder.is_dir():
        if not (folder / "config.json").is_file():
            raise InputError(
                f"{folder} is not a Hugging Face model folder (no config.json); give a "
                "registry id (`appliance models list`) or a folder with config.json, "
                "safetensors weights and tokenizer files."
            )
        if any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors")):
            raise InputError(
                f"{folder} holds only pickled .bin weights, which are never loaded; "
                "convert them to safetensors first."
            )
        resolved = folder.resolve()
        return BaseSpec(id=str(resolved), path=resolved, sha256=_folder_sha256(resolved),
                        format="hf")
    entry = registry.resolve(base)
    if entry.format != "gguf" or entry.role != "generator":
        raise InputError(
            f"'{base}' is a {entry.role} ({entry.format}); train on a generator GGUF "
            "(`appliance models list`) or a Hugging Face folder."
        )
    return BaseSpec(id=entry.id, path=entry.path, sha256=entry.sha256, format="gguf")


def load_base(spec: BaseSpec) -> tuple[Any, Any]:
    """(model, tokenizer) in float32 on the CPU; a GGUF is dequantized by transformers.

    The GGUF quantizer state is cleared at once: the weights are plain float tensors from
    here on, and nothing downstream (peft, save_pretrained) must treat them as quantized.
    """
    require_train_packages()
    _quiet_transformers()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {}
    if spec.format == "gguf":
        where, kwargs["gguf_file"] = str(spec.path.parent), spec.path.name
        _silence_gguf_progress()
    else:
        where = str(spec.path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(
            f"transformers cannot load the base model {spec.id}: {exc}; check that its "
            "architecture is supported for GGUF loading (Llama, Qwen2, ...)."
        ) from exc
    clear_quantizer(model)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError(
            f"The base model {spec.id} has no chat template, so chat examples cannot be "
            "rendered; use an instruct model."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.use_cache = False
    return model, tokenizer


def _silence_gguf_progress() -> None:
    """transformers draws a tqdm bar while it dequantizes a GGUF; our progress bar rules."""
    import functools as ft

    try:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # pragma: no cover - layout of another transformers version
        return
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None and not isinstance(bar, ft.partial):
        gguf_utils.tqdm = ft.partial(bar, disable=True)  # type: ignore[attr-defined]


def clear_quantizer(model: Any) -> None:
    """Forget a GGUF quantizer: ``model.hf_quantizer`` and ``config.quantization_config``."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "quantization_config"):
        try:
            delattr(config, "quantization_config")
        except AttributeError:
            config.quantization_config = None
    if isinstance(getattr(model, "is_quantized", None), bool):
        model.is_quantized = False


# -- encoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and its labels (``IGNORE`` outside assistant turns)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_target(self) -> int:
        """Tokens that carry loss (each predicted from the one before it)."""
        return sum(1 for t in self.labels[1:] if t != IGNORE)


class ChatEncoder:
    """Renders chat messages with the tokenizer's template; marks the assistant tokens.

    The assistant span of turn ``i`` is the text between the rendering of ``messages[:i]``
    with the generation prompt and the rendering of ``messages[:i + 1]``, trailing
    whitespace dropped: the reply and the end-of-turn token the model must learn to emit.
    Tokens overlapping a span get labels; the template's markers, every other turn and
    assistant turns of weight 0 do not.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos = getattr(tokenizer, "bos_token", None)
        self._bos = (tokenizer.bos_token_id
                     if bos and getattr(tokenizer, "add_bos_token", False) else None)
        self._bos_text = bos or ""

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
               ) -> str:
        """The template's text for ``messages``."""
        text = self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
        )
        return str(text)

    def encode(self, messages: Sequence[dict[str, Any]]) -> Encoded:
        """Ids and labels of one example."""
        text = self.render(messages)
        spans: list[tuple[int, int]] = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" or message.get("weight", 1) == 0:
                continue
            prefix = self.render(messages[:i], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (upto.startswith(prefix) and text.startswith(upto)):
                raise TrainingError(
                    "The base model's chat template renders a conversation differently "
                    "from its beginning, so assistant turns cannot be located; use a model "
                    "with a prefix-stable template (ChatML, Llama, ...)."
                )
            spans.append((len(prefix), len(upto.rstrip())))
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = [int(t) for t in enc["input_ids"]]
        offsets = enc["offset_mapping"]
        labels = [
            tok if any(a < end and b > start for start, end in spans) else IGNORE
            for tok, (a, b) in zip(ids, offsets, strict=True)
        ]
        if self._bos is not None and not text.startswith(self._bos_text):
            ids = [self._bos, *ids]
            labels = [IGNORE, *labels]
        return Encoded(ids, labels)

    def count(self, messages: Sequence[dict[str, Any]]) -> int:
        """Tokens of one example, template included."""
        return len(self.encode(messages).input_ids)


# -- the run directory -----------------------------------------------------------------------


class RunDir:
    """Files of one training run (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_json = root / "run.json"
        self.checkpoints = root / "checkpoints"
        self.adapter = root / "adapter"
        self.merged = root / "merged"
        self.export = root / "export"
        self.log = root / "train.log"

    @classmethod
    def for_id(cls, settings: Settings, out_id: str) -> RunDir:
        """``<data dir>/train/<out id>``."""
        if not _RUN_ID.match(out_id):
            from appliance.errors import InputError

            raise InputError(
                f"'{out_id}' is not a valid model id: use letters, digits, '.', '_' or '-' "
                "(at most 64, starting with a letter or digit)."
            )
        return cls(settings.home / "train" / out_id)

    def read_run(self) -> dict[str, Any] | None:
        """``run.json``, or None when missing or unreadable."""
        try:
            data = json.loads(self.run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_run(self, data: dict[str, Any]) -> None:
        """Write ``run.json`` atomically."""
        _write_json(self.run_json, data)

    def checkpoint_dirs(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = [p for p in self.checkpoints.iterdir()
                 if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
        return sorted(found, key=lambda p: p.name)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint."""
        dirs = self.checkpoint_dirs()
        return dirs[-1] if dirs else None

    def adapter_done(self, fingerprint: str) -> bool:
        """Whether the finished adapter of this fingerprint is there."""
        metrics = self.adapter / "metrics.json"
        if not (metrics.is_file() and (self.adapter / "adapter_model.safetensors").is_file()):
            return False
        try:
            return bool(json.loads(metrics.read_text(encoding="utf-8")).get("fingerprint")
                        == fingerprint)
        except (OSError, ValueError):
            return False

    def clear(self) -> None:
        """Remove checkpoints, the adapter and exports (a fresh start)."""
        for path in (self.checkpoints, self.adapter, self.merged, self.export):
            shutil.rmtree(path, ignore_errors=True)


def _write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def fingerprint(config: TrainConfig, base: BaseSpec, data_sha256: str) -> str:
    """Hash of what determines a run's result: config, base weights, data."""
    blob = json.dumps({"config": config.to_dict(), "base": base.sha256, "data": data_sha256},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# -- checkpoints (safetensors + JSON: nothing is pickled) ------------------------------------


def _save_checkpoint(run: RunDir, step: int, model: Any, optimizer: Any,
                     state: dict[str, Any], keep: int) -> Path:
    import torch
    from safetensors.torch import save_file

    run.checkpoints.mkdir(parents=True, exist_ok=True)
    final = run.checkpoints / f"step-{step:07d}"
    tmp = run.checkpoints / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(str(tmp))
    opt_state = optimizer.state_dict()
    tensors: dict[str, Any] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, values in opt_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    _write_json(tmp / "optimizer.json",
                {"param_groups": opt_state["param_groups"], "scalars": scalars})
    _write_json(tmp / "state.json", {**state, "step": step})  # written last: marks complete
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in run.checkpoint_dirs()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in run.checkpoints.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _load_checkpoint(path: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    adapter = load_file(str(path / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, adapter)
    meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    tensors = load_file(str(path / "optimizer.safetensors"))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        state.setdefault(int(idx), {})[name] = value
    for idx, values in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda.")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    data: dict[str, Any] = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return data


# -- training --------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """A finished (or already finished) run and the objects export needs."""

    run: RunDir
    out_id: str
    base: BaseSpec
    config: TrainConfig
    data_sha256: str
    fingerprint: str
    metrics: dict[str, Any]
    model: Any
    """The peft model (adapter attached), in memory."""
    tokenizer: Any
    encoder: ChatEncoder
    train_examples: list[ChatExample] = field(default_factory=list)
    val_examples: list[ChatExample] = field(default_factory=list)
    resumed_from: int = 0
    """Step of the checkpoint the run continued from (0: a fresh start)."""
    skipped: bool = False
    """True when the adapter was already finished and training was skipped."""


def _device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda") and not torch.cuda.is_available():
        raise TrainConfigError("--device cuda was asked for, but no CUDA device is available.")
    return choice


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """True when a CPU with these feature ``flags`` (default: this one's, from
    :func:`appliance.bundle.doctor.cpu_flags`) multiplies bf16 natively (AVX512-BF16 or
    AMX); False when unknown. Without it torch emulates bf16, slower than float32.
    """
    if flags is None:
        from appliance.bundle.doctor import cpu_flags

        flags = cpu_flags()
    return bool(flags and flags & {"avx512_bf16", "amx_bf16"})


def _precision(device: str, choice: str) -> str:
    """The arithmetic a run uses on ``device`` for the ``--precision`` ``choice``."""
    import torch

    cuda = device.startswith("cuda")
    native = torch.cuda.is_bf16_supported() if cuda else cpu_has_bf16()
    if choice == "auto":
        return "bf16" if native else "fp32"
    if choice == "bf16" and cuda and not native:
        raise TrainConfigError("--precision bf16 was asked for, but this GPU has no bf16; "
                               "use --precision fp32.")
    return choice


def _collate(batch: Sequence[Encoded], pad_id: int, device: str) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def _loss_sum(model: Any, batch: Sequence[Encoded], pad_id: int, device: str,
              autocast: Any) -> Any:
    """Summed cross-entropy over the batch's labelled tokens.

    Only the positions that predict a labelled token go through the LM head
    (``logits_to_keep``): a long prompt with a short answer costs little there.
    """
    import torch
    import torch.nn.functional as F

    ids, mask, labels = _collate(batch, pad_id, device)
    targets = labels[:, 1:]
    keep = torch.nonzero((targets != IGNORE).any(dim=0)).flatten()
    with autocast():
        out = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep, use_cache=False)
    logits = out.logits.float()
    if logits.shape[1] != keep.numel():  # a model that ignores logits_to_keep
        logits = logits[:, keep]
    picked = targets[:, keep]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), picked.reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def _evaluate(model: Any, encoded: Sequence[Encoded], pad_id: int, device: str,
              autocast: Any, batch_size: int) -> float | None:
    import torch

    if not encoded:
        return None
    was_training = model.training
    model.eval()
    total = 0.0
    tokens = 0
    with torch.no_grad():
        for i in range(0, len(encoded), batch_size):
            batch = encoded[i: i + batch_size]
            total += float(_loss_sum(model, batch, pad_id, device, autocast))
            tokens += sum(e.n_target for e in batch)
    if was_training:
        model.train()
    return total / max(tokens, 1)


def _lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warmup, then linear decay to a tenth of the peak."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    span = max(total - config.warmup_steps, 1)
    done = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return config.learning_rate * (1.0 - 0.9 * done)


def prepare_data(data: Path | DataReport, max_chars: int | None = None) -> DataReport:
    """Validate the structure (no tokenizer); raise TrainingDataError on any problem."""
    report = data if isinstance(data, DataReport) else validate_chat_jsonl(data,
                                                                          max_chars=max_chars)
    report.raise_if_invalid()
    return report


def train_lora(
    data: Path | DataReport,
    base: BaseSpec,
    out_id: str,
    config: TrainConfig,
    settings: Settings,
    options: RunOptions | None = None,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or resume, or reuse) a LoRA adapter for ``base`` on chat JSONL ``data``.

    Raises TrainingDataError before anything heavy when the data is invalid, and again
    (with line numbers) after the tokenizer loads if an example exceeds ``max_len``.
    """
    options = options or RunOptions()
    say = log or (lambda _msg: None)
    report = prepare_data(data)
    run = RunDir.for_id(settings, out_id)
    fp = fingerprint(config, base, report.sha256)
    previous = run.read_run()
    if previous and previous.get("fingerprint") != fp and options.resume \
            and (run.checkpoint_dirs() or run.adapter.is_dir()):
        changed = [k for k in ("config", "base", "data")
                   if previous.get(k) != _run_record(config, base, report, fp).get(k)]
        what = ", ".join(changed) or "settings"
        raise TrainConfigError(
            f"A run of '{out_id}' with a different {what} has checkpoints in {run.root}; "
            "rerun with --no-resume to discard them and start over, or choose another --out."
        )
    if not options.resume or (previous and previous.get("fingerprint") != fp):
        run.clear()
    run.root.mkdir(parents=True, exist_ok=True)
    run.write_run(_run_record(config, base, report, fp))

    require_train_packages()
    import torch

    threads = options.threads or auto_threads()
    torch.set_num_threads(threads)
    t_load = time.perf_counter()
    model, tokenizer = load_base(base)
    say(f"loaded base {base.id} in {time.perf_counter() - t_load:.1f} s")
    encoder = ChatEncoder(tokenizer)
    check_lengths(report, encoder.count, config.max_len)
    if not report.ok:
        raise TrainingDataError(
            f"{report.issue_counts['too_long']} examples of {report.path} are longer than "
            f"--max-len {config.max_len} tokens (first: {report.issues[0]}); shorten them "
            "or raise --max-len.", report)
    train_ex, val_ex = split_examples(report.examples, config.val_split, config.seed)
    encoded = [encoder.encode(e.messages) for e in train_ex]
    val_encoded = [encoder.encode(e.messages) for e in val_ex]
    if not any(e.n_target for e in encoded):
        raise TrainingDataError(f"No example of {report.path} has assistant tokens to learn.",
                                report)

    from peft import LoraConfig, PeftModel, get_peft_model

    device = _device(options.device)
    if run.adapter_done(fp) and options.resume:
        model = PeftModel.from_pretrained(model, str(run.adapter), is_trainable=False)
        metrics = json.loads((run.adapter / "metrics.json").read_text(encoding="utf-8"))
        say(f"adapter already trained ({run.adapter}); skipping training")
        return TrainResult(run, out_id, base, config, report.sha256, fp, metrics, model,
                           tokenizer, encoder, train_ex, val_ex, int(metrics.get("steps", 0)),
                           skipped=True)

    torch.manual_seed(config.seed)
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    model = get_peft_model(model, LoraConfig(**config.peft_kwargs(n_layers)))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    per_step = config.batch_size * config.grad_accum
    steps_per_epoch = math.ceil(len(encoded) / per_step)
    total = steps_per_epoch * config.epochs
    if config.max_steps:
        total = min(total, config.max_steps)
    pad_id = int(tokenizer.pad_token_id)
    precision = _precision(device, options.precision)
    autocast: Callable[[], Any] = contextlib.nullcontext
    if precision == "bf16":
        autocast = functools.partial(torch.autocast, device.split(":")[0],
                                     dtype=torch.bfloat16)

    state: dict[str, Any] = {"step": 0, "losses": [], "history": [], "seconds": 0.0,
                             "tokens": 0, "examples": 0}
    resumed_from = 0
    latest = run.latest_checkpoint() if options.resume else None
    if latest is not None:
        state = _load_checkpoint(latest, model, optimizer)
        resumed_from = int(state["step"])
        say(f"resuming from {latest.name} (step {resumed_from} of {total})")
    trainable = sum(p.numel() for p in params)
    say(f"training {len(encoded)} examples ({len(val_encoded)} held out), {total} steps "
        f"of {per_step} examples, {trainable:,} trainable parameters on {device} ("
        + (f"{threads} threads, " if device == "cpu" else "") + f"{precision})")
    used = set(state.get("precisions", []))
    state["precisions"] = sorted(used | {precision})

    model.train()
    orders: dict[int, list[int]] = {}
    step = int(state["step"])
    t0 = time.perf_counter()
    seconds_before = float(state.get("seconds", 0.0))
    epoch_losses: list[float] = [
        x for s, x in state["losses"] if s > (step // steps_per_epoch) * steps_per_epoch
    ]
    while step < total:
        epoch, k = divmod(step, steps_per_epoch)
        if epoch not in orders:
            order = list(range(len(encoded)))
            random.Random(config.seed + epoch).shuffle(order)
            orders = {epoch: order}
        group = [encoded[i] for i in orders[epoch][k * per_step: (k + 1) * per_step]]
        n_tokens = max(sum(e.n_target for e in group), 1)
        t_step = time.perf_counter()
        step_loss = 0.0
        for i in range(0, len(group), config.batch_size):
            loss = _loss_sum(model, group[i: i + config.batch_size], pad_id, device,
                             autocast) / n_tokens
            loss.backward()
            step_loss += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(step, total, config)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step_seconds"] = float(state.get("step_seconds", 0.0)) + time.perf_counter() \
            - t_step
        step += 1
        if not math.isfinite(step_loss):
            raise TrainingError(
                f"The loss became {step_loss} at step {step}; lower --lr and run again with "
                "--no-resume."
            )
        state["losses"].append([step, round(step_loss, 6)])
        state["tokens"] = int(state.get("tokens", 0)) + sum(len(e.input_ids) for e in group)
        state["examples"] = int(state.get("examples", 0)) + len(group)
        epoch_losses.append(step_loss)
        info: dict[str, Any] = {"loss": step_loss, "epoch": epoch + 1}
        end_of_epoch = step % steps_per_epoch == 0 or step == total
        if end_of_epoch:
            val = _evaluate(model, val_encoded, pad_id, device, autocast, config.batch_size)
            entry = {"epoch": epoch + 1, "step": step,
                     "train_loss": round(sum(epoch_losses) / max(len(epoch_losses), 1), 6),
                     "val_loss": None if val is None else round(val, 6)}
            state["history"].append(entry)
            info["val_loss"] = val
            say(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}" +
                ("" if val is None else f", validation loss {val:.4f}"))
            epoch_losses = []
        state["seconds"] = seconds_before + time.perf_counter() - t0
        if progress:
            progress(step, total, info)
        if step % options.save_every == 0 or end_of_epoch:
            _save_checkpoint(run, step, model, optimizer, state, options.keep_checkpoints)

    metrics = _metrics(state, total, len(encoded), len(val_encoded), trainable, device, fp)
    _save_adapter(run, model, metrics, config)
    model.eval()
    return TrainResult(run, out_id, base, config, report.sha256, fp, metrics, model, tokenizer,
                       encoder, train_ex, val_ex, resumed_from)


def _run_record(config: TrainConfig, base: BaseSpec, report: DataReport, fp: str
                ) -> dict[str, Any]:
    return {"fingerprint": fp, "config": config.to_dict(), "base": base.to_json(),
            "data": {"path": report.path, "sha256": report.sha256}}


def _metrics(state: dict[str, Any], total: int, n_train: int, n_val: int, trainable: int,
             device: str, fp: str) -> dict[str, Any]:
    history = state.get("history", [])
    last_val = next((h["val_loss"] for h in reversed(history) if h["val_loss"] is not None),
                    None)
    seconds = float(state.get("seconds", 0.0))
    compute = float(state.get("step_seconds", 0.0))
    examples = int(state.get("examples", 0))
    losses = state.get("losses", [])
    return {
        "fingerprint": fp,
        "steps": total,
        "train_examples": n_train,
        "val_examples": n_val,
        "trainable_params": trainable,
        "train_loss": losses[-1][1] if losses else None,
        "val_loss": last_val,
        "history": history,
        "train_seconds": round(seconds, 2),
        "seconds_per_example": round(compute / examples, 3) if examples else None,
        "tokens_per_s": round(int(state.get("tokens", 0)) / compute, 1) if compute else None,
        "device": device,
        "precision": "+".join(state.get("precisions", [])) or None,
    }


def _save_adapter(run: RunDir, model: Any, metrics: dict[str, Any], config: TrainConfig) -> None:
    tmp = run.root / f".adapter-{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    config.save(tmp / "train_config.json")
    _write_json(tmp / "metrics.json", metrics)
    shutil.rmtree(run.adapter, ignore_errors=True)
    os.replace(tmp, run.adapter)
