#!/usr/bin/env python3
"""Benchmark the fine-tuning pipeline on this machine: train + merge + export, and the result.

For one base model (default: the default answer model), on a handful of grounded examples
(built from the SQuAD dev split with the pipeline's own prompt builder, or a chat JSONL you
give), it runs ``appliance train``'s chain in a private data directory and reports

- wall time and peak memory (this process and its converter/quantizer children) of:
  loading + training, merge + convert + quantize, the parity check;
- the training cost per example and per token (forward, backward and optimiser step only);
- generation speed (tokens/s, prompt evaluation excluded, greedy, the same prompt and the
  same number of tokens) of the registered GGUF against its base GGUF.

    .venv/bin/python scripts/bench_train.py                      # 0.5B default base
    .venv/bin/python scripts/bench_train.py --base smollm2-135m-instruct-q4_1 --examples 16
    .venv/bin/python scripts/bench_train.py --device cuda        # on a GPU machine
    .venv/bin/python scripts/bench_train.py --compare-precision  # fp32 vs bf16 training

``--compare-precision`` trains the same examples once in float32 and once with bf16
autocast (training only, no export) and prints seconds per example, training tokens/s,
the losses and the ratio against float32 measured in the same run.

Prints a rich table; ``--json`` prints the numbers instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import calibrate_margin
from rich.console import Console
from rich.table import Table

from appliance.train.config import PRECISIONS, QUANT_TYPES


class PeakMemory:
    """Samples the resident memory of this process plus its children."""

    def __init__(self, interval: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        import psutil

        total = self._proc.memory_info().rss
        for child in self._proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                continue
        return int(total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemory:
        self.peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def grounded_examples(path: Path, squad: Path, n: int, count_model: Path, seed: int) -> Path:
    """``n`` grounded examples (SQuAD dev split) written to ``path``."""
    from llama_cpp import Llama

    from appliance.evaluate.squad import load_squad
    from appliance.train.data import write_chat_jsonl
    from appliance.train.grounded import (
        GroundedOptions,
        SquadSources,
        build_grounded,
        held_out_articles,
    )

    dev, test = held_out_articles(load_squad(squad))
    llm = Llama(model_path=str(count_model), vocab_only=True, verbose=False)

    def count(text: str) -> int:
        return len(llm.tokenize(text.encode(), add_bos=False, special=False)) if text else 0

    examples, _ = build_grounded(dev, SquadSources(dev, path.parent / "corpus"), count,
                                 GroundedOptions(limit=n, seed=seed),
                                 exclude_articles=[a.title for a in test])
    write_chat_jsonl(examples, path)
    return path


def tokens_per_s(gguf: Path, n_tokens: int, threads: int) -> float:
    """Greedy decode speed (end-of-sequence ignored), prompt evaluation excluded."""
    import numpy as np
    from llama_cpp import Llama

    llm: Any = Llama(model_path=str(gguf), n_ctx=512, n_threads=threads,
                     n_threads_batch=threads, verbose=False)
    prompt = llm.tokenize(b"Write a long story about a lighthouse keeper and the sea.",
                          add_bos=True)
    llm.eval(prompt)
    t = time.perf_counter()
    for _ in range(n_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        llm.eval([token])
    rate = n_tokens / (time.perf_counter() - t)
    llm.close()
    return rate


def compare_precision(data: Path, base_id: str, settings: Any, registry: Any, config: Any,
                      args: argparse.Namespace, threads: int) -> int:
    """Train the same examples in fp32 and in bf16; print cost, losses and the ratio."""
    from appliance.train.config import RunOptions
    from appliance.train.lora import resolve_base, train_lora

    spec = resolve_base(base_id, registry)
    rows: dict[str, dict[str, Any]] = {}
    for precision in ("fp32", "bf16"):
        result = train_lora(data, spec, f"bench-{precision}-{int(time.time())}", config,
                            settings, RunOptions(device=args.device, threads=threads,
                                                 precision=precision, save_every=1000,
                                                 resume=False))
        m = result.metrics
        rows[precision] = {"seconds_per_example": m.get("seconds_per_example"),
                           "train_tokens_per_s": m.get("tokens_per_s"),
                           "train_loss": m.get("train_loss"), "val_loss": m.get("val_loss"),
                           "precision_used": m.get("precision"), "device": m.get("device")}
    fp32 = rows["fp32"]["seconds_per_example"] or 0.0
    for row in rows.values():
        spe = row["seconds_per_example"]
        row["speedup_vs_fp32"] = round(fp32 / spe, 2) if spe and fp32 else None
    numbers = {"base": base_id, "threads": threads, "load_average": round(os.getloadavg()[0], 2),
               "rows": rows}
    if args.json:
        print(json.dumps(numbers, indent=2))
        return 0
    table = Table(title=f"Training precision, {base_id} ({rows['fp32']['device']}, {threads} "
                        f"threads, load {numbers['load_average']})")
    for col in ("precision", "s / example", "tokens / s", "train loss", "val loss",
                "speed-up vs fp32"):
        table.add_column(col, justify="right" if col != "precision" else "left")
    for name, row in rows.items():
        used = row["precision_used"]
        table.add_row(name if used == name else f"{name} (used: {used})",
                      str(row["seconds_per_example"]),
                      str(row["train_tokens_per_s"]), str(row["train_loss"]),
                      str(row["val_loss"]), f"{row['speedup_vs_fp32']}x")
    Console().print(table)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=None, help="base model id [default answer model]")
    parser.add_argument("--data", type=Path, default=None, help="chat JSONL to train on")
    parser.add_argument("--squad", type=Path, default=calibrate_margin.DEFAULT_SQUAD)
    parser.add_argument("--examples", type=int, default=8,
                        help="grounded examples built when --data is not given")
    parser.add_argument("--val-examples", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--quant", default="q8_0", choices=list(QUANT_TYPES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="0: the idle cores")
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    parser.add_argument("--compare-precision", action="store_true",
                        help="train only, in fp32 and in bf16, and compare")
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--home", type=Path, default=None, help="data directory [a temp one]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from appliance.config import load_settings
    from appliance.generate import generator_id
    from appliance.models import Registry
    from appliance.train import fine_tune
    from appliance.train.config import RunOptions, TrainConfig
    from appliance.train.lora import auto_threads

    home = args.home or Path(tempfile.mkdtemp(prefix="bench-train-"))
    os.environ["APPLIANCE_HOME"] = str(home)
    settings = load_settings(home=home)
    registry = Registry.load(settings)
    base_id = args.base or generator_id(registry, settings, "rag")
    base = registry.resolve(base_id)
    threads = args.threads or auto_threads()
    data = args.data
    if data is None:
        n = args.examples + args.val_examples
        data = grounded_examples(home / "bench-grounded.jsonl", args.squad, n, base.path,
                                 args.seed)
    n_examples = sum(1 for line in data.read_text(encoding="utf-8").splitlines()
                     if line.strip())
    val_split = args.val_examples / n_examples if args.val_examples else 0.0
    config = TrainConfig(r=args.rank, lora_alpha=2 * args.rank, epochs=args.epochs,
                         grad_accum=args.grad_accum, val_split=val_split, quant=args.quant,
                         max_len=4096, seed=args.seed)
    if args.compare_precision:
        return compare_precision(data, base_id, settings, registry, config, args, threads)
    out_id = f"bench-{int(time.time())}"
    t0 = time.perf_counter()
    with PeakMemory() as mem:
        result = fine_tune(data, base_id, settings, registry, out_id=out_id, config=config,
                           options=RunOptions(device=args.device, threads=threads,
                                              precision=args.precision, save_every=1000),
                           force=True)
    wall = time.perf_counter() - t0
    assert result.entry is not None
    base_tps = tokens_per_s(base.path, args.gen_tokens, threads)
    tuned_tps = tokens_per_s(result.entry.path, args.gen_tokens, threads)
    m = result.metrics
    numbers: dict[str, Any] = {
        "base": base_id,
        "device": m.get("device"),
        "precision": m.get("precision"),
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 2),
        "examples_trained": m.get("train_examples"),
        "steps": m.get("steps"),
        "mean_tokens_per_example": round(m["tokens_per_s"] * m["seconds_per_example"], 1)
        if m.get("tokens_per_s") and m.get("seconds_per_example") else None,
        "seconds_per_example": m.get("seconds_per_example"),
        "train_tokens_per_s": m.get("tokens_per_s"),
        "seconds": {**result.seconds, "total": round(wall, 1)},
        "peak_memory_mb": round(mem.peak / 1e6),
        "gguf": str(result.entry.path),
        "gguf_mb": round((result.entry.size or 0) / 1e6),
        "parity": result.parity.to_json(),
        "tokens_per_s": {"base": round(base_tps, 1), "fine_tuned": round(tuned_tps, 1)},
    }
    if args.json:
        print(json.dumps(numbers, indent=2))
        return 0
    table = Table(title=f"Fine-tuning {base_id} on {m.get('train_examples')} examples "
                        f"({numbers['device']}, {numbers['precision']}, {threads} threads, "
                        f"load {numbers['load_average']})")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("load + train (s)", f"{result.seconds.get('train', 0):.1f}")
    table.add_row("merge + convert + quantize (s)", f"{result.seconds.get('export', 0):.1f}")
    table.add_row("parity check (s)", f"{result.seconds.get('parity', 0):.1f}")
    table.add_row("total (s)", f"{wall:.1f}")
    table.add_row("peak memory, with children (MB)", str(numbers["peak_memory_mb"]))
    table.add_row("training s / example", str(numbers["seconds_per_example"]))
    table.add_row("mean tokens / example", str(numbers["mean_tokens_per_example"]))
    table.add_row("training tokens / s", str(numbers["train_tokens_per_s"]))
    table.add_row(f"GGUF {args.quant} (MB)", str(numbers["gguf_mb"]))
    table.add_row("parity top-1: tie-aware (strict)", f"{result.parity.top1_tie_aware:.4f} "
                                                      f"({result.parity.top1:.4f})")
    table.add_row("generation tok/s: base", f"{base_tps:.1f}")
    table.add_row("generation tok/s: fine-tuned", f"{tuned_tps:.1f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
