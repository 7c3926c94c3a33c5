"""Typed settings: the one source of truth for defaults, limits and locations.

Settings come, in increasing priority, from the defaults below, ``config.toml`` in the data
directory, and environment variables ``APPLIANCE_<SECTION>__<FIELD>`` (for example
``APPLIANCE_INGEST__MAX_FILE_BYTES=1000000``). The data directory itself is
``$APPLIANCE_HOME`` when set, else the platform's user data directory. CLI help texts and
defaults are derived from the field descriptions here.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from appliance.errors import ConfigError
from appliance.files import is_new

__all__ = [
    "AnswerSettings",
    "EmbedSettings",
    "GenerateSettings",
    "IngestSettings",
    "RetrieveSettings",
    "SettingRow",
    "Settings",
    "StoreSettings",
    "cache_dir",
    "data_dir",
    "explain_settings",
    "load_settings",
    "packaged_models_dir",
    "validate_kb_name",
]

_KB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole name: fullmatch


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class IngestSettings(_Section):
    """How documents are read and cut into chunks."""

    chunk_tokens: int = Field(
        256, ge=32, le=512,
        description="Largest chunk in embedder tokens, heading included (the embedder's window).",
    )
    chunk_overlap: int = Field(
        32, ge=0, le=128, description="Tokens shared by consecutive chunks of one section."
    )
    max_file_bytes: int = Field(
        25 * 1024 * 1024, ge=1, description="Files larger than this are skipped."
    )
    max_pages: int = Field(2000, ge=1, description="PDFs with more pages are skipped.")
    max_decompressed_bytes: int = Field(
        200 * 1024 * 1024, ge=1,
        description="Largest total uncompressed size of a .docx (zip) archive.",
    )
    max_seconds: float = Field(
        60.0, gt=0, description="Time limit for reading one document; slower ones are skipped."
    )
    max_memory_bytes: int = Field(
        2 * 1024 * 1024 * 1024, ge=64 * 1024 * 1024,
        description="Address-space limit of the process that parses documents.",
    )
    extensions: list[str] = Field(
        default_factory=lambda: [
            ".txt", ".md", ".markdown", ".rst", ".html", ".htm", ".pdf", ".docx"
        ],
        description="File extensions that ingest reads when given a folder.",
    )


class EmbedSettings(_Section):
    """The ONNX embedder."""

    model: str = Field("minilm-l6-v2-int8", description="Registry id of the embedder.")
    batch_size: int = Field(32, ge=1, le=1024, description="Texts embedded per ONNX call.")
    max_tokens: int = Field(256, ge=16, le=512, description="Truncation length in tokens.")
    threads: int = Field(0, ge=0, le=256, description="onnxruntime intra-op threads (0: "
                         "physical cores; at most 256: thousands of threads never finish).")


class StoreSettings(_Section):
    """The SQLite knowledge base."""

    busy_timeout_ms: int = Field(
        60_000, ge=0, description="How long a writer waits for another writer to finish."
    )


class RetrieveSettings(_Section):
    """Hybrid retrieval: vector KNN and FTS5 keyword search, fused.

    ``score`` fusion (the default) ranks candidates by
    ``(vector_weight * cosine + keyword_weight * bm25 / best bm25 + proximity_weight *
    proximity) / (vector_weight + keyword_weight + proximity_weight)``, with the exact
    cosine of every candidate; proximity is the share of the query's consecutive content
    words (stemmed, common words dropped) that the chunk has within ``proximity_window``
    tokens of each other. ``rrf`` is weighted reciprocal rank fusion (no proximity). The
    weights were chosen on the SQuAD development split (scripts/bench_retrieval.py
    --grid): score fusion beats RRF and each channel alone at top-1 and top-5, and the
    proximity term (with the keyword weight halved) raised hybrid hit@1 / hit@5 there from
    0.865 / 0.969 to 0.888 / 0.976 for well under a millisecond a query.
    """

    k: int = Field(5, ge=1, le=100, description="Hits returned.")
    candidates: int = Field(
        20, ge=1, le=1000, description="Candidates taken from each channel before fusion."
    )
    fusion: Literal["score", "rrf"] = Field(
        "score", description="How hybrid search fuses the channels: 'score' or 'rrf'."
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant (rrf fusion).")
    vector_weight: float = Field(1.0, ge=0, description="Weight of the vector channel in fusion.")
    keyword_weight: float = Field(0.5, ge=0, description="Weight of the keyword channel in fusion.")
    proximity_weight: float = Field(
        0.5, ge=0, description="Weight of query-word proximity in score fusion (0 turns it "
        "off): rewards chunks where the query's consecutive content words occur close "
        "together, as in a sentence the query paraphrases.",
    )
    proximity_window: int = Field(
        3, ge=1, le=50, description="Tokens two query words may lie apart and still count "
        "as near each other (proximity_weight).",
    )
    mode: Literal["hybrid", "vector", "keyword"] = Field(
        "hybrid", description="Default search mode."
    )
    rerank: bool = Field(
        False, description="Rerank search's best fused candidates by how likely a small "
        "language model finds the query as a question about each (more right first hits on "
        "question-style queries; about 0.7 s per candidate on 2 cores). Answers follow "
        "answer.rerank instead.",
    )
    rerank_model: str = Field(
        "smollm2-135m-instruct-q4_1", description="Registry id of the GGUF model that scores "
        "candidates when rerank is on.",
    )
    rerank_depth: int = Field(
        5, ge=2, le=50, description="Fused candidates the reranker scores (at least k are "
        "returned either way).",
    )
    rerank_weight: float = Field(
        0.4, ge=0, description="Weight of the reranker's score (mean log-probability per "
        "query token) added to the fused score.",
    )
    keyword_max_share: float = Field(
        0.1, gt=0, le=1, description="Above prefilter_from chunks, keyword queries without a "
        "collection or path filter leave out words found in more than this share of the "
        "chunks (all are kept when no found word is rarer): bm25 weighs them little but "
        "scores every row they are in. 1.0 keeps every word.",
    )
    concurrent_channels: bool = Field(
        True, description="In hybrid search, run the keyword channel on a second, read-only "
        "connection while the query is embedded and the vector channel searched (the "
        "results are the same; on 2 cores at 100k chunks it takes about 30 % off the p50 "
        "and p95). Off runs the channels one after the other on one connection.",
    )
    prefilter_from: int = Field(
        20_000, ge=0,
        description="Above this many chunks, vector search prefilters by binary codes, "
        "then rescores with the float vectors, and keyword search leaves out words as "
        "keyword_max_share says.",
    )
    oversample: int = Field(
        4, ge=1, le=64, description="Binary-prefilter candidates per hit wanted."
    )


class AnswerSettings(_Section):
    """How answers are assembled (calibrated on the SQuAD dev split; see README)."""

    k: int = Field(3, ge=1, le=20, description="Sources retrieved for the prompt (the answer "
                   "is in the top 3 for 94.6% of answerable SQuAD dev questions; fewer "
                   "sources halve prompt evaluation and distract small models less).")
    abstain_min_vector: float = Field(
        0.31, description="Abstain without calling the model when the best hit's cosine is "
        "below this and its bm25 is below abstain_min_keyword (scripts/"
        "calibrate_abstention.py on the SQuAD dev split).",
    )
    abstain_min_keyword: float = Field(
        8.0, description="bm25 relevance that counts as keyword evidence on its own."
    )
    closest: int = Field(3, ge=0, le=20, description="Sources listed when abstaining.")
    rerank: bool = Field(
        False, description="Rerank an answer's sources (retrieve.rerank_model and friends). "
        "Off: on the SQuAD test sample it put the answer's passage first more often but "
        "lowered rag F1 from 0.40 to 0.31 and added 3 s a question (README).",
    )
    complete_citations: bool = Field(
        True, description="When an answer cites nothing, let the model pick its source [n] "
        "(one constrained token after ' ['; flagged citation:completed)."
    )
    abstain_margin: float | None = Field(
        None, description="Nats by which the model's first token must prefer the abstention "
        "sentence over its best answer token for it to abstain (greedy decoding with the "
        "abstention's first token lowered by this much). None: the answering model's own "
        "calibrated value from the registry (0 when it has none).",
    )
    max_question_chars: int = Field(
        4000, ge=64, description="Longest question accepted, in characters: a longer one is "
        "refused with a clear error (in a batch, that row fails) instead of being answered "
        "from a truncated query.",
    )


class GenerateSettings(_Section):
    """llama.cpp generation."""

    model: str = Field("", description="Default answer model id (empty: the registry's default).")
    n_ctx: int = Field(4096, ge=512, description="Context window in tokens.")
    n_batch: int = Field(512, ge=64, description="Prompt evaluation batch size.")
    max_tokens: int = Field(256, ge=1, description="Most tokens generated per answer.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature (0: greedy).")
    loop_chars: int = Field(100, ge=0, description="Stop an answer once its last N characters "
                            "repeat earlier text of it (a loop), and cut the repeat; 0: never.")
    seed: int = Field(0, description="Sampling seed.")
    threads: int = Field(0, ge=0, le=256, description="Generation threads (0: physical cores; "
                         "at most 256: thousands of threads never finish).")
    flash_attn: bool = Field(False, description="llama.cpp flash attention: 8-12 % less "
                             "time to first token on 2 cores (scripts/bench_generate.py "
                             "--compare-flash-attn), but greedy answers can be worded "
                             "differently, and the measured quality is without it.")


class Settings(_Section):
    """All settings, by section."""

    home: Path = Field(description="Data directory: knowledge bases, feedback, user models.")
    ingest: IngestSettings = Field(default_factory=IngestSettings)  # type: ignore[arg-type]
    embed: EmbedSettings = Field(default_factory=EmbedSettings)  # type: ignore[arg-type]
    store: StoreSettings = Field(default_factory=StoreSettings)  # type: ignore[arg-type]
    retrieve: RetrieveSettings = Field(default_factory=RetrieveSettings)  # type: ignore[arg-type]
    generate: GenerateSettings = Field(default_factory=GenerateSettings)  # type: ignore[arg-type]
    answer: AnswerSettings = Field(default_factory=AnswerSettings)  # type: ignore[arg-type]

    @field_validator("home")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def kb_dir(self) -> Path:
        """Folder holding one ``NAME.sqlite`` file per knowledge base."""
        return self.home / "kb"

    def kb_path(self, name: str) -> Path:
        """Path of the knowledge base called ``name``."""
        return self.kb_dir / f"{validate_kb_name(name)}.sqlite"

    @property
    def user_models_dir(self) -> Path:
        """Folder of models that ``appliance train`` and ``appliance models add`` register."""
        return self.home / "models"


def validate_kb_name(name: str) -> str:
    """Return ``name`` if it is a valid knowledge-base name, else raise InputError."""
    if not _KB_NAME.fullmatch(name):  # match() with "$" let "name\n" through
        from appliance.errors import InputError

        raise InputError(
            f"'{name}' is not a valid knowledge base name: use letters, digits, '.', '_' or '-' "
            "(at most 64, starting with a letter or digit)."
        )
    return name


def data_dir() -> Path:
    """The data directory: ``$APPLIANCE_HOME``, else the platform's user data directory."""
    env = os.environ.get("APPLIANCE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return Path(platformdirs.user_data_dir("appliance", appauthor=False))


def cache_dir() -> Path:
    """The per-user build cache: ``$APPLIANCE_CACHE``, else ``$XDG_CACHE_HOME/appliance``,
    else ``~/.cache/appliance`` (what ``scripts/setup.sh`` fills)."""
    env = os.environ.get("APPLIANCE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "appliance"


def packaged_models_dir() -> Path:
    """Folder of the packaged model manifest and files.

    ``$APPLIANCE_MODELS_DIR`` when set; else ``models/`` beside the package (a checkout, or
    an install prefix laid out by the bundle installer).
    """
    env = os.environ.get("APPLIANCE_MODELS_DIR")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "models", here / "_models"):
        if (candidate / "manifest.toml").is_file():
            return candidate
    return here.parent / "models"


def _env_overrides() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in os.environ.items():
        if not key.startswith("APPLIANCE_") or "__" not in key:
            continue
        section, _, field = key[len("APPLIANCE_"):].lower().partition("__")
        parsed: Any = value
        if value.startswith("[") and value.endswith("]"):
            parsed = [v.strip() for v in value[1:-1].split(",") if v.strip()]
        out.setdefault(section, {})[field] = parsed
    return out


def _config_file(cfg: Path) -> dict[str, Any]:
    """The settings ``config.toml`` holds (none when it does not exist)."""
    if not cfg.is_file():
        return {}
    try:
        return tomllib.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read {cfg}: {exc}; fix or remove the file.") from exc


def load_settings(home: Path | None = None, **overrides: dict[str, Any]) -> Settings:
    """Build the settings from defaults, ``config.toml``, the environment and ``overrides``.

    ``overrides`` maps a section name to field values, e.g. ``ingest={"chunk_tokens": 128}``.
    """
    base = Path(home).expanduser().resolve() if home else data_dir()
    if base.exists() and not base.is_dir():
        raise ConfigError(f"The data directory {base} is a file, not a folder; point "
                          "APPLIANCE_HOME at a folder.")
    is_new(base, "point APPLIANCE_HOME at a folder.", ConfigError)
    cfg = base / "config.toml"
    raw = _config_file(cfg)
    for layer in (_env_overrides(), overrides):
        for section, values in layer.items():
            if isinstance(values, dict):
                if not isinstance(raw.setdefault(section, {}), dict):
                    raise ConfigError(
                        f"Setting '{section}' in {cfg} is not a [{section}] table, so no "
                        f"{section} setting (APPLIANCE_{section.upper()}__* or an option) can "
                        f"be added to it; write it as a [{section}] table of settings.")
                raw[section].update(values)
    raw["home"] = base
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"Setting '{where}' is invalid: {first['msg']} (check {cfg} and APPLIANCE_* variables)."
        ) from exc


@dataclass(frozen=True)
class SettingRow:
    """One setting as it is in force: what ``appliance config`` prints."""

    key: str
    """``section.field``, as in ``config.toml``; ``APPLIANCE_SECTION__FIELD`` sets it too."""
    value: Any
    default: Any
    source: str
    """``default``, ``config.toml`` or the environment variable that set it."""
    description: str

    def to_json(self) -> dict[str, Any]:
        """The row as JSON-ready data (paths as text)."""
        def plain(v: Any) -> Any:
            return str(v) if isinstance(v, Path) else v
        return {"key": self.key, "value": plain(self.value), "default": plain(self.default),
                "source": self.source, "description": self.description}


def explain_settings(settings: Settings) -> list[SettingRow]:
    """Every setting of ``settings`` with its default, its description and where its value
    came from: an ``APPLIANCE_<SECTION>__<FIELD>`` variable, ``config.toml`` in the data
    directory, or the default (the layers of :func:`load_settings`, read the same way;
    overrides passed to it in code are not told apart from the layer below them)."""
    raw = _config_file(settings.home / "config.toml")
    env = _env_overrides()
    rows: list[SettingRow] = []
    for section in Settings.model_fields:
        model = getattr(settings, section)
        if not isinstance(model, _Section):
            continue
        table = raw.get(section)
        from_file: dict[str, Any] = table if isinstance(table, dict) else {}
        for name, field in type(model).model_fields.items():
            if name in env.get(section, {}):
                source = f"APPLIANCE_{section.upper()}__{name.upper()}"
            else:
                source = "config.toml" if name in from_file else "default"
            rows.append(SettingRow(
                key=f"{section}.{name}", value=getattr(model, name),
                default=field.get_default(call_default_factory=True), source=source,
                description=field.description or ""))
    return rows
