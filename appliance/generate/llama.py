"""llama.cpp generation: one loaded GGUF model that serves many questions.

:class:`LlamaGenerator` is a thin layer over ``llama_cpp.Llama``. The chat messages are
rendered with the GGUF's own chat template (the Jinja formatter llama-cpp-python's
``create_chat_completion`` uses), tokenized once, and decoded token by token through
``Llama.generate``, which keeps the KV cache of the longest common prefix with the
previous prompt: the system prompt, identical and first for every question of a mode, is
evaluated once. Driving the token loop here (rather than through the OpenAI-style chunk
dicts) gives exact prompt and completion token counts and per-token timings at no cost.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from appliance.config import GenerateSettings
from appliance.errors import InputError, Interrupted, ModelError

__all__ = ["ChatTemplate", "GenerationStats", "LlamaGenerator", "fold_system", "load_llama",
           "template_parse_error"]

TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05
REPEAT_PENALTY = 1.0
"""Sampling knobs used when ``temperature`` > 0 (temperature 0 is greedy and ignores them)."""


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """``messages`` with a leading system message moved to the start of the first user
    message (blank line between), for chat templates that take no system role."""
    if not messages or messages[0].get("role") != "system":
        return messages
    system, rest = messages[0]["content"], messages[1:]
    if rest and rest[0].get("role") == "user":
        return [{"role": "user", "content": f"{system}\n\n{rest[0]['content']}"}, *rest[1:]]
    return [{"role": "user", "content": system}, *rest]


def template_parse_error(name: str, exc: Exception) -> str:
    """The sentence for a GGUF whose chat template does not parse."""
    return f"The chat template of {name} does not parse ({exc}); choose another model."


_PROBE_MESSAGES = [{"role": "system", "content": "Answer from the sources."},
                   {"role": "user", "content": "What is in the sources?"}]


class ChatTemplate:
    """A GGUF's Jinja chat template (rendered as llama-cpp-python's
    ``create_chat_completion`` does), checked once when loaded.

    Some templates refuse a system message (Gemma 2's raises "System role not supported";
    Mistral's want user and assistant turns only): then the system prompt goes at the start
    of the first user message (:func:`fold_system`), as those models expect. A template
    that does not parse, or that cannot render a question either way, is a ModelError.
    """

    def __init__(self, template: str, *, bos: str, eos: str, eos_id: int, name: str) -> None:
        from jinja2 import TemplateError
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._errors: tuple[type[Exception], ...] = (TemplateError, ValueError, TypeError)
        self.name = name
        try:
            self._formatter: Any = Jinja2ChatFormatter(
                template=template, eos_token=eos, bos_token=bos, stop_token_ids=[eos_id])
        except self._errors as exc:
            raise ModelError(template_parse_error(name, exc)) from exc
        self.system_role = self._renders(_PROBE_MESSAGES)
        if not self.system_role and not self._renders(fold_system(_PROBE_MESSAGES)):
            raise ModelError(f"The chat template of {name} cannot render a question; choose "
                             "another model.")

    @classmethod
    def from_llama(cls, llm: Any, name: str) -> ChatTemplate:
        """The template of a loaded ``llama_cpp.Llama`` (a ``vocab_only`` one will do), with
        its BOS and EOS tokens; ModelError when the GGUF has none."""
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ModelError(f"{name} has no chat template, so it cannot answer questions; "
                             "choose an instruct model with --model.")
        text = llm._model.token_get_text
        bos, eos = llm.token_bos(), llm.token_eos()
        return cls(template, bos=text(bos) if bos != -1 else "",
                   eos=text(eos) if eos != -1 else "", eos_id=eos, name=name)

    def _renders(self, messages: list[dict[str, str]]) -> bool:
        try:
            self._formatter(messages=messages)
        except self._errors:
            return False
        return True

    def __call__(self, messages: list[dict[str, str]]) -> tuple[str, bool]:
        """The prompt text of ``messages`` and whether the template added BOS itself."""
        if not self.system_role:
            messages = fold_system(messages)
        try:
            result = self._formatter(messages=messages)
        except self._errors as exc:
            raise ModelError(f"The chat template of {self.name} cannot render this "
                             f"conversation ({exc}); choose another model.") from exc
        return result.prompt, bool(result.added_special)


@dataclass
class GenerationStats:
    """What the last :meth:`LlamaGenerator.stream` call cost."""

    prompt_tokens: int = 0
    """Tokens of the rendered prompt (the chat template's markers included)."""
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused from the previous call."""
    completion_tokens: int = 0
    """Tokens generated, end-of-sequence excluded."""
    first_token_s: float = 0.0
    """From the call to the first token: prompt evaluation plus one sampling step."""
    generate_s: float = 0.0
    """From the first token to the last: generation alone, prompt evaluation excluded."""
    total_s: float = 0.0
    finish_reason: str = ""
    """``stop`` (end of sequence), ``length`` (max tokens) or ``aborted`` (caller stopped)."""

    @property
    def tokens_per_s(self) -> float:
        """Completion tokens per second of generation (prompt evaluation excluded).

        The first token's time is part of ``first_token_s``, so the rate is taken over the
        tokens after it.
        """
        if self.completion_tokens <= 1 or self.generate_s <= 0:
            return 0.0
        return (self.completion_tokens - 1) / self.generate_s

    def to_json(self) -> dict[str, Any]:
        """The stats as JSON-ready data."""
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


class LlamaGenerator:
    """A GGUF chat model loaded once; streams answers for chat ``messages``.

    Implements :class:`appliance.types.Generator`. After each :meth:`stream`,
    :attr:`last_stats` holds the token counts and timings of that call. Not thread-safe:
    calls are serialised by a lock (one llama.cpp context decodes one sequence).
    """

    def __init__(self, model_id: str, path: Path, settings: GenerateSettings) -> None:
        from appliance.embed import physical_cores

        try:
            from jinja2 import TemplateError
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - setup installs it
            raise ModelError(
                f"llama-cpp-python is not installed ({exc}); run scripts/setup.sh."
            ) from exc
        self._id = model_id
        self.path = Path(path)
        self.settings = settings
        threads = settings.threads or physical_cores()
        try:
            self.llm: Any = Llama(
                model_path=str(self.path),
                n_ctx=settings.n_ctx,
                n_batch=max(512, settings.n_batch),
                n_ubatch=max(512, settings.n_batch),
                n_threads=threads,
                n_threads_batch=threads,
                seed=settings.seed,
                flash_attn=settings.flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelError(f"llama.cpp cannot load {self.path}: {exc}.") from exc
        except TemplateError as exc:  # llama-cpp-python compiles the GGUF's templates
            raise ModelError(template_parse_error(self.path.name, exc)) from exc
        try:
            self.template = ChatTemplate.from_llama(self.llm, self.path.name)
        except ModelError:
            self.llm.close()
            raise
        # Prompts are fitted to this: the context, or the one the model was trained for
        # when that is shorter (a model brought with `models add` may have 2,048 tokens).
        trained = int(self.llm._model.n_ctx_train())
        self.n_ctx: int = min(int(self.llm.n_ctx()), trained) if trained > 0 \
            else int(self.llm.n_ctx())
        self.threads = threads
        self.last_stats = GenerationStats()
        self._last_sequence: list[int] = []
        self._lock = threading.Lock()
        # llama.cpp asks its abort callback between two operations of a decode, so
        # interrupt() stops even the evaluation of a long prompt within milliseconds.
        import llama_cpp

        self._abort = threading.Event()
        self._abort_state = threading.Lock()  # orders interrupt() against a call's end
        self._in_call = False
        self._abort_flag = ctypes.create_string_buffer(2)  # [0] = 1: abort
        self._abort_callback = _flag_reader()  # kept alive: llama.cpp holds the pointer only
        llama_cpp.llama_set_abort_callback(self.llm._ctx.ctx, self._abort_callback,
                                           ctypes.cast(self._abort_flag, ctypes.c_void_p))

    # -- Generator protocol ----------------------------------------------------------------

    @property
    def id(self) -> str:
        """Registry id of the model."""
        return self._id

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes for this model (no BOS; special-token text counts as text)."""
        if not text:
            return 0
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt tokens of ``messages`` under the GGUF's chat template."""
        prompt, added_special = self.template(messages)
        return list(self.llm.tokenize(prompt.encode("utf-8"), add_bos=not added_special,
                                      special=True))

    def interrupt(self) -> None:
        """Stop the current :meth:`stream` from another thread, prompt evaluation included:
        it raises :class:`~appliance.errors.Interrupted` within milliseconds. The KV cache
        keeps what was evaluated before, so the next call reuses it. Without a call in
        progress, nothing happens."""
        with self._abort_state:
            if self._in_call:
                _llama_logs(quiet=True)  # "decode: removing memory module entries ...": expected
                self._abort.set()
                self._abort_flag[0] = b"\x01"

    @contextlib.contextmanager
    def _decoding(self) -> Iterator[None]:
        """Around one call's decodes (the lock held): a decode that :meth:`interrupt`
        stopped raises Interrupted, and the flag is reset for the next call."""
        with self._abort_state:
            self._clear_abort()
            self._in_call = True
        try:
            yield
        except RuntimeError as exc:  # llama_decode returned 2: the abort callback said so
            if self._abort.is_set():
                raise Interrupted("The model was stopped before it finished.") from exc
            raise
        finally:
            # Under the same lock as interrupt(): one that comes as the call ends either
            # stops this call or finds no call, never leaves the flag or the logs behind.
            with self._abort_state:
                self._in_call = False
                self._clear_abort()
                _llama_logs(quiet=False)

    def _clear_abort(self) -> None:
        self._abort_flag[0] = b"\x00"
        self._abort.clear()

    def stream(
        self, messages: list[dict[str, str]], max_tokens: int,
        first_token_bias: Mapping[str, float] | None = None,
    ) -> Iterator[str]:
        """Yield the answer's text pieces, greedy (or seeded) until end-of-sequence.

        ``first_token_bias`` (text -> logit offset) applies to the first token of each text,
        at the first generated position only. Raises InputError when the prompt leaves no
        room in the context window, and Interrupted after :meth:`interrupt`.
        """
        import llama_cpp

        with self._lock, self._decoding():
            t0 = time.perf_counter()
            stats = GenerationStats(finish_reason="aborted")
            self.last_stats = stats
            tokens = self.render(messages)
            stats.prompt_tokens = len(tokens)
            room = self.n_ctx - len(tokens)
            if room < 1:
                raise InputError(
                    f"The prompt takes {len(tokens)} tokens, more than the model's context of "
                    f"{self.n_ctx}; ask a shorter question or raise generate.n_ctx."
                )
            max_tokens = max(1, min(max_tokens, room))
            stats.cached_tokens = _common_prefix(self.llm, tokens)
            self.llm.set_seed(self.settings.seed)
            vocab = self.llm._model.vocab
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            generated: list[int] = []
            t_first = t_last = 0.0
            gen = self.llm.generate(
                tokens,
                temp=self.settings.temperature,
                top_k=TOP_K,
                top_p=TOP_P,
                min_p=MIN_P,
                repeat_penalty=REPEAT_PENALTY,
                logits_processor=self._first_token_processor(first_token_bias, len(tokens)),
            )
            try:
                for token in gen:
                    now = time.perf_counter()
                    if not generated and not t_first:
                        t_first = now
                    t_last = now
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        stats.finish_reason = "stop"
                        break
                    generated.append(token)
                    piece = decoder.decode(self.llm.detokenize([token]))
                    stats.completion_tokens = len(generated)
                    stats.first_token_s = t_first - t0
                    stats.generate_s = t_last - t_first
                    if piece:
                        yield piece
                    if len(generated) >= max_tokens:
                        stats.finish_reason = "length"
                        break
                tail = decoder.decode(b"", final=True)
                if tail:
                    yield tail
            finally:
                gen.close()
                self._last_sequence = tokens + generated
                stats.completion_tokens = len(generated)
                if t_first:
                    stats.first_token_s = t_first - t0
                    stats.generate_s = t_last - t_first
                stats.total_s = time.perf_counter() - t0

    def _first_token_processor(self, bias: Mapping[str, float] | None, prompt_len: int
                               ) -> Any:
        """A llama.cpp logits processor adding ``bias`` at the first generated position."""
        if not bias:
            return None
        import llama_cpp

        offsets: dict[int, float] = {}
        for text, value in bias.items():
            ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            if ids and value:
                offsets[ids[0]] = offsets.get(ids[0], 0.0) + float(value)
        if not offsets:
            return None

        def process(input_ids: Any, scores: Any) -> Any:
            if len(input_ids) == prompt_len:
                for token, value in offsets.items():
                    scores[token] += value
            return scores

        return llama_cpp.LogitsProcessorList([process])

    def complete_citation(self, n_sources: int, opener: str = " [") -> int | None:
        """The source number the model cites after the text of the last :meth:`stream`.

        For an answer that ended without a [n] marker: the model reads ``opener`` after its
        own answer and its most likely next token among the numbers ``1..n_sources`` is
        taken (constrained decoding of one token; the KV cache of the answer is reused, so
        this costs one small batch). None when there is nothing to continue.
        """
        if not self._last_sequence or n_sources < 1:
            return None
        with self._lock, self._decoding():
            choices: dict[int, int] = {}
            for n in range(1, n_sources + 1):
                ids = self.llm.tokenize(str(n).encode(), add_bos=False, special=False)
                if len(ids) == 1:
                    choices[n] = ids[0]
            if not choices:
                return None
            seq = self._last_sequence + list(
                self.llm.tokenize(opener.encode(), add_bos=False, special=False)
            )
            if len(seq) >= self.n_ctx:
                return None
            logits = self._next_logits(seq)
            return max(choices, key=lambda n: float(logits[choices[n]]))

    def next_token_logits(self, messages: list[dict[str, str]]) -> Any:
        """The logits (numpy, one per vocabulary entry) of the answer's first token for a
        chat ``messages`` list: what calibration scripts read, without generating."""
        with self._lock, self._decoding():
            self._last_sequence = []
            return self._next_logits(self.render(messages)).copy()

    def continuation_logprob(self, messages: list[dict[str, str]], continuation: str) -> float:
        """Mean log-probability per token of ``continuation`` as the assistant's reply to
        ``messages`` (teacher-forced, one decode; the cached prompt prefix is reused).

        Raises InputError when prompt and continuation do not fit the context window.
        """
        logprobs = self.continuation_logprobs(messages, continuation)
        return sum(lp for _, lp in logprobs) / len(logprobs)

    def continuation_logprobs(self, messages: list[dict[str, str]], continuation: str
                              ) -> list[tuple[str, float]]:
        """Each token of ``continuation`` (its text) with its log-probability as part of the
        assistant's reply to ``messages``: teacher-forced, one decode, the cached prompt
        prefix reused. Raises InputError when they do not fit the context window."""
        import numpy as np

        cont = list(self.llm.tokenize(continuation.encode("utf-8"), add_bos=False,
                                      special=False))
        if not cont:
            raise InputError("There is no text to score.")
        with self._lock, self._decoding():
            self._last_sequence = []
            prompt = self.render(messages)
            seq = prompt + cont
            if len(seq) >= self.n_ctx:
                raise InputError(
                    f"Scoring needs {len(seq)} tokens, more than the model's context of "
                    f"{self.n_ctx}; shorten the text or raise generate.n_ctx."
                )
            if len(cont) >= self.llm.n_batch:
                raise InputError(
                    f"The text to score takes {len(cont)} tokens; at most "
                    f"{self.llm.n_batch - 1} are scored in one pass, so shorten it."
                )
            self._prefill(prompt[:-1])
            # The last prompt token and the continuation but its last token, in one batch
            # with logits at every position: position i predicts cont[i].
            batch = [prompt[-1], *cont[:-1]]
            n_past = self.llm.n_tokens
            self.llm._batch.set_batch(batch=batch, n_past=n_past, logits_all=True)
            self.llm._ctx.decode(self.llm._batch)
            self.llm.input_ids[n_past:n_past + len(batch)] = batch
            self.llm.n_tokens = n_past + len(batch)
            n_vocab = self.llm.n_vocab()
            out: list[tuple[str, float]] = []
            for i, token in enumerate(cont):
                row = np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(i), shape=(n_vocab,))
                row = row.astype(np.float64)
                top = float(row.max())
                lp = float(row[token]) - top - float(np.log(np.exp(row - top).sum()))
                piece = self.llm.detokenize([token]).decode("utf-8", errors="replace")
                out.append((piece, lp))
            return out

    def _next_logits(self, seq: list[int]) -> Any:
        """Evaluate ``seq`` (reusing the cached prefix) and return the next token's logits."""
        import numpy as np

        self._prefill(seq)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.llm.n_vocab(),))

    def _prefill(self, seq: list[int]) -> None:
        """Bring the KV cache to ``seq``: keep its cached prefix, evaluate the rest (at least
        the last token, so its logits are fresh)."""
        keep = min(_common_prefix(self.llm, seq), len(seq) - 1)
        self.llm.n_tokens = keep
        self.llm.eval(seq[keep:])

    # -- lifetime ----------------------------------------------------------------------------

    def close(self) -> None:
        """Free the model and its context."""
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.close()
            self.llm = None

    def __repr__(self) -> str:
        return f"LlamaGenerator({self._id!r}, n_ctx={self.n_ctx}, threads={self.threads})"


def _flag_reader() -> Any:
    """An abort callback that reads a flag without running any Python.

    llama.cpp calls the callback after every operation of a decode (hundreds a token); a
    Python callback would need the GIL each time and wait up to 5 ms whenever another
    thread (the TUI's) runs Python, slowing generation many times over. libc's ``strlen``
    serves as the C predicate instead: on the two-byte flag buffer passed as its data it
    returns 1 once the first byte is set and 0 otherwise, which the ``bool`` return reads
    as abort / go on.
    """
    import ctypes.util

    import llama_cpp

    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    address = ctypes.cast(libc.strlen, ctypes.c_void_p).value
    if not address:  # pragma: no cover - every libc has strlen
        raise ModelError("libc's strlen was not found; llama.cpp cannot be interrupted.")
    return llama_cpp.ggml_abort_callback(address)


def _llama_logs(*, quiet: bool) -> None:
    """Silence llama.cpp's error log while a decode is aborted on purpose (it reports the
    rolled-back positions on stderr, which would also scribble over the TUI)."""
    import logging

    from llama_cpp._logger import logger

    logger.setLevel(logging.CRITICAL + 1 if quiet else logging.ERROR)


def _common_prefix(llm: Any, tokens: list[int]) -> int:
    """Tokens at the start of ``tokens`` already in the model's KV cache."""
    n = 0
    for a, b in zip(llm._input_ids.tolist(), tokens, strict=False):
        if a != b:
            break
        n += 1
    return min(n, max(0, len(tokens) - 1))


def load_llama(model_id: str, path: Path, settings: GenerateSettings) -> LlamaGenerator:
    """Load a GGUF file as a generator (no registry check: use ``load_generator`` for that)."""
    return LlamaGenerator(model_id, path, settings)
