"""Embeddings on every surface, through each surface's real client, on the embedded embedding model
(all-MiniLM-L6-v2 from its PyPI package), held against the model's reference implementation."""

from __future__ import annotations

import asyncio
import base64
import math
import os
import struct
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import httpx
import numpy as np
import openai
import pytest
from google import genai
from google.genai import types
from langchain_google_genai import GoogleGenerativeAIEmbeddings

from openvertex.backends.embedding.engine import EmbeddingEngine
from openvertex.backends.embedding.model_files import gguf_path, packaged_folder
from openvertex.settings import DEFAULT_EMBEDDING_MODEL, EmbeddingBackendSettings, ModelRoute, Settings
from tests.support.server import RunningServer, serve

TEXTS = [
    "The cat sits on the mat.",
    "A dog is playing in the park!",
    "Quantum computers use qubits, not bits.",
    "Ça va? Größe, naïve café — and 東京 too.",
    "Email me at someone@example.com or visit https://example.org/docs?x=1.",
    " ".join(["long"] * 400),  # past the 256 tokens the model reads: cut, as sentence-transformers cuts
]
SIMILAR = ("How do I bake bread?", "What is a recipe for baking bread?", "The stock market fell today.")


def vertex_client(server: RunningServer) -> genai.Client:
    credentials = google.oauth2.credentials.Credentials(token="t")  # type: ignore[no-untyped-call]
    return genai.Client(
        vertexai=True,
        project="p",
        location="us-central1",
        credentials=credentials,
        http_options=types.HttpOptions(base_url=server.url),
    )


def clients(server: RunningServer) -> dict[str, genai.Client]:
    base = types.HttpOptions(base_url=server.url)
    return {
        "vertex": vertex_client(server),
        "express": genai.Client(vertexai=True, api_key="k", http_options=base),
        "gemini": genai.Client(api_key="k", http_options=base),
    }


@pytest.fixture(scope="module")
def reference() -> Any:
    """sentence-transformers on the same files: the model's own implementation."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        if os.environ.get("OPENVERTEX_REQUIRE_REFERENCE") == "1":
            pytest.fail("sentence-transformers is not installed (pip install -e '.[reference]')")
        pytest.skip("sentence-transformers is not installed (pip install -e '.[reference]')")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(packaged_folder(DEFAULT_EMBEDDING_MODEL)), device="cpu")


def openai_client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.sdk_base_url, api_key="k", max_retries=0)


def test_vectors_match_the_reference_implementation(local_server: RunningServer, reference: Any) -> None:
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    answer = openai_client(local_server).embeddings.create(model="text-embedding-005", input=TEXTS)
    got = np.array([item.embedding for item in answer.data])
    assert got.shape == expected.shape == (len(TEXTS), 384)
    assert np.abs(got - expected).max() < 2e-3
    assert (got * expected).sum(axis=1).min() > 0.99999


def test_openai_surface_inputs_dimensions_and_encodings(local_server: RunningServer) -> None:
    client = openai_client(local_server)
    whole = client.embeddings.create(model="text-embedding-005", input="hello world", encoding_format="float")
    vector = np.array(whole.data[0].embedding)
    assert vector.shape == (384,) and math.isclose(float(np.linalg.norm(vector)), 1.0, rel_tol=1e-6)
    assert whole.usage.prompt_tokens == 4 and whole.model == "text-embedding-005"  # [CLS] hello world [SEP]

    # Reduced dimensions: the first values, scaled back to unit length (Matryoshka).
    small = client.embeddings.create(model="text-embedding-005", input="hello world", dimensions=64)
    expected = vector[:64] / np.linalg.norm(vector[:64])
    assert np.allclose(small.data[0].embedding, expected, atol=1e-6)

    # The SDK asks for base64 by default and decodes it; raw base64 is little-endian float32.
    raw = httpx.post(
        f"{local_server.url}/v1/embeddings",
        headers={"Authorization": "Bearer k"},
        json={"model": "google/gemini-embedding-001", "input": "hello world", "encoding_format": "base64"},
    ).json()
    decoded = struct.unpack("<384f", base64.b64decode(raw["data"][0]["embedding"]))
    assert np.allclose(decoded, vector, atol=1e-6)

    # Token arrays are this model's token ids ([CLS] and [SEP] added when missing).
    ids = client.embeddings.create(model="text-embedding-005", input=[[7592, 2088]])  # "hello world"
    assert np.allclose(ids.data[0].embedding, vector, atol=1e-6)
    several = client.embeddings.create(model="text-embedding-005", input=[7592, 2088])
    assert np.allclose(several.data[0].embedding, vector, atol=1e-6)


def test_google_genai_in_its_three_modes(local_server: RunningServer) -> None:
    expected = np.array(
        openai_client(local_server).embeddings.create(model="text-embedding-005", input="hello world").data[0].embedding
    )
    for mode, client in clients(local_server).items():
        for model in ("gemini-embedding-001", "text-embedding-005", "text-multilingual-embedding-002"):
            one = client.models.embed_content(model=model, contents="hello world")
            assert np.allclose(one.embeddings[0].values, expected, atol=1e-6), (mode, model)
            many = client.models.embed_content(
                model=model,
                contents=["hello world", "goodbye"],
                config=types.EmbedContentConfig(output_dimensionality=32),
            )
            assert len(many.embeddings) == 2 and len(many.embeddings[1].values) == 32, (mode, model)
    vertex = vertex_client(local_server)  # held: a Client closes its connections when collected
    predicted = vertex.models.embed_content(model="text-embedding-005", contents=TEXTS[-1])
    assert predicted.embeddings[0].statistics.truncated is True
    assert predicted.embeddings[0].statistics.token_count == 256
    counted = vertex.models.count_tokens(model="text-embedding-005", contents="hello world")
    assert counted.total_tokens == 4


def test_langchain_embeddings(local_server: RunningServer) -> None:
    embeddings = GoogleGenerativeAIEmbeddings(
        model="gemini-embedding-001", google_api_key="k", base_url=local_server.url, vertexai=False
    )
    query = embeddings.embed_query(SIMILAR[0])
    documents = embeddings.embed_documents(list(SIMILAR[1:]))
    assert len(query) == 384 and len(documents) == 2
    near, far = (float(np.dot(query, document)) for document in documents)
    assert near > far + 0.3  # a question about bread is nearer a bread recipe than the stock market


def test_task_types_and_titles(local_server: RunningServer) -> None:
    client = vertex_client(local_server)
    plain = client.models.embed_content(model="text-embedding-005", contents="Bread").embeddings[0].values
    query = client.models.embed_content(
        model="text-embedding-005", contents="Bread", config=types.EmbedContentConfig(task_type="RETRIEVAL_QUERY")
    )
    assert np.allclose(query.embeddings[0].values, plain)  # this model takes no task prompt
    titled = client.models.embed_content(
        model="gemini-embedding-001",
        contents="Bread",
        config=types.EmbedContentConfig(task_type="RETRIEVAL_DOCUMENT", title="Baking"),
    )
    assert not np.allclose(titled.embeddings[0].values, plain, atol=1e-3)  # the title is read with the text
    for config, wrong in (
        ({"taskType": "RETRIEVAL_SEARCH"}, "taskType"),
        ({"taskType": "RETRIEVAL_QUERY", "title": "Baking"}, "title"),
    ):
        answer = httpx.post(
            f"{local_server.url}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-embedding-001:embedContent",
            headers={"Authorization": "Bearer k"},
            json={"content": {"parts": [{"text": "Bread"}]}, "embedContentConfig": config},
        )
        assert answer.status_code == 400
        assert answer.json()["error"]["message"].startswith(f"embedContentConfig.{wrong}:")


def test_task_prompts_are_put_before_the_text(tmp_path: Path) -> None:
    embedding = EmbeddingBackendSettings(type="embedding", task_prompts={"RETRIEVAL_QUERY": "query: "})
    settings = Settings(
        port=0,
        state_dir=tmp_path,
        backends={"embedding": embedding},
        routes=[ModelRoute(model="text-embedding-*", backend="embedding")],
    )
    with serve(settings) as server:
        client = openai_client(server)
        vertex = vertex_client(server)
        prompted = vertex.models.embed_content(
            model="text-embedding-005", contents="Bread", config=types.EmbedContentConfig(task_type="RETRIEVAL_QUERY")
        )
        spelled_out = client.embeddings.create(model="text-embedding-005", input="query: Bread").data[0].embedding
        assert np.allclose(prompted.embeddings[0].values, spelled_out, atol=1e-6)


def _post(server: RunningServer, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", headers={"Authorization": "Bearer k"}, json=body, timeout=60)


PREDICT = "/v1beta1/projects/p/locations/l/publishers/google/models/text-embedding-005:predict"
BATCH = "/v1beta/models/gemini-embedding-001:batchEmbedContents"


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        (PREDICT, {"instances": [{"content": TEXTS[-1]}], "parameters": {"autoTruncate": False}}, "instances[0]"),
        (PREDICT, {"instances": [{"content": "x"}] * 251}, "instances"),
        (PREDICT, {"instances": [{"content": "   "}]}, "instances[0].content"),
        (PREDICT, {"instances": [{"content": "x" * 70_000}]}, "instances[0].content"),
        (
            PREDICT,
            {"instances": [{"content": "x"}], "parameters": {"outputDimensionality": 385}},
            "parameters.outputDimensionality",
        ),
        (PREDICT, {"instances": [{"content": "x", "mimeType": "image/png"}]}, "instances[0].mimeType"),
        (
            BATCH,
            {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "x"}]}}] * 101},
            "requests",
        ),
        (BATCH, {"requests": [{"model": "models/other", "content": {"parts": [{"text": "x"}]}}]}, "requests[0].model"),
        (
            BATCH,
            {"requests": [{"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}}]},
            "requests[0].content.parts[0]",
        ),
        ("/v1/embeddings", {"model": "text-embedding-005", "input": []}, "input"),
        ("/v1/embeddings", {"model": "text-embedding-005", "input": [[999999]]}, "input[0]"),
        ("/v1/embeddings", {"model": "text-embedding-005", "input": "x", "dimensions": 0}, "dimensions"),
    ],
)
def test_bounds_are_400s_naming_the_field(local_server: RunningServer, path: str, body: Any, named: str) -> None:
    answer = _post(local_server, path, body)
    assert answer.status_code == 400, answer.text
    error = answer.json()
    assert isinstance(error, list) == path.endswith("/embeddings")  # the OpenAI surface's shape: a list
    message = (error[0] if isinstance(error, list) else error)["error"]["message"]
    assert message.startswith(f"{named}:"), message


def test_embedding_models_and_chat_models_keep_to_their_own_methods(local_server: RunningServer) -> None:
    chat = _post(local_server, "/v1/embeddings", {"model": "smollm2", "input": "x"})
    assert chat.status_code == 400 and "does not embed" in chat.text
    written = _post(
        local_server,
        "/v1beta1/projects/p/locations/l/publishers/google/models/text-embedding-005:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
    )
    assert written.status_code == 400 and "embedding model" in written.text
    completions = _post(
        local_server,
        "/v1/chat/completions",
        {"model": "text-embedding-005", "messages": [{"role": "user", "content": "x"}]},
    )
    assert completions.status_code == 400


def test_concurrent_requests_share_forward_passes(tmp_path: Path) -> None:
    """The engine batches what waits; what shares a text's batch moves its vector only within float
    tolerance (the kernels sum in a batch-dependent order), far inside the reference's."""
    path = gguf_path(DEFAULT_EMBEDDING_MODEL, tmp_path)
    engine = EmbeddingEngine(path, n_threads=2, max_batch_tokens=512, max_sequences=64, max_waiting=1000)
    try:
        texts = [engine.tokenize(f"{text} {i}") for i in range(4) for text in TEXTS[:5]]

        async def run() -> tuple[list[np.ndarray], list[np.ndarray], int]:
            alone = [(await engine.embed([tokens]))[0] for tokens in texts]
            before = engine.batches
            together = await asyncio.gather(*(engine.embed([tokens]) for tokens in texts))
            return alone, [vectors[0] for vectors in together], engine.batches - before

        alone, together, batches = asyncio.run(run())
        assert batches < len(texts) / 2  # 20 requests in a few forward passes
        assert max(float(np.abs(a - b).max()) for a, b in zip(alone, together, strict=True)) < 1e-3
        assert min(float(np.dot(a, b)) for a, b in zip(alone, together, strict=True)) > 0.99999
    finally:
        engine.close()
