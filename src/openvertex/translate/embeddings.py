"""Embedding requests from each surface into `EmbedRequest`, and embeddings back out: pure.

A surface's option names differ (`outputDimensionality`, `parameters.outputDimensionality`,
`dimensions`); each error names the one its request used.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import embeddings as em
from openvertex.protocol.embeddings import Embedding, EmbedRequest, EmbedText
from openvertex.protocol.generate_content import Content, Dialect

_UNSPECIFIED = frozenset({"TASK_TYPE_UNSPECIFIED", "UNSPECIFIED"})


@dataclass(frozen=True, slots=True)
class EmbeddingLimits:
    """What a request may ask of one embedding model."""

    dimensions: int | None  # the most it gives (None: the upstream judges)
    max_texts: int  # per request
    max_text_bytes: int  # per text, before tokenising
    token_arrays: bool  # whether token ids (OpenAI's array inputs) mean anything to it


def _task_type(name: str | None, param: str) -> str | None:
    if name is None or name in _UNSPECIFIED:
        return None
    if name not in em.TASK_TYPES:
        known = ", ".join(sorted(em.TASK_TYPES - _UNSPECIFIED))
        raise InvalidArgumentError(f"unknown task type {name[:64]!r}; one of {known}", param=param)
    return name


def _title(title: str | None, task_type: str | None, param: str) -> str | None:
    if title is not None and task_type != "RETRIEVAL_DOCUMENT":
        raise InvalidArgumentError("a title is only valid with the RETRIEVAL_DOCUMENT task type", param=param)
    return title or None


def _dimensions(value: int | None, limits: EmbeddingLimits, param: str) -> int | None:
    if value is None:
        return None
    if value < 1 or (limits.dimensions is not None and value > limits.dimensions):
        most = f"at most {limits.dimensions}" if limits.dimensions is not None else "positive"
        raise InvalidArgumentError(f"{value} dimensions cannot be given; this model's must be {most}", param=param)
    return value


def _text(text: str, limits: EmbeddingLimits, param: str) -> str:
    if not text.strip():
        raise InvalidArgumentError("the text to embed is empty", param=param)
    if len(text.encode()) > limits.max_text_bytes:
        raise InvalidArgumentError(f"longer than {limits.max_text_bytes} bytes", param=param)
    return text


def _count(count: int, limits: EmbeddingLimits, param: str) -> None:
    if count == 0:
        raise InvalidArgumentError("nothing to embed", param=param)
    if count > limits.max_texts:
        raise InvalidArgumentError(f"{count} texts; at most {limits.max_texts} per request", param=param)


# ---------------------------------------------------------------- native


def _content_text(content: Content, limits: EmbeddingLimits, param: str) -> str:
    texts: list[str] = []
    for i, part in enumerate(content.parts):
        if part.text is None or any(
            value is not None for name, value in part if name not in ("text", "thought_signature")
        ):
            raise InvalidArgumentError("this model embeds text only", param=f"{param}.parts[{i}]")
        texts.append(part.text)
    return _text("\n".join(texts), limits, param)


def _native_text(
    body: em.EmbedContentRequest, model: str, dialect: Dialect, limits: EmbeddingLimits, where: str
) -> EmbedText:
    prefix = f"{where}." if where else ""
    config = body.embed_content_config
    if config is not None:
        for name in ("document_ocr", "audio_track_extraction"):
            if getattr(config, name):
                field = "documentOcr" if name == "document_ocr" else "audioTrackExtraction"
                raise InvalidArgumentError("this model embeds text only", param=f"{prefix}embedContentConfig.{field}")
    scope = f"{prefix}embedContentConfig." if config is not None else prefix

    def option(name: str) -> Any:
        value = getattr(config, name) if config is not None else None
        return value if value is not None else getattr(body, name)

    if body.model is not None and body.model.rpartition("/")[2] != model.rpartition("/")[2]:
        raise InvalidArgumentError(
            f"names the model {body.model[:128]!r}, not the one in the URL ({model})", param=f"{prefix}model"
        )
    task_type = _task_type(option("task_type"), f"{scope}taskType")
    auto_truncate = option("auto_truncate")
    return EmbedText(
        text=_content_text(body.content, limits, f"{prefix}content"),
        task_type=task_type,
        title=_title(option("title"), task_type, f"{scope}title"),
        output_dimensionality=_dimensions(option("output_dimensionality"), limits, f"{scope}outputDimensionality"),
        auto_truncate=True if auto_truncate is None else auto_truncate,
        where=where,
    )


def embed_content_request(
    body: em.EmbedContentRequest, model: str, dialect: Dialect, limits: EmbeddingLimits
) -> EmbedRequest:
    return EmbedRequest((_native_text(body, model, dialect, limits, ""),))


def batch_embed_contents_request(
    body: em.BatchEmbedContentsRequest, model: str, dialect: Dialect, limits: EmbeddingLimits
) -> EmbedRequest:
    _count(len(body.requests), limits, "requests")
    return EmbedRequest(
        tuple(
            _native_text(request, model, dialect, limits, f"requests[{i}]") for i, request in enumerate(body.requests)
        )
    )


def _usage(embeddings: Sequence[Embedding]) -> em.EmbedUsageMetadata:
    tokens = sum(embedding.token_count for embedding in embeddings)
    return em.EmbedUsageMetadata(prompt_token_count=tokens, total_token_count=tokens)


def embed_content_response(embedding: Embedding, dialect: Dialect) -> em.EmbedContentResponse:
    values = em.ContentEmbedding(values=embedding.values)
    if dialect == "gemini":
        return em.EmbedContentResponse(embedding=values)
    return em.EmbedContentResponse(embedding=values, usage_metadata=_usage([embedding]), truncated=embedding.truncated)


def batch_embed_contents_response(embeddings: Sequence[Embedding], dialect: Dialect) -> em.BatchEmbedContentsResponse:
    values = [em.ContentEmbedding(values=embedding.values) for embedding in embeddings]
    if dialect == "gemini":
        return em.BatchEmbedContentsResponse(embeddings=values)
    return em.BatchEmbedContentsResponse(embeddings=values, usage_metadata=_usage(embeddings))


# ---------------------------------------------------------------- Vertex :predict


def predict_request(body: em.EmbeddingPredictRequest, limits: EmbeddingLimits) -> EmbedRequest:
    _count(len(body.instances), limits, "instances")
    parameters = body.parameters or em.EmbeddingParameters()
    dimensions = _dimensions(parameters.output_dimensionality, limits, "parameters.outputDimensionality")
    texts = []
    for i, instance in enumerate(body.instances):
        where = f"instances[{i}]"
        if instance.mime_type is not None and not instance.mime_type.startswith("text/"):
            raise InvalidArgumentError("this model embeds text only", param=f"{where}.mimeType")
        task_type = _task_type(instance.task_type, f"{where}.task_type")
        texts.append(
            EmbedText(
                text=_text(instance.content, limits, f"{where}.content"),
                task_type=task_type,
                title=_title(instance.title, task_type, f"{where}.title"),
                output_dimensionality=dimensions,
                auto_truncate=parameters.auto_truncate,
                where=where,
            )
        )
    return EmbedRequest(tuple(texts))


def predict_response(request: EmbedRequest, embeddings: Sequence[Embedding]) -> dict[str, Any]:
    # Vertex bills characters, not counting whitespace.
    billable = sum(len("".join((text.text or "").split())) for text in request.texts)
    return em.predict_response([(e.values, e.token_count, e.truncated) for e in embeddings], billable)


# ---------------------------------------------------------------- OpenAI


def openai_request(body: em.OpenAIEmbeddingRequest, limits: EmbeddingLimits) -> EmbedRequest:
    dimensions = _dimensions(body.dimensions, limits, "dimensions")
    raw = body.input
    inputs: list[str | list[int]]
    single = isinstance(raw, str) or (bool(raw) and all(isinstance(item, int) for item in raw))
    if isinstance(raw, str):
        inputs = [raw]
    elif single:
        inputs = [list(raw)]  # type: ignore[arg-type]  # one token array
    else:
        inputs = list(raw)  # type: ignore[arg-type]  # strings, or token arrays
    _count(len(inputs), limits, "input")
    texts = []
    for i, item in enumerate(inputs):
        where = "input" if single else f"input[{i}]"
        if isinstance(item, str):
            texts.append(EmbedText(text=_text(item, limits, where), output_dimensionality=dimensions, where=where))
            continue
        if not limits.token_arrays:
            raise InvalidArgumentError("this model takes text, not token ids", param=where)
        if not item:
            raise InvalidArgumentError("the token array is empty", param=where)
        texts.append(EmbedText(tokens=tuple(item), output_dimensionality=dimensions, where=where))
    return EmbedRequest(tuple(texts))


def _float32_base64(values: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def openai_response(body: em.OpenAIEmbeddingRequest, embeddings: Sequence[Embedding]) -> em.OpenAIEmbeddingResponse:
    encode = _float32_base64 if body.encoding_format == "base64" else list
    tokens = sum(embedding.token_count for embedding in embeddings)
    return em.OpenAIEmbeddingResponse(
        data=[em.OpenAIEmbedding(index=i, embedding=encode(e.values)) for i, e in enumerate(embeddings)],
        model=body.model,
        usage=em.OpenAIEmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
