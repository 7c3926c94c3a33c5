#!/usr/bin/env python3
"""Compare RAG prompt variants on the SQuAD development split and print a table.

Each variant is a (system prompt, reminder) pair; every question goes through the answer
pipeline (:func:`appliance.pipeline.answer`: retrieval, abstention thresholds, prompt,
generation, citation checks) with that pair, and is scored like ``appliance eval`` does:
token F1 and containment on answerable questions ([n] stripped), false abstention,
abstention on unanswerable questions, citing, latency. Answers are journalled per variant
under ``--out``, so a rerun resumes. Tune here, on dev; report on the test split with
``appliance eval``.

    APPLIANCE_HOME=DIR .venv/bin/python scripts/tune_prompt.py --kb squad-dev --limit 80 \\
        --answerable-only --variants current,words,five,k2 --out /tmp/tune
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import calibrate_margin

REPO = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, dict[str, Any]] = {
    # reminder: the instruction repeated after the question ("" = the product's
    # ANSWER_REMINDER); k: sources in the prompt (default: answer.k).
    "current": {},
    "words": {"reminder": "Answer with only the words from the sources that answer the "
                          "question (a name, number, date or short phrase), not a sentence."},
    "span": {"reminder": "Copy the shortest part of a source that answers the question."},
    "five": {"reminder": "Answer in at most five words taken from the sources."},
    "k2": {"k": 2},
    "k5": {"k": 5},
    # the best-ranked source last, next to the question (small readers weigh what they
    # read last; "lost in the middle", Liu et al. 2023)
    "reverse": {"reverse": True},
    # worked turns before the question: "one" a single cited answer (no abstention
    # example, which made the model abstain on half the answerable questions), "two" the
    # product's FEW_SHOT pair (a cited answer and an abstention)
    "one": {"examples": 1},
    "two": {"examples": 2},
    # the question both before and after the sources, so the reader meets the sources
    # knowing what it looks for (a decoder reads left to right)
    "sandwich": {"question_first": True},
    # copy-biased decoding: every token of the sources gets this logit bonus at every step,
    # so a small reader quotes ("9th century") rather than misremembers ("19th century")
    "copy": {"copy_bias": 2.0},
    # a bonus for ending the answer after its first token (shorter answers)
    "stop": {"stop_bias": 2.0},
    "copystop": {"copy_bias": 2.0, "stop_bias": 2.0},
}


def _end_tokens(generator: Any) -> list[int]:
    """The ids that end a turn in ``generator``'s vocabulary (found once, then kept)."""
    import llama_cpp

    if not hasattr(generator, "_end_ids"):
        vocab = generator.llm._model.vocab
        generator._end_ids = [t for t in range(generator.llm.n_vocab())
                              if llama_cpp.llama_vocab_is_eog(vocab, t)]
    return list(generator._end_ids)


@contextlib.contextmanager
def _biased(bias: float, stop: float = 0.0) -> Iterator[None]:
    """Generate with ``bias`` added to the logits of every token found in the sources, and
    ``stop`` to the end-of-turn tokens' after the first generated token."""
    import llama_cpp
    import numpy as np

    from appliance.generate.llama import LlamaGenerator

    plain_stream = LlamaGenerator.stream
    plain_processor = LlamaGenerator._first_token_processor

    def stream(self: Any, messages: list[dict[str, str]], *args: Any, **kwargs: Any) -> Any:
        bodies = "\n".join(re.findall(r"<source [^>]*>\n(.*?)\n</source>",
                                      messages[-1]["content"], flags=re.DOTALL))
        ids = self.llm.tokenize(bodies.encode("utf-8"), add_bos=False, special=False)
        self._copy_ids = np.array(sorted(set(ids)), dtype=np.int64)
        return plain_stream(self, messages, *args, **kwargs)

    def processor(self: Any, first: Any, prompt_len: int) -> Any:
        inner = plain_processor(self, first, prompt_len)
        ids = getattr(self, "_copy_ids", None)
        ends = _end_tokens(self)

        def process(input_ids: Any, scores: Any) -> Any:
            if bias and ids is not None and len(ids):
                scores[ids] += bias
            if stop and len(input_ids) > prompt_len:
                scores[ends] += stop
            return inner[0](input_ids, scores) if inner else scores

        return llama_cpp.LogitsProcessorList([process])

    LlamaGenerator.stream = stream  # type: ignore[method-assign]
    LlamaGenerator._first_token_processor = processor  # type: ignore[method-assign]
    try:
        yield
    finally:
        LlamaGenerator.stream = plain_stream  # type: ignore[method-assign]
        LlamaGenerator._first_token_processor = plain_processor  # type: ignore[method-assign]


@contextlib.contextmanager
def _question_first() -> Iterator[None]:
    """Build prompts whose user message opens with the question as well."""
    from appliance.generate import prompt

    plain = prompt._user_message

    def both(blocks: Any, question: str, reminder: str = prompt.ANSWER_REMINDER) -> str:
        return f"Question: {prompt.neutralise(question.strip())}\n\n" + \
            plain(blocks, question, reminder)

    prompt._user_message = both
    try:
        yield
    finally:
        prompt._user_message = plain


class _Reversed:
    """A retriever whose hits come in reverse rank order (numbered [1] = lowest rank)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def search(self, *args: Any, **kwargs: Any) -> Any:
        from dataclasses import replace

        result = self.inner.search(*args, **kwargs)
        return replace(result, hits=list(reversed(result.hits)))


def main(argv: list[str] | None = None) -> int:
    """Run the chosen variants and print the comparison table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--squad", type=Path, default=calibrate_margin.DEFAULT_SQUAD)
    parser.add_argument("--articles", default="dev", help="dev (default), test or titles")
    parser.add_argument("--kb", default="squad-dev")
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--answerable-only", action="store_true",
                        help="sample answerable questions only (F1 needs many of them)")
    parser.add_argument("--model", default=None, help="generator id [default model]")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    sys.path.insert(0, str(REPO))
    from rich.console import Console
    from rich.table import Table

    from appliance.api import Appliance
    from appliance.evaluate.metrics import aggregate, score_answer
    from appliance.evaluate.runner import load_eval_set, prepare_squad_kb
    from appliance.generate import ANSWER_REMINDER, load_generator
    from appliance.generate.prompt import FEW_SHOT
    from appliance.pipeline import answer

    app = Appliance()
    eval_set = load_eval_set(args.squad, articles=args.articles,
                             limit=None if args.answerable_only else args.limit)
    if args.answerable_only:
        answerable = [i for i in eval_set.items if i.answerable]
        answerable.sort(key=lambda i: hashlib.sha256(i.id.encode()).hexdigest())
        keep = {i.id for i in answerable[: args.limit]}
        eval_set.items = [i for i in eval_set.items if i.id in keep]
    if args.kb not in app.list_kbs():
        prepare_squad_kb(app, eval_set, args.kb)
    retriever = app.retriever(args.kb)
    config = app.settings.answer
    gen = load_generator(app.settings, app.registry, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    rows: list[tuple[str, dict[str, Any]]] = []
    for name in args.variants.split(","):
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
        variant = VARIANTS[name]
        reminder = variant.get("reminder") or ANSWER_REMINDER
        cfg = config.model_copy(update={"k": variant.get("k", config.k)})
        journal = args.out / f"{name}.jsonl"
        done: dict[str, dict[str, Any]] = {}
        if journal.exists():
            for line in journal.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                done[rec["id"]] = rec
        with contextlib.ExitStack() as stack:
            fh = stack.enter_context(journal.open("a", encoding="utf-8"))
            if variant.get("question_first"):
                stack.enter_context(_question_first())
            if variant.get("copy_bias") or variant.get("stop_bias"):
                stack.enter_context(_biased(variant.get("copy_bias", 0.0),
                                            variant.get("stop_bias", 0.0)))
            for i, item in enumerate(eval_set.items, 1):
                if item.id in done:
                    continue
                rec = answer(item.question, generator=gen, settings=app.settings,
                             retriever=_Reversed(retriever) if variant.get("reverse")
                             else retriever, mode="rag", id=item.id, config=cfg,
                             reminder=reminder,
                             examples=FEW_SHOT[: 2 * variant.get("examples", 0)])
                values = rec.to_json()
                done[item.id] = values
                fh.write(json.dumps(values, ensure_ascii=False) + "\n")
                fh.flush()
                console.print(f"[dim]{name} {i}/{len(eval_set.items)}[/] {rec.answer[:90]!r}")
        scores = [score_answer(item, done[item.id]) for item in eval_set.items]
        rows.append((name, aggregate(scores, "rag")))

    kind = "answerable " if args.answerable_only else ""
    table = Table(title=f"RAG prompt variants, SQuAD {args.articles}, "
                        f"{len(eval_set.items)} {kind}questions")
    for col in ("variant", "F1 ans", "EM ans", "contained", "false abst", "unans abst",
                "cites", "p50 s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, m in rows:
        table.add_row(name, cell(m["f1_answerable"]), cell(m["em_answerable"]),
                      cell(m["contained"]), cell(m["false_abstention"]),
                      cell(m["abstention_accuracy"]), cell(m["citation_coverage"]),
                      f"{m['p50_ms'] / 1000:.1f}")
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
