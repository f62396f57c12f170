"""The Gemini backend's embedding calls: which upstream method each text goes to, the bodies, and
the answers read back into Embeddings. Pure: backends/gemini.py sends them.

What google-genai 3.6 sends, which is what the upstream expects (spec native-gemini §A.2):
    Vertex, a model id with `gemini` or `maas` in it:
        one text         :embedContent        {content, embedContentConfig{taskType, title, …}}
        several          :batchEmbedContents  {requests: [{content, embedContentConfig}, …]}
                         (a MaaS model embeds one content at a time: one :embedContent each)
    Vertex, other models (text-embedding-005, text-multilingual-embedding-002):
                         :predict             {instances: [{content, task_type, title}], parameters}
    Gemini Developer API: always :batchEmbedContents {requests: [{model, content, taskType, …}]}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from openvertex.errors import InternalError, InvalidArgumentError
from openvertex.protocol.embeddings import Embedding, EmbedRequest, EmbedText

Method = Literal["embedContent", "batchEmbedContents", "predict"]

# The most texts one call carries: the Gemini API refuses a batch of more than 100 requests;
# Vertex's text-embedding models take up to 250 instances per prediction.
MAX_BATCH_REQUESTS = 100
MAX_PREDICT_INSTANCES = 250


@dataclass(frozen=True, slots=True)
class EmbedCall:
    """One upstream call: its method, its body, and which of the request's texts it embeds."""

    method: Method
    body: dict[str, Any]
    positions: tuple[int, ...]


def embed_calls(request: EmbedRequest, *, api: Literal["vertex", "gemini"], model: str) -> list[EmbedCall]:
    """The calls that embed every text of `request` (`model`: `publisher/M` or a bare id)."""
    for text in request.texts:
        if text.text is None:  # token ids: Gemini reads text only, in its own vocabulary
            raise InvalidArgumentError("Gemini embeds text, not token ids", param=text.where or None)
    bare = model.rpartition("/")[2]
    texts = list(enumerate(request.texts))
    if api == "gemini":
        return [_gemini_batch(chunk, bare) for chunk in _chunks(texts, MAX_BATCH_REQUESTS)]
    if "maas" in bare:
        return [_vertex_one(position, text) for position, text in texts]
    if "gemini" in bare:
        if len(texts) == 1:
            return [_vertex_one(*texts[0])]
        return [_vertex_batch(chunk) for chunk in _chunks(texts, MAX_BATCH_REQUESTS)]
    # A prediction's parameters hold for all its instances: one call per set of them.
    groups: dict[tuple[int | None, bool], list[tuple[int, EmbedText]]] = {}
    for position, text in texts:
        groups.setdefault((text.output_dimensionality, text.auto_truncate), []).append((position, text))
    return [_predict(chunk) for group in groups.values() for chunk in _chunks(group, MAX_PREDICT_INSTANCES)]


def _chunks(texts: list[tuple[int, EmbedText]], size: int) -> list[list[tuple[int, EmbedText]]]:
    return [texts[start : start + size] for start in range(0, len(texts), size)]


def _present(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _content(text: EmbedText) -> dict[str, Any]:
    return {"parts": [{"text": text.text}], "role": "user"}


def _vertex_request(text: EmbedText) -> dict[str, Any]:
    config = _present(
        taskType=text.task_type,
        title=text.title,
        outputDimensionality=text.output_dimensionality,
        autoTruncate=text.auto_truncate,
    )
    return {"content": _content(text), "embedContentConfig": config}


def _vertex_one(position: int, text: EmbedText) -> EmbedCall:
    return EmbedCall("embedContent", _vertex_request(text), (position,))


def _vertex_batch(texts: list[tuple[int, EmbedText]]) -> EmbedCall:
    body = {"requests": [_vertex_request(text) for _, text in texts]}
    return EmbedCall("batchEmbedContents", body, tuple(position for position, _ in texts))


def _gemini_batch(texts: list[tuple[int, EmbedText]], bare: str) -> EmbedCall:
    requests = []
    for _, text in texts:
        if not text.auto_truncate:
            # The Gemini API has no autoTruncate: it cannot be told to refuse a long text.
            raise InvalidArgumentError(
                "autoTruncate false: the Gemini Developer API cannot be told to refuse a long text",
                param=text.where or None,
            )
        requests.append(
            {
                "model": f"models/{bare}",
                "content": _content(text),
                **_present(taskType=text.task_type, title=text.title, outputDimensionality=text.output_dimensionality),
            }
        )
    return EmbedCall("batchEmbedContents", {"requests": requests}, tuple(position for position, _ in texts))


def _predict(texts: list[tuple[int, EmbedText]]) -> EmbedCall:
    # Instances are protobuf Structs: their keys go as written (snake_case), unlike parameters.
    instances = [_present(content=text.text, task_type=text.task_type, title=text.title) for _, text in texts]
    first = texts[0][1]
    parameters = _present(outputDimensionality=first.output_dimensionality, autoTruncate=first.auto_truncate)
    body = {"instances": instances, "parameters": parameters}
    return EmbedCall("predict", body, tuple(position for position, _ in texts))


# ---------------------------------------------------------------------- answers


class _Answer(BaseModel):
    """Lenient: what openvertex does not read is ignored; camelCase or snake_case (Structs)."""

    model_config = ConfigDict(extra="ignore")


class _Statistics(_Answer):
    token_count: float | None = Field(None, validation_alias=AliasChoices("token_count", "tokenCount"))
    truncated: bool = False


class _Values(_Answer):
    values: list[float]
    statistics: _Statistics | None = None


class _Usage(_Answer):
    prompt_token_count: int | None = Field(
        None, validation_alias=AliasChoices("promptTokenCount", "prompt_token_count")
    )
    total_token_count: int | None = Field(None, validation_alias=AliasChoices("totalTokenCount", "total_token_count"))


class _EmbedContentAnswer(_Answer):
    embedding: _Values
    usage_metadata: _Usage | None = Field(None, validation_alias=AliasChoices("usageMetadata", "usage_metadata"))
    truncated: bool = False


class _BatchAnswer(_Answer):
    embeddings: list[_Values]
    usage_metadata: _Usage | None = Field(None, validation_alias=AliasChoices("usageMetadata", "usage_metadata"))


class _Prediction(_Answer):
    embeddings: _Values


class _PredictAnswer(_Answer):
    predictions: list[_Prediction]


def read_answer(call: EmbedCall, answer: bytes, texts: Sequence[EmbedText]) -> list[Embedding]:
    """The embeddings of `call`'s texts (`texts`: the request's, all of them) from its answer."""
    try:
        embeddings = _read(call, answer, [texts[position] for position in call.positions])
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid":
            raise InternalError("Gemini answered with something that is not JSON.") from None
        raise InternalError("Gemini answered an embedding in a shape openvertex cannot read.") from None
    if len(embeddings) != len(call.positions):
        raise InternalError(f"Gemini answered {len(embeddings)} embeddings for {len(call.positions)} texts.")
    return embeddings


def _read(call: EmbedCall, answer: bytes, texts: list[EmbedText]) -> list[Embedding]:
    if call.method == "embedContent":
        one = _EmbedContentAnswer.model_validate_json(answer)
        tokens = _prompt_tokens(one.usage_metadata)
        return [Embedding(one.embedding.values, tokens or 0, one.truncated)]
    if call.method == "predict":
        predicted = _PredictAnswer.model_validate_json(answer)
        return [_embedding(prediction.embeddings, 0) for prediction in predicted.predictions]
    batch = _BatchAnswer.model_validate_json(answer)
    # Without per-text statistics (the Gemini API), a total is shared out by the texts' lengths.
    total = _prompt_tokens(batch.usage_metadata) or 0
    shares = _shares(total, [len(text.text or "") for text in texts]) if len(batch.embeddings) == len(texts) else []
    return [_embedding(values, shares[i] if shares else 0) for i, values in enumerate(batch.embeddings)]


def _prompt_tokens(usage: _Usage | None) -> int | None:
    if usage is None:
        return None
    return usage.prompt_token_count if usage.prompt_token_count is not None else usage.total_token_count


def _embedding(values: _Values, tokens: int) -> Embedding:
    statistics = values.statistics
    if statistics is None:
        return Embedding(values.values, tokens)
    counted = int(statistics.token_count) if statistics.token_count is not None else tokens
    return Embedding(values.values, counted, statistics.truncated)


def _shares(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` (largest remainders), summing to `total`."""
    if not any(weights):
        weights = [1] * len(weights)
    whole = sum(weights)
    shares = [total * weight // whole for weight in weights]
    by_remainder = sorted(range(len(weights)), key=lambda i: (total * weights[i]) % whole, reverse=True)
    for i in by_remainder[: total - sum(shares)]:
        shares[i] += 1
    return shares
