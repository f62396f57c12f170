"""The Gemini backend's embeddings against a scripted loopback upstream: each mode and model goes
to the method and path google-genai 3.6 uses, with the body it sends, and the answers come back
as Embeddings; upstream errors and retries as for generateContent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

from openvertex.backends.base import BackendLoad
from openvertex.backends.gemini import GeminiBackend
from openvertex.errors import InternalError, InvalidArgumentError, ResourceExhaustedError
from openvertex.http_clients import HttpClients
from openvertex.protocol.embeddings import Embedding, EmbedRequest, EmbedText
from openvertex.settings import GeminiBackendSettings
from tests.support.stub import Recorded, Reply, Stub, stub_server

VERTEX = "/v1beta1/projects/upstream-project/locations/us-central1/publishers/google/models"


def _settings(upstream: Stub, **overrides: Any) -> GeminiBackendSettings:
    fields: dict[str, Any] = {
        "type": "gemini",
        "api": "vertex",
        "project": "upstream-project",
        "location": "us-central1",
        "api_key": "upstream-key",
        "base_url": upstream.url,
        "max_retry_delay_s": 1,
    }
    return GeminiBackendSettings(**(fields | overrides))


def _embed(settings: GeminiBackendSettings, model: str, *texts: EmbedText) -> tuple[list[Embedding], BackendLoad]:
    async def run() -> tuple[list[Embedding], BackendLoad]:
        async with HttpClients() as clients:
            backend = GeminiBackend(settings, clients)
            assert backend.capabilities.embeddings and backend.capabilities.generation
            try:
                return await backend.embed(EmbedRequest(texts), model=model), backend.load()
            finally:
                await backend.close()

    return asyncio.run(run())


def _json(body: Any) -> Reply:
    return Reply(200, json.dumps(body).encode())


def _sent(upstream: Stub) -> list[tuple[str, Any]]:
    return [(request.path, json.loads(request.body)) for request in upstream.requests]


def test_one_text_on_vertex_goes_to_embed_content() -> None:
    answer = {
        "embedding": {"values": [0.5, -0.25]},
        "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
        "truncated": True,
    }
    with stub_server([_json(answer)]) as upstream:
        text = EmbedText(text="What is life?", task_type="RETRIEVAL_QUERY", output_dimensionality=2)
        embeddings, load = _embed(_settings(upstream), "google/gemini-embedding-001", text)
    assert _sent(upstream) == [
        (
            f"{VERTEX}/gemini-embedding-001:embedContent",
            {
                "content": {"parts": [{"text": "What is life?"}], "role": "user"},
                "embedContentConfig": {"taskType": "RETRIEVAL_QUERY", "outputDimensionality": 2, "autoTruncate": True},
            },
        )
    ]
    assert upstream.requests[0].headers["x-goog-api-key"] == "upstream-key"
    assert embeddings == [Embedding([0.5, -0.25], 4, truncated=True)]
    assert (load.upstream_requests, load.upstream_errors) == (1, 0)


def test_several_texts_on_vertex_go_to_batch_embed_contents() -> None:
    answer = {
        "embeddings": [
            {"values": [1.0], "statistics": {"token_count": 3.0, "truncated": False}},
            {"values": [2.0], "statistics": {"tokenCount": 9, "truncated": True}},
        ],
        "usageMetadata": {"promptTokenCount": 12},
    }
    with stub_server([_json(answer)]) as upstream:
        texts = (
            EmbedText(text="a query", task_type="RETRIEVAL_QUERY"),
            EmbedText(text="a document", task_type="RETRIEVAL_DOCUMENT", title="Doc", auto_truncate=False),
        )
        embeddings, _ = _embed(_settings(upstream), "gemini-embedding-001", *texts)
    assert _sent(upstream) == [
        (
            f"{VERTEX}/gemini-embedding-001:batchEmbedContents",
            {
                "requests": [
                    {
                        "content": {"parts": [{"text": "a query"}], "role": "user"},
                        "embedContentConfig": {"taskType": "RETRIEVAL_QUERY", "autoTruncate": True},
                    },
                    {
                        "content": {"parts": [{"text": "a document"}], "role": "user"},
                        "embedContentConfig": {"taskType": "RETRIEVAL_DOCUMENT", "title": "Doc", "autoTruncate": False},
                    },
                ]
            },
        )
    ]
    assert embeddings == [Embedding([1.0], 3), Embedding([2.0], 9, truncated=True)]


def _predict(request: Recorded) -> Reply:
    """Each instance's vector: its content's length and the dimensions asked for."""
    body = json.loads(request.body)
    dimensions = body["parameters"].get("outputDimensionality", 0)
    predictions = [
        {
            "embeddings": {
                "values": [float(len(instance["content"])), float(dimensions)],
                "statistics": {"truncated": False, "token_count": len(instance["content"])},
            }
        }
        for instance in body["instances"]
    ]
    return _json({"predictions": predictions, "metadata": {"billableCharacterCount": 1}})


def test_text_embedding_models_on_vertex_predict_once_per_set_of_parameters() -> None:
    with stub_server([], _predict) as upstream:
        texts = (
            EmbedText(text="a", task_type="CLUSTERING", output_dimensionality=64, where="input[0]"),
            EmbedText(text="bb", output_dimensionality=128),
            EmbedText(text="ccc", title="T", task_type="RETRIEVAL_DOCUMENT", output_dimensionality=64),
        )
        embeddings, load = _embed(_settings(upstream), "google/text-embedding-005", *texts)
    sent = sorted(_sent(upstream), key=lambda call: len(call[1]["instances"]))
    path = f"{VERTEX}/text-embedding-005:predict"
    assert sent == [
        (path, {"instances": [{"content": "bb"}], "parameters": {"outputDimensionality": 128, "autoTruncate": True}}),
        (
            path,
            {
                "instances": [
                    {"content": "a", "task_type": "CLUSTERING"},
                    {"content": "ccc", "task_type": "RETRIEVAL_DOCUMENT", "title": "T"},
                ],
                "parameters": {"outputDimensionality": 64, "autoTruncate": True},
            },
        ),
    ]
    assert embeddings == [Embedding([1.0, 64.0], 1), Embedding([2.0, 128.0], 2), Embedding([3.0, 64.0], 3)]
    assert load.upstream_requests == 2


def test_express_mode_has_no_project_in_the_path() -> None:
    answer = {"embedding": {"values": [0.1]}, "usageMetadata": {"promptTokenCount": 2}}
    with stub_server([_json(answer)]) as upstream:
        settings = _settings(upstream, project=None, location="global")
        embeddings, _ = _embed(settings, "gemini-embedding-001", EmbedText(text="hi"))
    (request,) = upstream.requests
    assert request.path == "/v1beta1/publishers/google/models/gemini-embedding-001:embedContent"
    assert request.headers["x-goog-api-key"] == "upstream-key"
    assert json.loads(request.body)["embedContentConfig"] == {"autoTruncate": True}
    assert embeddings == [Embedding([0.1], 2)]


def test_the_gemini_api_always_batches_and_shares_a_total_by_length() -> None:
    answer = {"embeddings": [{"values": [1.0]}, {"values": [2.0]}, {"values": [3.0]}]}
    totals = {**answer, "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10}}
    with stub_server([_json(answer), _json(totals)]) as upstream:
        settings = _settings(upstream, api="gemini", project=None)
        texts = (
            EmbedText(text="x", task_type="SEMANTIC_SIMILARITY", output_dimensionality=8),
            EmbedText(text="yyyy", title="Title", task_type="RETRIEVAL_DOCUMENT"),
            EmbedText(text="zzzzz"),
        )
        unknown, _ = _embed(settings, "google/gemini-embedding-001", *texts)
        shared, _ = _embed(settings, "gemini-embedding-001", *texts)
    model = "models/gemini-embedding-001"
    path, body = _sent(upstream)[0]
    assert path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert body == {
        "requests": [
            {
                "model": model,
                "content": {"parts": [{"text": "x"}], "role": "user"},
                "taskType": "SEMANTIC_SIMILARITY",
                "outputDimensionality": 8,
            },
            {
                "model": model,
                "content": {"parts": [{"text": "yyyy"}], "role": "user"},
                "taskType": "RETRIEVAL_DOCUMENT",
                "title": "Title",
            },
            {"model": model, "content": {"parts": [{"text": "zzzzz"}], "role": "user"}},
        ]
    }
    assert [e.token_count for e in unknown] == [0, 0, 0]  # the Gemini API says nothing of tokens
    assert [e.values for e in shared] == [[1.0], [2.0], [3.0]]
    assert [e.token_count for e in shared] == [1, 4, 5]  # 10 tokens over 1 + 4 + 5 characters


def test_an_upstream_400_keeps_its_status_and_message() -> None:
    error = {"error": {"code": 400, "message": "Unable to submit request: bad title", "status": "INVALID_ARGUMENT"}}
    with (
        stub_server([Reply(400, json.dumps(error).encode())]) as upstream,
        pytest.raises(InvalidArgumentError) as refused,
    ):
        _embed(_settings(upstream), "gemini-embedding-001", EmbedText(text="hi"))
    assert refused.value.message == "Unable to submit request: bad title"
    assert len(upstream.requests) == 1  # not retried


def test_a_429_is_retried_then_answered() -> None:
    busy = {"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}}
    answer = {"embedding": {"values": [0.1]}}
    retry = (("content-type", "application/json"), ("retry-after", "0"))
    with stub_server([Reply(429, json.dumps(busy).encode(), retry), _json(answer)]) as upstream:
        embeddings, load = _embed(_settings(upstream), "gemini-embedding-001", EmbedText(text="hi"))
    assert embeddings == [Embedding([0.1], 0)]
    assert (len(upstream.requests), load.upstream_retries, load.upstream_errors) == (2, 1, 0)


def test_a_429_past_the_retries_is_refused_and_counted() -> None:
    busy = {"error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}}
    with stub_server([Reply(429, json.dumps(busy).encode())]) as upstream, pytest.raises(ResourceExhaustedError):
        _embed(_settings(upstream, max_retries=0), "gemini-embedding-001", EmbedText(text="hi"))
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        (_settings, EmbedText(tokens=(1, 2, 3), where="input[1]")),
        (lambda stub: _settings(stub, api="gemini"), EmbedText(text="long", auto_truncate=False, where="input[1]")),
    ],
    ids=["token_ids", "gemini_api_without_auto_truncate"],
)
def test_what_gemini_cannot_honour_is_refused_naming_the_text(
    settings: Callable[[Stub], GeminiBackendSettings], text: EmbedText
) -> None:
    with stub_server([_json({})]) as upstream, pytest.raises(InvalidArgumentError) as refused:
        _embed(settings(upstream), "gemini-embedding-001", EmbedText(text="fine"), text)
    assert refused.value.param == "input[1]"
    assert upstream.requests == []  # refused before anything went upstream


def test_an_answer_with_too_few_embeddings_is_an_error() -> None:
    texts = (EmbedText(text="a"), EmbedText(text="b"))
    with stub_server([_json({"embeddings": [{"values": [1.0]}]})]) as upstream, pytest.raises(InternalError) as failed:
        _embed(_settings(upstream), "gemini-embedding-001", *texts)
    assert failed.value.message == "Gemini answered 1 embeddings for 2 texts."
