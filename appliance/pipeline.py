"""Question → Answer: the one place that wires retrieval, prompting and generation.

Every front end (``ask``, ``batch``, the TUI, ``eval``) calls :func:`answer`, or
:class:`Pipeline`, which keeps the loaded models between questions.

Abstention has two signals (DESIGN.md, "Abstaining"):

1. Retrieval evidence. When the best hit's raw cosine similarity is below
   ``abstain_min_vector`` *and* its best bm25 relevance is below ``abstain_min_keyword``,
   nothing relevant was retrieved: the pipeline abstains without calling the model. Fused
   RRF scores cannot serve (the top hit scores about 1/61 for any query).
2. The model's verdict: the prompt asks for one fixed sentence when the sources lack the
   answer; :func:`appliance.generate.is_abstention` detects it.

Either way the record's ``answer`` is :data:`ABSTAIN_SENTENCE`, ``citations`` is empty and
``closest`` lists the nearest sources; ``flags`` says which signal fired.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from appliance.config import AnswerSettings, Settings
from appliance.errors import InputError
from appliance.files import require_utf8
from appliance.generate import (
    ABSTAIN_SENTENCE,
    ANSWER_REMINDER,
    BASE_SYSTEM_PROMPT,
    FINE_TUNED_MODES,
    MODES,
    RAG_SYSTEM_PROMPT,
    RETRIEVAL_MODES,
    Prompt,
    build_base_prompt,
    build_rag_prompt,
    default_mode,
    generator_id,
    is_abstention,
    resolve_citations,
    strip_citations,
)
from appliance.generate.citations import source_citation
from appliance.generate.prompt import PromptSource
from appliance.generate.repetition import RepetitionGuard
from appliance.retrieve import SearchResult
from appliance.store import has_content_words
from appliance.types import Answer, Citation, Generator, Hit, is_blank, strip_controls

if TYPE_CHECKING:
    from appliance.api import Appliance

__all__ = [
    "ABSTAIN_SENTENCE",
    "FINE_TUNED_MODES",
    "MODES",
    "RETRIEVAL_MODES",
    "AnswerSettings",
    "Pipeline",
    "Searcher",
    "answer",
    "checked_question",
    "question_id",
    "retrieval_abstains",
]

_T = TypeVar("_T")


class Searcher(Protocol):
    """What :func:`answer` needs of a retriever (``appliance.retrieve.Retriever`` fits)."""

    def search(self, query: str, *, k: int | None = None, rerank: bool | None = None
               ) -> SearchResult:
        """The best ``k`` hits for ``query`` (``rerank``: reorder them with the reranker)."""
        ...


def question_id(question: str) -> str:
    """A stable id for a question that came without one."""
    return "q-" + hashlib.sha256(question.strip().encode("utf-8")).hexdigest()[:10]


def _best(hits: Sequence[Hit], channel: str) -> float | None:
    values = [v for h in hits if (v := h.scores.get(channel)) is not None]
    return max(values) if values else None


def retrieval_abstains(hits: Sequence[Hit], config: AnswerSettings, question: str) -> bool:
    """Whether the retrieved hits carry too little evidence to be worth asking the model.

    Keyword matches on a ``question`` made only of common words ("the of and") are no
    evidence: any document has them.
    """
    if not hits:
        return True
    vector = _best(hits, "vector")
    keyword = _best(hits, "keyword")
    if keyword is not None and not has_content_words(question):
        keyword = 0.0
    if vector is not None and vector >= config.abstain_min_vector:
        return False
    if keyword is not None and keyword >= config.abstain_min_keyword:
        return False
    # A channel that was not searched (keyword- or vector-only mode) is no evidence against.
    return not (vector is None and keyword is None)


def _hit_citation(n: int, hit: Hit) -> Citation:
    return Citation(n=n, path=hit.path, heading=hit.heading, chunk_id=hit.chunk_id,
                    score=hit.score, page=hit.page)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def checked_question(question: str, config: AnswerSettings) -> str:
    """``question`` without control characters or surrounding blanks; InputError when
    nothing is left, when it is longer than ``config.max_question_chars`` or when it is not
    text (a byte that is not UTF-8). Front ends call it before loading a model."""
    if is_blank(question):
        raise InputError("The question is empty; type a question.")
    text = strip_controls(question).strip()
    if len(text) > config.max_question_chars:
        raise InputError(
            f"The question is {len(text):,} characters long, over the limit of "
            f"{config.max_question_chars:,} (answer.max_question_chars); ask a shorter one.")
    require_utf8(text, "question")  # the model's tokenizer and the answer record need it
    return text


def answer(
    question: str,
    *,
    generator: Generator,
    settings: Settings,
    retriever: Searcher | None = None,
    mode: str = "rag",
    id: str | None = None,
    on_token: Callable[[str], None] | None = None,
    config: AnswerSettings | None = None,
    system_prompt: str | None = None,
    reminder: str = ANSWER_REMINDER,
    examples: Sequence[dict[str, str]] = (),
) -> Answer:
    """Answer ``question`` in ``mode`` and return the Answer record of DESIGN.md.

    ``retriever`` is required for ``rag`` and ``hybrid``. ``on_token`` receives each
    generated text piece as it streams (nothing is streamed when retrieval evidence makes
    the pipeline abstain before generating). ``system_prompt`` overrides the mode's
    default, ``reminder`` the instruction after the question and ``examples`` worked turns
    placed before it (evaluation of prompt variants: ``scripts/tune_prompt.py``); keep them
    fixed across questions so llama.cpp reuses its KV cache.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise InputError(f"Unknown mode '{mode}'; use one of {', '.join(MODES)}.")
    config = config or settings.answer
    text = checked_question(question, config)
    timings = {"embed": 0.0, "search": 0.0, "prompt": 0.0, "generate": 0.0, "total": 0.0}
    record = Answer(
        id=id or question_id(text), question=text, answer="", abstained=False, citations=[],
        closest=[], mode=mode, model=generator.id, timings_ms=timings,
        tokens={"prompt": 0, "completion": 0}, tokens_per_s=0.0,
    )
    hits: list[Hit] = []
    if mode in RETRIEVAL_MODES:
        if retriever is None:
            raise InputError(f"Mode '{mode}' needs a knowledge base to retrieve from.")
        result = retriever.search(text, k=config.k, rerank=config.rerank)
        hits = result.hits
        timings["embed"] = round(result.timings_ms.get("embed", 0.0), 3)
        timings["search"] = round(
            result.timings_ms.get("search", 0.0) + result.timings_ms.get("rerank", 0.0), 3)
        if retrieval_abstains(hits, config, text):
            record.answer = ABSTAIN_SENTENCE
            record.abstained = True
            record.closest = [_hit_citation(i, h) for i, h in enumerate(hits[: config.closest], 1)]
            record.flags.append("abstained:retrieval" if hits else "abstained:no_hits")
            timings["total"] = _ms(time.perf_counter() - t0)
            return record

    t1 = time.perf_counter()
    n_ctx = int(getattr(generator, "n_ctx", settings.generate.n_ctx))
    max_tokens = settings.generate.max_tokens
    prompt: Prompt
    if mode in RETRIEVAL_MODES:
        prompt = build_rag_prompt(
            text, hits, count_tokens=generator.count_tokens, n_ctx=n_ctx,
            max_tokens=max_tokens, system_prompt=system_prompt or RAG_SYSTEM_PROMPT,
            reminder=reminder, examples=examples,
        )
        if prompt.dropped:
            record.flags.append(f"sources_dropped:{prompt.dropped}")
        if any(s.truncated for s in prompt.sources):
            record.flags.append("source_truncated")
    else:
        prompt = build_base_prompt(text, system_prompt=system_prompt or BASE_SYSTEM_PROMPT)
    t2 = time.perf_counter()
    timings["prompt"] = _ms(t2 - t1)

    pieces: list[str] = []
    guard = RepetitionGuard(settings.generate.loop_chars)
    bias = {ABSTAIN_SENTENCE: -config.abstain_margin} if config.abstain_margin else None
    stream = generator.stream(prompt.messages, max_tokens, first_token_bias=bias)
    for piece in stream:
        pieces.append(piece)
        if on_token is not None:
            on_token(piece)
        if guard.feed(piece):
            close = getattr(stream, "close", None)
            if callable(close):
                close()
            record.flags.append("stopped:loop")
            break
    t3 = time.perf_counter()
    timings["generate"] = _ms(t3 - t2)
    generated = guard.text().strip()

    stats: Any = getattr(generator, "last_stats", None)
    if stats is not None and hasattr(stats, "completion_tokens"):
        record.tokens = {"prompt": int(stats.prompt_tokens),
                         "completion": int(stats.completion_tokens)}
        record.tokens_per_s = round(float(stats.tokens_per_s), 2)
        if getattr(stats, "finish_reason", "") == "length":
            record.flags.append("max_tokens")
    else:
        completion = generator.count_tokens(generated)
        record.tokens = {"prompt": prompt.tokens, "completion": completion}
        seconds = t3 - t2
        record.tokens_per_s = round(completion / seconds, 2) if seconds > 0 else 0.0

    if (config.complete_citations and prompt.sources and not is_abstention(generated)
            and not resolve_citations(generated, prompt.sources)[0]):
        complete: Any = getattr(generator, "complete_citation", None)
        n = complete(len(prompt.sources)) if callable(complete) else None
        if n is not None:
            generated = f"{generated} [{n}]"
            record.flags.append("citation:completed")
            if on_token is not None:
                streamed = pieces[-1] if pieces else ""
                on_token(f"[{n}]" if streamed[-1:].isspace() else f" [{n}]")
        timings["generate"] = _ms(time.perf_counter() - t2)
    _finish(record, generated, prompt.sources, config, mode)
    timings["total"] = _ms(time.perf_counter() - t0)
    return record


def _finish(
    record: Answer, generated: str, sources: Sequence[PromptSource], config: AnswerSettings,
    mode: str,
) -> None:
    """Fill answer, abstained, citations, closest and flags from the generated text.

    An answer with no words besides [n] markers (small models sometimes reply "[1]") says
    nothing: it is recorded as an abstention (flag ``abstained:empty``) with the sources as
    ``closest``.
    """
    empty = not any(ch.isalnum() for ch in strip_citations(generated))
    if empty or is_abstention(generated):
        record.answer = ABSTAIN_SENTENCE
        record.abstained = True
        record.closest = [source_citation(s) for s in sources[: config.closest]]
        record.flags.append("abstained:empty" if empty else "abstained:model")
        return
    record.answer = generated
    citations, flags = resolve_citations(generated, sources)
    record.citations = citations
    record.flags.extend(flags)
    if mode in RETRIEVAL_MODES and not citations:
        record.flags.append("no_citation")


class _Recording:
    """A searcher that keeps the hits of its last search."""

    def __init__(self, inner: Searcher) -> None:
        self.inner = inner
        self.hits: list[Hit] | None = None

    def search(self, query: str, *, k: int | None = None, rerank: bool | None = None
               ) -> SearchResult:
        result = self.inner.search(query, k=k, rerank=rerank)
        self.hits = list(result.hits)
        return result


class Pipeline:
    """Loaded models and open knowledge bases for many questions (one load each).

    ``app`` supplies the settings, the registry and retrievers (:class:`appliance.api.
    Appliance`). ``loader`` turns a registry id into a generator; by default it loads the
    GGUF through the registry (hash-checked). Generators are kept per model id.
    """

    def __init__(
        self,
        app: Appliance,
        *,
        config: AnswerSettings | None = None,
        loader: Callable[[str], Generator] | None = None,
    ) -> None:
        self.app = app
        self.config = config or app.settings.answer
        self._loader = loader
        self._generators: dict[str, Generator] = {}
        self.loads = 0
        """How many models this pipeline has loaded (one per distinct model id)."""
        self.last_hits: list[Hit] | None = None
        """Every hit retrieved for the last question, in rank order (source ``n`` is
        ``last_hits[n - 1]``), with per-channel scores; None after a mode without retrieval."""

    @property
    def default_mode(self) -> str:
        """``hybrid`` once a fine-tuned model ships with the install, else ``rag``."""
        return default_mode(self.app.registry)

    def model_id(self, mode: str, model: str | None = None) -> str:
        """The registry id that answers in ``mode`` (``model`` when given)."""
        return generator_id(self.app.registry, self.app.settings, mode, model)

    def model_margin(self, model_id: str) -> float:
        """The abstention margin calibrated for ``model_id`` (its registry entry's
        ``abstain_margin``; 0 for a model without one)."""
        if model_id not in self.app.registry:
            return 0.0
        value = self.app.registry.get(model_id).extra.get("abstain_margin", 0.0)
        return float(value) if isinstance(value, (int, float)) else 0.0

    def generator(self, mode: str = "rag", model: str | None = None) -> Generator:
        """The generator for ``mode``/``model``, loaded on first use and kept."""
        model_id = self.model_id(mode, model)
        gen = self._generators.get(model_id)
        if gen is None:
            if self._loader is not None:
                gen = self._loader(model_id)
            else:
                from appliance.generate import load_generator

                gen = load_generator(self.app.settings, self.app.registry, model_id)
            self._generators[model_id] = gen
            self.loads += 1
        return gen

    def ask(
        self,
        question: str,
        *,
        kb: str = "default",
        mode: str | None = None,
        model: str | None = None,
        id: str | None = None,
        on_token: Callable[[str], None] | None = None,
        system_prompt: str | None = None,
    ) -> Answer:
        """Answer one question; see :func:`answer` (``system_prompt``: a prompt variant).

        Called from the main thread, the answer is computed in a worker thread, so that
        Ctrl+C reaches Python at once (not after llama.cpp's current decode, seconds into a
        long prompt): it interrupts the model and is raised again when the worker stops.
        """
        return _interruptibly(lambda: self._ask(
            question, kb=kb, mode=mode, model=model, id=id, on_token=on_token,
            system_prompt=system_prompt), self.interrupt)

    def _ask(
        self,
        question: str,
        *,
        kb: str,
        mode: str | None,
        model: str | None,
        id: str | None,
        on_token: Callable[[str], None] | None,
        system_prompt: str | None,
    ) -> Answer:
        mode = mode or self.default_mode
        if mode not in MODES:
            raise InputError(f"Unknown mode '{mode}'; use one of {', '.join(MODES)}.")
        checked_question(question, self.config)  # before loading a model for it
        generator = self.generator(mode, model)
        config = self.config
        if config.abstain_margin is None:
            config = config.model_copy(update={"abstain_margin": self.model_margin(generator.id)})
        self.last_hits = None
        retriever = _Recording(self.app.retriever(kb)) if mode in RETRIEVAL_MODES else None
        record = answer(
            question, generator=generator, settings=self.app.settings, retriever=retriever,
            mode=mode, id=id, on_token=on_token, config=config, system_prompt=system_prompt,
        )
        if retriever is not None:
            self.last_hits = retriever.hits
        return record

    def interrupt(self) -> None:
        """Stop the answer being generated, from another thread (Esc in the TUI): the
        ``ask`` in progress raises :class:`~appliance.errors.Interrupted`, even while the
        model still reads the prompt."""
        for gen in list(self._generators.values()):
            stop = getattr(gen, "interrupt", None)
            if callable(stop):
                stop()

    def close(self) -> None:
        """Free the loaded models."""
        for gen in self._generators.values():
            close = getattr(gen, "close", None)
            if callable(close):
                close()
        self._generators.clear()


def _interruptibly(call: Callable[[], _T], interrupt: Callable[[], None]) -> _T:
    """``call()``, in a worker thread when this is the main thread: Ctrl+C then calls
    ``interrupt`` at once, waits for the worker to stop and raises KeyboardInterrupt.

    The wait is on an Event, not ``Thread.join``: a join that Ctrl+C interrupts can mark
    the thread finished while it still runs (CPython's bpo-45274 handling), and the caller
    would then free a model the worker is using.
    """
    if threading.current_thread() is not threading.main_thread():
        return call()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the calling thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="appliance-answer", daemon=True).start()
    try:
        while not done.wait(0.05):
            pass
    except KeyboardInterrupt:
        # Again and again: a worker still loading the model or searching starts decoding
        # later, and is stopped then. A second Ctrl+C must not leave the worker running
        # under a caller that frees its model.
        while not done.is_set():
            try:
                interrupt()
                done.wait(0.05)
            except KeyboardInterrupt:
                pass
        raise
    if "error" in outcome:
        raise outcome["error"]
    return cast(_T, outcome["value"])
