"""Embedding wire types: the native `embedContent` / `batchEmbedContents` (both dialects), Vertex's
`:predict` for text-embedding models, and OpenAI's `embeddings`.

Sources: google-genai 3.6 (what it sends in each mode), google-cloud-aiplatform 2.7's
`EmbedContentRequest` (Vertex), google-ai-generativelanguage 0.12's (Gemini API), the spec's
response shapes (native-gemini.md: `:predict` answers `statistics.token_count` in snake_case).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from openvertex.protocol import enums
from openvertex.protocol.generate_content import Content, GeminiModel, enum_names

# Task types by name: both dialects' (the Gemini API's TaskType, Vertex's EmbeddingTaskType).
TASK_TYPES = (frozenset(enums.TASK_TYPE) | frozenset(enums.EMBEDDING_TASK_TYPE_VERTEX)) - {""}


# ---------------------------------------------------------------- inside: what every surface becomes


@dataclass(frozen=True, slots=True)
class EmbedText:
    """One text to embed, as every embedding surface becomes inside (Gemini's EmbedContentRequest):
    its text, or (OpenAI's token arrays) the model's token ids, and how to embed it."""

    text: str | None = None
    tokens: tuple[int, ...] | None = None
    task_type: str | None = None  # RETRIEVAL_QUERY, RETRIEVAL_DOCUMENT, … (None: unspecified)
    title: str | None = None  # a RETRIEVAL_DOCUMENT's title
    output_dimensionality: int | None = None  # None: the model's own
    auto_truncate: bool = True  # a text past the model's input limit is cut (else a 400)
    where: str = ""  # where the request holds it, for errors: `instances[2]`, `input[0]`, …


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    texts: tuple[EmbedText, ...]


@dataclass(frozen=True, slots=True)
class Embedding:
    values: list[float]
    token_count: int  # tokens the model read from the text (after any truncation)
    truncated: bool = False


# ---------------------------------------------------------------- native (embedContent)


class EmbedContentConfig(GeminiModel):
    """Vertex's `embedContentConfig` (google-genai sends the options here on Vertex)."""

    task_type: str | None = None
    title: str | None = None
    output_dimensionality: int | None = None
    auto_truncate: bool | None = None
    document_ocr: bool | None = None
    audio_track_extraction: bool | None = None

    _task = enum_names("task_type", table={"vertex": enums.EMBEDDING_TASK_TYPE_VERTEX, "gemini": enums.TASK_TYPE})


class EmbedContentRequest(GeminiModel):
    """One content to embed. The Gemini API has the options at the top level; Vertex has them in
    `embedContentConfig` (its top-level ones are deprecated but still read)."""

    model: str | None = None
    content: Content
    task_type: str | None = None
    title: str | None = None
    output_dimensionality: int | None = None
    auto_truncate: bool | None = None
    embed_content_config: EmbedContentConfig | None = None

    _task = enum_names("task_type", table={"vertex": enums.EMBEDDING_TASK_TYPE_VERTEX, "gemini": enums.TASK_TYPE})


class BatchEmbedContentsRequest(GeminiModel):
    requests: list[EmbedContentRequest]


class ContentEmbedding(GeminiModel):
    values: list[float]


class EmbedUsageMetadata(GeminiModel):
    prompt_token_count: int
    total_token_count: int


class EmbedContentResponse(GeminiModel):
    embedding: ContentEmbedding
    usage_metadata: EmbedUsageMetadata | None = None  # Vertex
    truncated: bool | None = None  # Vertex


class BatchEmbedContentsResponse(GeminiModel):
    embeddings: list[ContentEmbedding]
    usage_metadata: EmbedUsageMetadata | None = None  # Vertex


# ---------------------------------------------------------------- Vertex :predict (text-embedding-*)


class _Struct(BaseModel):
    """A prediction's instances and parameters are protobuf Structs: keys as written, no aliases."""

    model_config = ConfigDict(extra="forbid")


class EmbeddingInstance(_Struct):
    content: str
    task_type: str | None = None
    title: str | None = None
    mime_type: str | None = Field(None, alias="mimeType")


class EmbeddingParameters(_Struct):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    auto_truncate: bool = Field(True, alias="autoTruncate")
    output_dimensionality: int | None = Field(None, alias="outputDimensionality")


class EmbeddingPredictRequest(_Struct):
    instances: list[EmbeddingInstance]
    parameters: EmbeddingParameters | None = None


def predict_response(embeddings: list[tuple[list[float], int, bool]], billable_characters: int) -> dict[str, Any]:
    """`{predictions: [{embeddings: {values, statistics: {truncated, token_count}}}], metadata}`."""
    return {
        "predictions": [
            {"embeddings": {"values": values, "statistics": {"truncated": truncated, "token_count": tokens}}}
            for values, tokens, truncated in embeddings
        ],
        "metadata": {"billableCharacterCount": billable_characters},
    }


# ---------------------------------------------------------------- OpenAI embeddings


class OpenAIEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # unknown keys are ignored, as on chat completions

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    dimensions: int | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class OpenAIEmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIEmbeddingUsage
