"""The backend contract: what every model provider implements, and what it can honour."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest
from openvertex.protocol.generate_content import GenerateContentRequest, GenerateContentResponse

# Request fields beyond the common core, as native JSON paths: each is a 400 naming it unless the
# chosen backend lists it in Capabilities.optional_fields.
OPTIONAL_FIELDS = frozenset(
    {
        "generationConfig.routingConfig",
        "generationConfig.audioTimestamp",
        "generationConfig.speechConfig",
        "generationConfig.imageConfig",
        "generationConfig.modelConfig",
        "generationConfig.enableEnhancedCivicAnswers",
        "generationConfig.enableAffectiveDialog",
        "toolConfig.retrievalConfig",
        "toolConfig.includeServerSideToolInvocations",
        "modelArmorConfig",
        # The Live API's non-blocking functions.
        "functionDeclarations.behavior",
        "functionResponse.willContinue",
        "functionResponse.scheduling",
    }
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can honour; anything else in a request is a 400 naming the parameter."""

    function_calling: bool = False
    input_mime_prefixes: tuple[str, ...] = ()  # e.g. ("image/", "audio/") for a multimodal model
    # The backend reads gs:// and https:// media itself (Gemini on Vertex); else openvertex fetches
    # them and sends their bytes inline.
    reads_media_uris: bool = False
    thinking: bool = False
    output_modalities: frozenset[str] = frozenset({"TEXT"})
    response_mime_types: frozenset[str] | None = None  # None: any
    safety_filtering: bool = False
    cached_content: bool = False
    google_tools: frozenset[str] = frozenset()  # googleSearch, codeExecution, …
    max_candidates: int = 8
    # Output tokens when a request sets none (Gemini models each declare one).
    max_output_tokens: int | None = None
    # A model that writes (generateContent, chat completions); an embedding model does not.
    generation: bool = True
    # A model that embeds (embedContent, :predict, OpenAI embeddings), and the most it gives:
    # dimensions (None: the upstream decides) and tokens read from one text.
    embeddings: bool = False
    embedding_dimensions: int | None = None
    embedding_input_tokens: int | None = None
    embedding_token_ids: bool = False  # OpenAI's token-array inputs mean something to it (its own vocabulary)
    # The backend issues and checks its own thought signatures (Gemini); else openvertex does.
    thought_signatures: bool = False
    # Prompt tokens the model reads (None: not known), and the fewest a context cache may hold.
    input_token_limit: int | None = None
    min_cached_content_tokens: int = 1024
    # Request fields outside the common core that the backend honours, as native JSON paths
    # (`generationConfig.speechConfig`, …), of OPTIONAL_FIELDS.
    optional_fields: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RoleTokens:
    """The tokens of one turn of the prompt as the model reads it (computeTokens)."""

    role: str
    ids: list[int]
    pieces: list[bytes]


@dataclass(frozen=True, slots=True)
class BackendLoad:
    running: int = 0  # sequences being decoded
    waiting: int = 0  # requests admitted but not started
    tokens_generated: int = 0  # since start
    tokens_prefilled: int = 0  # prompt tokens computed since start (reused prefixes excluded)
    texts_embedded: int = 0  # since start
    # A backend that calls an upstream over HTTP: since start.
    upstream_requests: int = 0
    upstream_errors: int = 0  # requests that ended in an error (after retries)
    upstream_retries: int = 0
    upstream_seconds: float = 0.0  # summed until each answer's last byte
    # A backend decoding itself (local): its slots (sequences decoded at once), the tokens whose
    # KV its slots hold now, and how many they could hold. None: it has no such thing.
    slots: int | None = None
    kv_tokens: int | None = None
    kv_capacity: int | None = None
    # The bytes of its KV cache in memory now: pages of cells that hold nothing are given back
    # (local/kv_pages.py). None: not known (the cache not found, or no such cache).
    kv_resident_bytes: int | None = None
    # A model held in this process's memory (residency.py): whether it is now. None: no such model.
    model_state: Literal["unloaded", "loading", "loaded"] | None = None
    model_loads: int = 0  # since start


@dataclass(frozen=True, slots=True)
class CacheUsage:
    """What a backend keeps for context caches (the local engine's KV snapshots)."""

    count: int = 0  # context caches whose prefix it keeps
    bytes_memory: int = 0
    bytes_disk: int = 0


# Which of the context caches named still exist (the shared database says, for every replica).
LiveCaches = Callable[[Collection[str]], Awaitable[Collection[str]]]


class Backend(Protocol):
    @property
    def kind(self) -> str:
        """The backend's type, as the configuration names it (`local`, `gemini`, `fake`)."""
        ...

    @property
    def capabilities(self) -> Capabilities: ...

    def ready(self) -> bool:
        """True once the backend can answer (a local model is loaded)."""
        ...

    def load(self) -> BackendLoad:
        """What the backend is doing now, for /metrics."""
        ...

    def cache_usage(self) -> CacheUsage:
        """What the backend keeps for context caches, for /metrics and the console's status:
        cheap (no I/O but after the backend changed what it keeps)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def generate(self, request: GenerateContentRequest, *, model: str) -> GenerateContentResponse: ...

    def stream(self, request: GenerateContentRequest, *, model: str) -> AsyncGenerator[GenerateContentResponse, None]:
        """The answer chunk by chunk; closing the generator early (a client that left, a deadline,
        a blocked answer) stops the generation and frees what it held."""
        ...

    async def count_tokens(self, request: GenerateContentRequest, *, model: str) -> int:
        """The prompt's tokens as the model would read them."""
        ...

    async def compute_tokens(self, request: GenerateContentRequest, *, model: str) -> list[RoleTokens]: ...

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        """One embedding per text, in order; only where `capabilities.embeddings` says so."""
        ...

    async def cache_prefix(self, name: str, request: GenerateContentRequest, *, model: str, owner: str | None) -> None:
        """Get ready to reuse the context cache `name` (whose content `request` holds) as the
        prefix of later requests that name it in `cachedContent`. Called when the cache is made
        and before each use, so it must be cheap once done; a backend keeping no state for
        prefixes does nothing. `owner`: the key that made the cache; what a backend keeps for it
        is never shared with another key's (not even the time a lookup takes)."""
        ...

    async def forget_prefix(self, name: str, request: GenerateContentRequest, *, model: str, owner: str | None) -> None:
        """The context cache `name` (whose content `request` holds) was deleted or expired."""
        ...

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        """Let go of what is kept for context caches that no longer exist: `live` answers which of
        the names given still do (another replica may have deleted or expired the others). Called
        at start and on schedule on every replica; a backend keeping nothing does nothing."""
        ...


def reduce_dimensions(values: Sequence[float], dimensions: int | None) -> list[float]:
    """The first `dimensions` values, scaled back to unit length (Matryoshka truncation)."""
    kept = list(values if dimensions is None else values[:dimensions])
    norm = math.sqrt(math.fsum(v * v for v in kept))
    return [v / norm for v in kept] if norm > 0 else kept


# A candidate that ends for one of these (the safety stage's blocks) withdraws what it said before.
WITHDRAWN_REASONS = frozenset({"SAFETY", "BLOCKLIST"})


def merge_chunks(chunks: Iterable[GenerateContentResponse], *, join_text: bool = True) -> GenerateContentResponse:
    """Fold streamed chunks into one response shaped as Gemini answers whole: per candidate, its
    parts in order, and (`join_text`) runs of text parts with the same `thought` flag joined into
    one part carrying the run's signature; for the other fields the last value wins. A candidate
    that ends blocked by the safety stage keeps nothing it said. Without `join_text`, one chunk is
    the answer as it is (a backend's own whole answer keeps its shape)."""
    chunks = list(chunks)
    if len(chunks) == 1 and not join_text:
        return chunks[0]
    merged = GenerateContentResponse()
    candidates: dict[int, gc.Candidate] = {}
    for chunk in chunks:
        for position, candidate in enumerate(chunk.candidates or []):
            index = candidate.index_at(position)
            target = candidates.setdefault(index, gc.Candidate(index=index))
            _merge_candidate(target, candidate, join_text=join_text)
        merged.usage_metadata = chunk.usage_metadata or merged.usage_metadata
        merged.prompt_feedback = chunk.prompt_feedback or merged.prompt_feedback
        merged.response_id = chunk.response_id or merged.response_id
        merged.model_version = chunk.model_version or merged.model_version
        merged.create_time = chunk.create_time or merged.create_time
        for name, value in (chunk.model_extra or {}).items():  # modelStatus, …: the last wins
            setattr(merged, name, value)
    merged.candidates = [candidates[i] for i in sorted(candidates)] or None
    return merged


def _merge_candidate(target: gc.Candidate, candidate: gc.Candidate, *, join_text: bool) -> None:
    if candidate.finish_reason in WITHDRAWN_REASONS and candidate.content is None:
        target.content, target.logprobs_result, target.avg_logprobs, target.grounding_metadata = None, None, None, None
    if candidate.content is not None:
        if target.content is None:
            target.content = gc.Content(role=candidate.content.role or "model", parts=[])
        if join_text:
            _extend(target.content.parts, candidate.content.parts)
        else:
            target.content.parts.extend(candidate.content.parts)
    target.finish_reason = candidate.finish_reason or target.finish_reason
    target.finish_message = candidate.finish_message or target.finish_message
    target.safety_ratings = candidate.safety_ratings or target.safety_ratings
    target.grounding_metadata = candidate.grounding_metadata or target.grounding_metadata
    target.logprobs_result = _join_logprobs(target.logprobs_result, candidate.logprobs_result)
    target.avg_logprobs = candidate.avg_logprobs if candidate.avg_logprobs is not None else target.avg_logprobs
    for name, value in (candidate.model_extra or {}).items():  # citationMetadata, …: the last wins
        setattr(target, name, value)


def _extend(parts: list[gc.Part], more: Iterable[gc.Part]) -> None:
    for part in more:
        last = parts[-1] if parts else None
        if last is not None and _joins(last, part):
            parts[-1] = gc.Part(
                text=(last.text or "") + (part.text or ""),
                thought=last.thought or part.thought,
                thought_signature=last.thought_signature or part.thought_signature,
            )
        else:
            parts.append(part)


def _joins(last: gc.Part, part: gc.Part) -> bool:
    """Two text parts of one kind join, unless both are signed (spec §3.4: never combine two
    signed parts)."""
    return (
        _plain_text(last)
        and _plain_text(part)
        and bool(last.thought) == bool(part.thought)
        and not (last.thought_signature and part.thought_signature)
    )


def _plain_text(part: gc.Part) -> bool:
    return (
        part.text is not None
        and not part.model_extra
        and all(getattr(part, name) is None for name in _OTHER_PART_FIELDS)
    )


_OTHER_PART_FIELDS = tuple(set(gc.Part.model_fields) - {"text", "thought", "thought_signature"})


def _join_logprobs(a: gc.LogprobsResult | None, b: gc.LogprobsResult | None) -> gc.LogprobsResult | None:
    if a is None or b is None:
        return a or b
    return gc.LogprobsResult(
        chosen_candidates=(a.chosen_candidates or []) + (b.chosen_candidates or []),
        top_candidates=(a.top_candidates or []) + (b.top_candidates or []),
    )


async def collect_stream(stream: AsyncIterator[GenerateContentResponse]) -> GenerateContentResponse:
    return merge_chunks([chunk async for chunk in stream])
