"""Embedding requests from each surface into the internal form, and answers back out: pure."""

from __future__ import annotations

import math

import pytest

from openvertex.backends.base import reduce_dimensions
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import embeddings as em
from openvertex.protocol.embeddings import Embedding, EmbedText
from openvertex.translate import embeddings as translate

LIMITS = translate.EmbeddingLimits(dimensions=384, max_texts=4, max_text_bytes=100, token_arrays=True)


def test_reduced_dimensions_keep_the_first_values_at_unit_length() -> None:
    reduced = reduce_dimensions([3.0, 4.0, 12.0], 2)
    assert reduced == [0.6, 0.8]
    assert math.isclose(math.fsum(v * v for v in reduce_dimensions([1.0, 2.0, 2.0], None)), 1.0)
    assert reduce_dimensions([0.0, 0.0], 1) == [0.0]  # nothing to scale


def test_vertex_reads_its_config_before_the_deprecated_top_level_fields() -> None:
    body = em.EmbedContentRequest.from_wire(
        {
            "content": {"parts": [{"text": "a"}, {"text": "b"}]},
            "taskType": "CLUSTERING",
            "outputDimensionality": 8,
            "embedContentConfig": {"taskType": 3, "title": "T", "autoTruncate": False},  # 3: RETRIEVAL_DOCUMENT
        },
        dialect="vertex",
    )
    (text,) = translate.embed_content_request(body, "text-embedding-005", "vertex", LIMITS).texts
    assert text == EmbedText(
        text="a\nb", task_type="RETRIEVAL_DOCUMENT", title="T", output_dimensionality=8, auto_truncate=False
    )


def test_the_gemini_api_numbers_task_types_its_own_way() -> None:
    body = em.BatchEmbedContentsRequest.from_wire(
        {"requests": [{"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "q"}]}, "taskType": 1}]},
        dialect="gemini",
    )
    (text,) = translate.batch_embed_contents_request(body, "gemini-embedding-001", "gemini", LIMITS).texts
    assert text.task_type == "RETRIEVAL_QUERY" and text.where == "requests[0]"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("one", [EmbedText(text="one", where="input")]),
        (["a", "b"], [EmbedText(text="a", where="input[0]"), EmbedText(text="b", where="input[1]")]),
        ([5, 6], [EmbedText(tokens=(5, 6), where="input")]),
        ([[5], [6, 7]], [EmbedText(tokens=(5,), where="input[0]"), EmbedText(tokens=(6, 7), where="input[1]")]),
    ],
)
def test_openai_inputs_in_each_shape(raw: object, expected: list[EmbedText]) -> None:
    body = em.OpenAIEmbeddingRequest.model_validate({"model": "m", "input": raw})
    assert list(translate.openai_request(body, LIMITS).texts) == expected


@pytest.mark.parametrize(
    ("raw", "limits", "named"),
    [
        ({"input": ["a"] * 5}, LIMITS, "input"),
        ({"input": "x" * 101}, LIMITS, "input"),
        ({"input": [[1]]}, translate.EmbeddingLimits(None, 4, 100, token_arrays=False), "input[0]"),
        ({"input": "a", "dimensions": 385}, LIMITS, "dimensions"),
        ({"input": ["a", ""]}, LIMITS, "input[1]"),
    ],
)
def test_openai_bounds_name_the_field(raw: dict[str, object], limits: translate.EmbeddingLimits, named: str) -> None:
    body = em.OpenAIEmbeddingRequest.model_validate({"model": "m", **raw})
    with pytest.raises(InvalidArgumentError) as refused:
        translate.openai_request(body, limits)
    assert refused.value.param == named


def test_answers_in_each_shape() -> None:
    one = Embedding([0.6, 0.8], token_count=3, truncated=True)
    assert translate.embed_content_response(one, "gemini").to_json_dict() == {"embedding": {"values": [0.6, 0.8]}}
    assert translate.embed_content_response(one, "vertex").to_json_dict() == {
        "embedding": {"values": [0.6, 0.8]},
        "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3},
        "truncated": True,
    }
    request = translate.predict_request(
        em.EmbeddingPredictRequest.model_validate({"instances": [{"content": "a b c"}]}), LIMITS
    )
    assert translate.predict_response(request, [one]) == {
        "predictions": [{"embeddings": {"values": [0.6, 0.8], "statistics": {"truncated": True, "token_count": 3}}}],
        "metadata": {"billableCharacterCount": 3},
    }
    body = em.OpenAIEmbeddingRequest.model_validate({"model": "m", "input": "x", "encoding_format": "base64"})
    answer = translate.openai_response(body, [Embedding([1.0], token_count=2)])
    assert answer.data[0].embedding == "AACAPw==" and answer.usage.prompt_tokens == 2  # 1.0 as little-endian float32


def test_the_packaged_models_dimensions_are_known_before_it_loads(tmp_path: object) -> None:
    from pathlib import Path

    from openvertex.backends.embedding.backend import EmbeddingBackend
    from openvertex.settings import EmbeddingBackendSettings

    backend = EmbeddingBackend(EmbeddingBackendSettings(type="embedding"), Path(str(tmp_path)))
    assert backend.residency.state == "unloaded" and backend.capabilities.embedding_dimensions == 384
