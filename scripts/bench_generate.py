#!/usr/bin/env python3
"""Generation speed through appliance vs raw llama_cpp, and where a RAG answer's time goes.

Same GGUF, same prompt, same process: the prompt is a real RAG prompt (the demo corpus's
top sources for a sample question). Each run starts from an empty KV cache, so time to
first token includes evaluating the whole prompt. Runs alternate between

- ``raw``: ``llama_cpp.Llama(...).create_chat_completion(messages, stream=True)``, and
- ``appliance``: ``LlamaGenerator.stream(messages)``,

both with the same threads, batch, context and greedy sampling. For both, time to first
token is when the first text piece arrives and tokens/s is (tokens - 1) / (last piece -
first piece), tokens counted on the final text with the model's tokenizer. The table shows
medians and the ratio appliance / raw (target >= 0.95).

Then the sample questions are answered through the pipeline (``Pipeline.ask``, KV cache
kept between questions as in real use) and the medians of embed, search, prompt, time to
first token and generation are shown, with retrieval + prompt building as a share of time
to first token (target <= 10%).

    .venv/bin/python scripts/bench_generate.py [--model ID] [--runs 5] [--home DIR]
        [--compare-flash-attn]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from appliance.api import Appliance  # noqa: E402
from appliance.config import GenerateSettings, load_settings  # noqa: E402
from appliance.demo import SAMPLE_QUESTIONS, write_pydoc_corpus  # noqa: E402
from appliance.embed import physical_cores  # noqa: E402
from appliance.generate import build_rag_prompt, generator_id, load_generator  # noqa: E402
from appliance.pipeline import Pipeline  # noqa: E402


def timed(pieces: Iterator[str]) -> tuple[str, float, float, float]:
    """(text, t_start, t_first_piece, t_last_piece) of a stream of text pieces."""
    t0 = time.perf_counter()
    first = last = 0.0
    parts = []
    for piece in pieces:
        now = time.perf_counter()
        if piece and not first:
            first = now
        last = now
        parts.append(piece)
    return "".join(parts), t0, first or last, last


def raw_pieces(llm: Any, messages: list[dict[str, str]], max_tokens: int,
               seed: int) -> Iterator[str]:
    for chunk in llm.create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=0.0, seed=seed, stream=True
    ):
        content = chunk["choices"][0]["delta"].get("content")
        if content:
            yield content


def med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def raw_llama(path: Path, settings: GenerateSettings, threads: int,
              flash_attn: bool | None = None) -> Any:
    """A plain ``llama_cpp.Llama`` with the generator's settings (``flash_attn``: the
    setting's unless given)."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=settings.n_ctx, n_batch=max(512, settings.n_batch),
                 n_ubatch=max(512, settings.n_batch), n_threads=threads,
                 n_threads_batch=threads, seed=settings.seed,
                 flash_attn=settings.flash_attn if flash_attn is None else flash_attn,
                 verbose=False)


def race(sides: dict[str, Callable[[], Iterator[str]]], runs: int,
         count_tokens: Callable[[str], int]) -> tuple[dict[str, dict[str, list[float]]],
                                                      dict[str, str]]:
    """Time each side's stream ``runs`` times, the order of the sides flipping every run so
    neither always goes first: per side the lists ``ttft``, ``tps`` and ``tokens``, and
    its last text."""
    results = {side: {"ttft": [], "tps": [], "tokens": []} for side in sides}
    texts: dict[str, str] = {}
    order = list(sides)
    for i in range(runs):
        for side in order if i % 2 == 0 else order[::-1]:
            text, t0, first, last = timed(sides[side]())
            tokens = count_tokens(text)
            texts[side] = text
            results[side]["ttft"].append(first - t0)
            results[side]["tps"].append((tokens - 1) / (last - first) if last > first else 0.0)
            results[side]["tokens"].append(tokens)
    return results, texts


def _fresh(llm: Any, pieces: Callable[[], Iterator[str]]) -> Callable[[], Iterator[str]]:
    """``pieces`` after emptying ``llm``'s KV cache, so each run evaluates the whole prompt."""
    def run() -> Iterator[str]:
        llm.reset()
        return pieces()
    return run


def compare_flash_attn(path: Path, messages: list[dict[str, str]], args: argparse.Namespace,
                       settings: GenerateSettings, threads: int) -> dict[str, Any]:
    """Raw llama_cpp with flash attention off and on: medians of time to first token and
    tokens/s over alternating runs on one prompt, their ratios, and whether the greedy texts
    agree. Returns the numbers and a rich table under ``table``."""
    llms = {side: raw_llama(path, settings, threads, flash_attn=side == "on")
            for side in ("off", "on")}
    sides = {side: _fresh(llm, functools.partial(raw_pieces, llm, messages, args.max_tokens,
                                                 settings.seed))
             for side, llm in llms.items()}
    runs, texts = race(sides, args.runs, lambda text: len(llms["off"].tokenize(
        text.encode(), add_bos=False, special=False)))
    for llm in llms.values():
        llm.close()
    off, on = ({k: med(v) for k, v in runs[side].items()} for side in ("off", "on"))
    table = Table(title=f"flash attention off / on (raw llama_cpp, {args.runs} alternating "
                        f"runs each, medians, {threads} threads)")
    for col in ("", "off", "on", "on / off"):
        table.add_column(col, justify="right")
    table.add_row("time to first token (s)", f"{off['ttft']:.3f}", f"{on['ttft']:.3f}",
                  f"{on['ttft'] / off['ttft']:.3f}" if off["ttft"] else "-")
    table.add_row("tokens/s", f"{off['tps']:.1f}", f"{on['tps']:.1f}",
                  f"{on['tps'] / off['tps']:.3f}" if off["tps"] else "-")
    same = texts["off"].strip() == texts["on"].strip()
    table.caption = f"same greedy text: {'yes' if same else 'NO'}"
    return {"off": off, "on": on, "same_text": same, "table": table}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="generator id (default: the default one)")
    ap.add_argument("--runs", type=int, default=5, help="runs of each side (medians)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--home", type=Path, default=None,
                    help="data directory holding (or to hold) the demo knowledge base")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    ap.add_argument("--compare-flash-attn", action="store_true",
                    help="also time llama.cpp with flash attention off and on (raw, same "
                    "prompt, alternating runs): the generate.flash_attn setting")
    args = ap.parse_args()
    console = Console()

    tmp = None
    if args.home is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-generate-")
        args.home = Path(tmp.name)
    settings = load_settings(home=args.home, generate={"max_tokens": args.max_tokens})
    app = Appliance(settings)
    corpus = args.home / "pydoc-topics"
    write_pydoc_corpus(corpus)
    app.ingest([corpus], kb="demo")
    model_id = args.model or generator_id(app.registry, settings, "rag")

    # -- 1. appliance vs raw llama_cpp on one prompt ----------------------------------------
    gen = load_generator(settings, app.registry, model_id)
    threads = settings.generate.threads or physical_cores()
    raw = raw_llama(gen.path, settings.generate, threads)
    hits = app.search(SAMPLE_QUESTIONS[0], kb="demo", k=settings.answer.k).hits
    prompt = build_rag_prompt(SAMPLE_QUESTIONS[0], hits, count_tokens=gen.count_tokens,
                              n_ctx=gen.n_ctx, max_tokens=args.max_tokens)
    # one warm-up each (page cache, allocations), then alternate
    for _ in timed(raw_pieces(raw, prompt.messages, 8, settings.generate.seed)):
        pass
    for _ in timed(gen.stream(prompt.messages, 8)):
        pass
    results, texts = race({
        "raw": _fresh(raw, functools.partial(raw_pieces, raw, prompt.messages, args.max_tokens,
                                             settings.generate.seed)),
        "appliance": _fresh(gen.llm, functools.partial(gen.stream, prompt.messages,
                                                       args.max_tokens)),
    }, args.runs, gen.count_tokens)
    raw.close()

    table = Table(title=f"{model_id}: appliance vs raw llama_cpp "
                        f"(prompt {gen.render(prompt.messages).__len__()} tokens, "
                        f"{args.runs} runs, medians, {threads} threads)")
    for col in ("", "raw llama_cpp", "appliance", "ratio"):
        table.add_column(col, justify="right")
    r_tps, a_tps = med(results["raw"]["tps"]), med(results["appliance"]["tps"])
    r_ttft, a_ttft = med(results["raw"]["ttft"]), med(results["appliance"]["ttft"])
    table.add_row("tokens/s", f"{r_tps:.1f}", f"{a_tps:.1f}",
                  f"{a_tps / r_tps:.3f}" if r_tps else "-")
    table.add_row("time to first token (s)", f"{r_ttft:.3f}", f"{a_ttft:.3f}",
                  f"{r_ttft / a_ttft:.3f}" if a_ttft else "-")
    table.add_row("completion tokens", f"{med(results['raw']['tokens']):.0f}",
                  f"{med(results['appliance']['tokens']):.0f}", "")
    console.print(table)
    same = texts["raw"].strip() == texts["appliance"].strip()
    console.print(f"same text from both: {'yes' if same else 'NO'} "
                  "(ratio of time to first token: raw / appliance, higher is better); "
                  f"load average during the runs: {os.getloadavg()[0]:.1f} "
                  f"on {os.cpu_count()} CPUs")
    flash = compare_flash_attn(gen.path, prompt.messages, args, settings.generate, threads) \
        if args.compare_flash_attn else None
    if flash is not None:
        console.print(flash.pop("table"))
    gen.close()

    # -- 2. time split of full RAG answers ----------------------------------------------------
    pipe = Pipeline(app)
    split: dict[str, list[float]] = {k: [] for k in
                                     ("embed", "search", "prompt", "ttft", "decode", "total")}
    share: list[float] = []
    rates: list[float] = []
    pipe.ask("warm-up question about the with statement?", kb="demo", model=model_id)
    for question in SAMPLE_QUESTIONS:
        rec = pipe.ask(question, kb="demo", model=model_id)
        stats: Any = getattr(pipe.generator("rag", model_id), "last_stats", None)
        t = rec.timings_ms
        split["embed"].append(t["embed"])
        split["search"].append(t["search"])
        split["prompt"].append(t["prompt"])
        split["total"].append(t["total"])
        if rec.abstained and "abstained:retrieval" in rec.flags:
            continue
        ttft = stats.first_token_s * 1000 if stats else 0.0
        split["ttft"].append(ttft)
        split["decode"].append(stats.generate_s * 1000 if stats else 0.0)
        rates.append(rec.tokens_per_s)
        before = t["embed"] + t["search"] + t["prompt"]
        share.append(before / (before + ttft) if ttft else 0.0)
    pipe.close()
    rag = Table(title=f"Full RAG answer, {len(SAMPLE_QUESTIONS)} demo questions (medians, ms)")
    for col in ("embed", "search", "prompt", "first token", "decode", "total",
                "retrieval+prompt / TTFT", "tokens/s"):
        rag.add_column(col, justify="right")
    rag.add_row(*(f"{med(split[k]):.1f}" for k in
                  ("embed", "search", "prompt", "ttft", "decode", "total")),
                f"{med(share):.1%}", f"{med(rates):.1f}")
    console.print(rag)

    if args.json:
        args.json.write_text(json.dumps({
            "model": model_id, "threads": threads, "runs": args.runs,
            "raw": {k: med(v) for k, v in results["raw"].items()},
            "appliance": {k: med(v) for k, v in results["appliance"].items()},
            "tps_ratio": a_tps / r_tps if r_tps else None, "same_text": same,
            "rag_ms": {k: med(v) for k, v in split.items()},
            "retrieval_prompt_share_of_ttft": med(share),
            "flash_attn": flash,
        }, indent=1), encoding="utf-8")
    app.close()
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
