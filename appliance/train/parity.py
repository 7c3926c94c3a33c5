"""Parity check: does the GGUF behave like the merged model it was made from?

On held-out chat examples (the validation split), each conversation is tokenized once by
the merged model's tokenizer and evaluated by both models on the same token ids: the
merged Hugging Face model (float32, torch) and the GGUF (llama.cpp logits). At every
position that predicts a token of an assistant turn (the reply and its end-of-turn token)
the two top-1 next tokens are compared. The check also requires

- the GGUF's own tokenizer to turn each rendered conversation into the same ids (chat
  tokens intact),
- the chat template in the GGUF's metadata, identical to the tokenizer's,
- the same end-of-sequence token, which llama.cpp treats as end of generation, and greedy
  generation on held-out prompts that stops there.

Quantization flips the top-1 token where the merged model itself hesitates between two
tokens (measured on the 0.5B answer model, q8_0: 4 flips in 182 positions, each where the
merged model's top two were within 0.09 nats; the f32 GGUF agreed on all 182). So the gate
is *tie-aware*: a position agrees when the GGUF's top-1 token is the merged model's top-1,
or is scored by the merged model within :data:`TIE_MARGIN` nats of it. That agreement
must reach :data:`THRESHOLDS` (0.98 for f16 and q8_0; q4_k_m is reported only); a failure
blocks registration unless ``--force``. Strict top-1 agreement and the mean KL divergence
are reported alongside. A broken export (wrong tokenizer, lost adapter, bad weights) fails
it by far: its flips are not near-ties.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from appliance.train.errors import ParityError

__all__ = ["THRESHOLDS", "TIE_MARGIN", "ParityResult", "check_parity"]

THRESHOLDS: dict[str, float | None] = {"f16": 0.98, "q8_0": 0.98, "q4_k_m": None}
"""Least top-1 agreement per GGUF type (None: reported, not enforced)."""

TIE_MARGIN = 0.1
"""Log-probability gap (nats) within which the merged model's top tokens count as tied."""


@dataclass
class ParityResult:
    """The outcome of one parity check."""

    quant: str
    threshold: float | None
    prompts: int = 0
    held_out: bool = True
    positions: int = 0
    top1: float = 0.0
    """Strict top-1 agreement over the assistant-token positions."""
    top1_tie_aware: float = 0.0
    """Agreement where a flip between tokens tied within TIE_MARGIN counts: the gate."""
    near_ties: int = 0
    """Flips forgiven as near-ties."""
    kl: float = 0.0
    """Mean KL(merged || GGUF) over the compared positions, in nats."""
    tokenizer_match: float = 0.0
    """Share of conversations the GGUF tokenizes to the same ids."""
    chat_template: bool = False
    eos_match: bool = False
    eos_stops: int = 0
    generations: int = 0
    passed: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready result (lineage stores it)."""
        data = asdict(self)
        for key in ("top1", "top1_tie_aware", "kl", "tokenizer_match", "seconds"):
            data[key] = round(float(data[key]), 5)
        return data

    def summary(self) -> str:
        """One line for the terminal."""
        need = f" (needs {self.threshold:.2f})" if self.threshold is not None else ""
        return (f"top-1 agreement {self.top1_tie_aware:.4f}{need} on {self.positions} "
                f"positions of {self.prompts} held-out prompts (strict {self.top1:.4f}, "
                f"{self.near_ties} near-ties); "
                f"KL {self.kl:.4f}; tokenizer {self.tokenizer_match:.2f}; template "
                f"{'ok' if self.chat_template else 'MISSING'}; EOS stops "
                f"{self.eos_stops}/{self.generations}")


def check_parity(
    model: Any,
    encoder: Any,
    gguf: Path,
    conversations: Sequence[list[dict[str, str]]],
    quant: str,
    *,
    held_out: bool = True,
    max_prompts: int = 16,
    generations: int = 2,
    threads: int = 0,
    raise_on_fail: bool = False,
) -> ParityResult:
    """Compare ``model`` (merged, float) with the GGUF at ``gguf`` on ``conversations``.

    ``encoder`` is the run's :class:`~appliance.train.lora.ChatEncoder` (tokenizer and
    assistant labels). Raises ParityError on failure when ``raise_on_fail``.
    """
    import numpy as np
    import torch
    from llama_cpp import Llama, llama_vocab_is_eog

    from appliance.train.lora import IGNORE

    t0 = time.perf_counter()
    result = ParityResult(quant=quant, threshold=THRESHOLDS.get(quant), held_out=held_out)
    convs = list(conversations)[:max_prompts]
    if not convs:
        result.problems.append("no conversations to compare")
        return _finish(result, t0, raise_on_fail)
    encoded = [encoder.encode(c) for c in convs]
    n_ctx = max(len(e.input_ids) for e in encoded) + 288
    from appliance.train.lora import auto_threads

    threads = threads or auto_threads()
    llm: Any = Llama(model_path=str(gguf), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                     logits_all=True, n_threads=threads, n_threads_batch=threads,
                     verbose=False)
    tokenizer = encoder.tokenizer
    template = llm.metadata.get("tokenizer.chat_template")
    result.chat_template = bool(template) and template == tokenizer.chat_template
    if not template:
        result.problems.append("the GGUF has no chat template")
    elif not result.chat_template:
        result.problems.append("the GGUF's chat template differs from the tokenizer's")
    vocab = llm._model.vocab
    eos = int(llm.token_eos())
    result.eos_match = eos == tokenizer.eos_token_id and bool(llama_vocab_is_eog(vocab, eos))
    if not result.eos_match:
        result.problems.append(f"end-of-sequence differs (GGUF {eos}, tokenizer "
                               f"{tokenizer.eos_token_id})")

    model.eval()
    # The merged model first, llama.cpp after: torch's and llama.cpp's worker threads
    # never compete for the same cores.
    wanted: list[tuple[list[int], list[int], Any]] = []
    for enc in encoded:
        positions = [p for p in range(len(enc.input_ids) - 1) if enc.labels[p + 1] != IGNORE]
        if not positions:
            continue
        with torch.no_grad():
            hf = model(input_ids=torch.tensor([enc.input_ids], device=model.device)).logits[0]
            hf_lp = torch.log_softmax(hf[positions].float(), dim=-1).cpu().numpy()
        wanted.append((enc.input_ids, positions, hf_lp))
    same_tokens = agree = total = tie_agree = 0
    kl_sum = 0.0
    for conv in convs:
        text = encoder.render(conv)
        gguf_ids = list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        text_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        same_tokens += int(gguf_ids == text_ids)
    for ids, positions, hf_lp in wanted:
        llm.reset()
        llm.eval(ids)
        scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)[positions]
        scores -= scores.max(axis=-1, keepdims=True)
        g_lp = scores - np.log(np.exp(scores).sum(axis=-1, keepdims=True))
        vocab_n = min(hf_lp.shape[-1], g_lp.shape[-1])
        hf_lp, g_lp = hf_lp[:, :vocab_n].astype(np.float64), g_lp[:, :vocab_n]
        hf_top, g_top = hf_lp.argmax(-1), g_lp.argmax(-1)
        match = hf_top == g_top
        rows = np.arange(len(positions))
        tied = hf_lp[rows, g_top] >= hf_lp[rows, hf_top] - TIE_MARGIN
        agree += int(match.sum())
        tie_agree += int((match | tied).sum())
        total += len(positions)
        kl_sum += float((np.exp(hf_lp) * (hf_lp - g_lp)).sum())
    result.prompts = len(convs)
    result.positions = total
    result.top1 = agree / total if total else 0.0
    result.top1_tie_aware = tie_agree / total if total else 0.0
    result.near_ties = tie_agree - agree
    result.kl = kl_sum / total if total else 0.0
    result.tokenizer_match = same_tokens / len(convs)
    if same_tokens < len(convs):
        result.problems.append(
            f"the GGUF tokenizes {len(convs) - same_tokens} of {len(convs)} conversations "
            "differently")
    if not total:
        result.problems.append("no assistant tokens to compare")
    elif result.threshold is not None and result.top1_tie_aware < result.threshold:
        result.problems.append(
            f"top-1 agreement {result.top1_tie_aware:.4f} (strict {result.top1:.4f}) is "
            f"below {result.threshold:.2f}")

    # Greedy generation from held-out prompts must end at end-of-sequence.
    for conv in convs[:generations]:
        prompt = conv[: max(i for i, m in enumerate(conv) if m["role"] == "assistant")]
        ids = encoder.tokenizer(encoder.render(prompt, add_generation_prompt=True),
                                add_special_tokens=False)["input_ids"]
        reply = next(m["content"] for m in conv[len(prompt):] if m["role"] == "assistant")
        budget = min(256, n_ctx - len(ids) - 1,
                     2 * len(tokenizer(reply, add_special_tokens=False)["input_ids"]) + 32)
        llm.reset()
        result.generations += 1
        for n, token in enumerate(llm.generate(list(ids), temp=0.0, top_k=1)):
            if llama_vocab_is_eog(vocab, token):
                result.eos_stops += 1
                break
            if n + 1 >= budget:
                break
    if result.generations and result.eos_stops * 2 < result.generations:
        result.problems.append(
            f"greedy generation stopped at end-of-sequence in only {result.eos_stops} of "
            f"{result.generations} held-out prompts")
    llm.close()
    return _finish(result, t0, raise_on_fail)


def _finish(result: ParityResult, t0: float, raise_on_fail: bool) -> ParityResult:
    result.passed = not result.problems
    result.seconds = time.perf_counter() - t0
    if raise_on_fail and not result.passed:
        raise ParityError(
            f"The {result.quant} GGUF does not match the merged model: "
            + "; ".join(result.problems)
            + ". Nothing was registered (use --force to register anyway).", result)
    return result
