"""The native surfaces' resource names and request/response rules (translate/resources.py, translate/native.py).

Rendered responses are validated by google-genai's own types as the oracle, as test_golden.py does.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from google.genai import types as genai_types
from pydantic import ValidationError

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.translate.native import check_native_request, render_response, standard_base64
from openvertex.translate.resources import ModelName, dialect_of, model_name_from_id, parse_model_name, split_version
from openvertex.translate.tables import SKIP_THOUGHT_SIGNATURE

VERTEX_MODEL = "projects/my-project/locations/us-central1/publishers/google/models/gemini-2.5-flash"
# Bytes whose standard base64 uses both '+' and '/' and needs padding.
RAW = bytes([0xFB, 0xEF, 0xFF, 0xFE, 0x3F])
STANDARD = base64.b64encode(RAW).decode()
URL_SAFE_UNPADDED = base64.urlsafe_b64encode(RAW).decode().rstrip("=")


def test_the_sample_bytes_exercise_both_alphabets_and_padding() -> None:
    assert "+" in STANDARD and "/" in STANDARD and STANDARD.endswith("=")
    assert "-" in URL_SAFE_UNPADDED and "_" in URL_SAFE_UNPADDED and "=" not in URL_SAFE_UNPADDED


# ---------------------------------------------------------------------------------------------- resource names


@pytest.mark.parametrize(
    ("name", "publisher", "model", "route_ids"),
    [
        (VERTEX_MODEL, "google", "gemini-2.5-flash", ("google/gemini-2.5-flash", "gemini-2.5-flash")),
        (
            "publishers/google/models/gemini-2.5-pro",
            "google",
            "gemini-2.5-pro",
            ("google/gemini-2.5-pro", "gemini-2.5-pro"),
        ),
        ("publishers/meta/models/llama-3", "meta", "llama-3", ("meta/llama-3", "llama-3")),
        ("projects/p/locations/europe-west4/endpoints/1234567890", None, "1234567890", ("1234567890",)),
        ("endpoints/my-endpoint", None, "my-endpoint", ("my-endpoint",)),
        ("models/gemini-2.5-flash", "google", "gemini-2.5-flash", ("google/gemini-2.5-flash", "gemini-2.5-flash")),
        ("tunedModels/my-tuned", "google", "my-tuned", ("google/my-tuned", "my-tuned")),
    ],
)
def test_model_names_of_every_shape(name: str, publisher: str | None, model: str, route_ids: tuple[str, ...]) -> None:
    parsed = parse_model_name(name)
    assert parsed == ModelName(name, publisher, model)
    assert parsed.resource == name
    assert parsed.route_ids() == route_ids
    assert parsed.routed == route_ids[0]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "gemini-2.5-flash",
        "google/gemini-2.5-flash",
        "models/",
        "models/a/b",
        "models/gemini-2.5-flash:generateContent",
        "publishers/google/models/",
        "publishers/google/gemini-2.5-flash",
        "projects/p/publishers/google/models/m",  # a parent needs its location
        "projects/p/locations/l/models/m",
        "projects/p/locations/l/publishers/google/models/m/extra",
        "/models/m",
        "endpoints/",
        "cachedContents/123",
        "locations/l/publishers/google/models/m",
    ],
)
def test_junk_is_not_a_model_name(name: str) -> None:
    assert parse_model_name(name) is None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("google/gemini-2.5-flash", ModelName("google/gemini-2.5-flash", "google", "gemini-2.5-flash")),
        ("smollm2", ModelName("smollm2", None, "smollm2")),
    ],
)
def test_model_name_from_an_openai_model_id(model: str, expected: ModelName) -> None:
    assert model_name_from_id(model) == expected


def test_route_ids_of_an_openai_model_id() -> None:
    assert model_name_from_id("google/gemini-2.5-flash").route_ids() == ("google/gemini-2.5-flash", "gemini-2.5-flash")
    assert model_name_from_id("smollm2").route_ids() == ("smollm2",)
    assert model_name_from_id("smollm2").routed == "smollm2"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1beta1/projects/p/locations/l/cachedContents", ("v1beta1", "projects/p/locations/l/cachedContents")),
        (
            "/v1/projects/p/locations/l/publishers/google/models/m",
            ("v1", "projects/p/locations/l/publishers/google/models/m"),
        ),
        ("/v1beta/models/gemini-2.5-flash", ("v1beta", "models/gemini-2.5-flash")),
        ("/v1alpha/cachedContents/1", ("v1alpha", "cachedContents/1")),
        ("v1/models/m", ("v1", "models/m")),
        ("/projects/p/locations/l/endpoints/e", (None, "projects/p/locations/l/endpoints/e")),  # collection scope
        ("/v2/models/m", (None, "v2/models/m")),  # not a version
        ("/models/m", (None, "models/m")),
    ],
)
def test_split_version(path: str, expected: tuple[str | None, str]) -> None:
    assert split_version(path) == expected


@pytest.mark.parametrize(
    ("version", "name", "dialect"),
    [
        ("v1", "projects/p/locations/l/publishers/google/models/m", "vertex"),
        ("v1beta", "publishers/google/models/m", "vertex"),
        ("v1", "endpoints/e", "vertex"),
        ("v1beta1", "models/m", "vertex"),  # Vertex's version
        (None, "models/m", "vertex"),  # no version at all
        ("v1beta1", "cachedContents", "vertex"),
        ("v1beta", "models/gemini-2.5-flash", "gemini"),
        ("v1", "models/gemini-2.5-flash", "gemini"),
        ("v1alpha", "tunedModels/t", "gemini"),
        ("v1beta", "cachedContents/123", "gemini"),
        ("v1beta", "cachedContents", "gemini"),
    ],
)
def test_dialect_of(version: str | None, name: str, dialect: str) -> None:
    assert dialect_of(version, name) == dialect


# ---------------------------------------------------------------------------------------------- requests


def _request(**fields: Any) -> gc.GenerateContentRequest:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], **fields}
    return gc.GenerateContentRequest.model_validate(body)


def _invalid(request: gc.GenerateContentRequest) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        check_native_request(request)
    assert caught.value.http_status == 400
    return caught.value


@pytest.mark.parametrize("given", [STANDARD, URL_SAFE_UNPADDED, STANDARD.rstrip("="), f"  {STANDARD}\n"])
def test_bytes_become_standard_padded_base64(given: str) -> None:
    blob = {"mimeType": "image/png", "data": given}
    request = gc.GenerateContentRequest.model_validate(
        {
            "systemInstruction": {"parts": [{"inlineData": blob}]},
            "contents": [
                {"role": "user", "parts": [{"text": "look"}, {"inlineData": blob}]},
                {
                    "role": "model",
                    "parts": [{"functionCall": {"name": "f", "args": {}}, "thoughtSignature": given}],
                },
                {
                    "role": "user",
                    "parts": [
                        {
                            "functionResponse": {
                                "name": "f",
                                "response": {"ok": True},
                                "parts": [{"inlineData": blob}],
                            }
                        }
                    ],
                },
            ],
        }
    )
    check_native_request(request)
    assert request.system_instruction is not None
    assert request.system_instruction.parts[0].inline_data is not None
    assert request.system_instruction.parts[0].inline_data.data == STANDARD
    assert request.contents[0].parts[1].inline_data is not None
    assert request.contents[0].parts[1].inline_data.data == STANDARD
    assert request.contents[1].parts[0].thought_signature == STANDARD
    response = request.contents[2].parts[0].function_response
    assert response is not None and response.parts is not None and response.parts[0].inline_data is not None
    assert response.parts[0].inline_data.data == STANDARD
    assert base64.b64decode(STANDARD, validate=True) == RAW


@pytest.mark.parametrize("given", ["a", "@@@@", "not base64!!", "abc$", "ab=c"])
def test_standard_base64_rejects_what_no_alphabet_decodes(given: str) -> None:
    with pytest.raises(InvalidArgumentError, match=r"Invalid value at 'the\.field' \(TYPE_BYTES\)"):
        standard_base64(given, field="the.field")


def test_invalid_inline_data_names_the_field() -> None:
    request = _request(
        contents=[{"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "not base64!!"}}]}]
    )
    error = _invalid(request)
    assert "contents[0].parts[0].inline_data.data" in error.message
    assert "Base64 decoding failed" in error.message


def test_invalid_data_deeper_in_the_request_names_its_field() -> None:
    blob = {"mimeType": "image/png", "data": "@@@@"}
    request = _request(
        contents=[
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"text": "a"}, {"functionCall": {"name": "f"}, "thoughtSignature": "@@@@"}]},
        ]
    )
    assert "contents[1].parts[1].thought_signature" in _invalid(request).message
    request = _request(
        contents=[
            {
                "role": "user",
                "parts": [{"functionResponse": {"name": "f", "response": {}, "parts": [{"inlineData": blob}]}}],
            }
        ]
    )
    assert "contents[0].parts[0].function_response.parts[0].inline_data.data" in _invalid(request).message
    request = _request(systemInstruction={"parts": [{"text": "x"}, {"inlineData": blob}]})
    assert "system_instruction.parts[1].inline_data.data" in _invalid(request).message


@pytest.mark.parametrize(
    "given",
    [
        SKIP_THOUGHT_SIGNATURE,
        base64.urlsafe_b64encode(SKIP_THOUGHT_SIGNATURE.encode()).decode(),
        base64.urlsafe_b64encode(SKIP_THOUGHT_SIGNATURE.encode()).decode().rstrip("="),
        base64.b64encode(SKIP_THOUGHT_SIGNATURE.encode()).decode(),
    ],
)
def test_the_dummy_signature_maps_to_the_literal(given: str) -> None:
    request = _request(
        contents=[
            {"role": "user", "parts": [{"text": "hi"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "f"}, "thoughtSignature": given}]},
        ]
    )
    check_native_request(request)
    assert request.contents[1].parts[0].thought_signature == SKIP_THOUGHT_SIGNATURE


def test_response_schema_and_response_json_schema_together_are_refused() -> None:
    schema = {"type": "object"}
    request = _request(
        generationConfig={
            "responseMimeType": "application/json",
            "responseSchema": schema,
            "responseJsonSchema": schema,
        }
    )
    error = _invalid(request)
    assert error.param == "generationConfig.responseJsonSchema"
    assert "generationConfig.responseJsonSchema" in error.message


@pytest.mark.parametrize("key", ["responseSchema", "responseJsonSchema"])
@pytest.mark.parametrize("mime", [None, "text/plain", "text/x.enum"])
def test_a_schema_needs_the_json_mime_type(key: str, mime: str | None) -> None:
    config: dict[str, Any] = {key: {"type": "object"}}
    if mime is not None:
        config["responseMimeType"] = mime
    error = _invalid(_request(generationConfig=config))
    assert error.param == "generationConfig.responseMimeType"
    assert key in error.message


@pytest.mark.parametrize("key", ["responseSchema", "responseJsonSchema"])
def test_a_schema_with_the_json_mime_type_passes(key: str) -> None:
    check_native_request(_request(generationConfig={"responseMimeType": "application/json", key: {"type": "object"}}))


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
            "$ref": "#/$defs/node",
        },
        {
            "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"items": {"$ref": "#/$defs/a"}}},
            "type": "object",
            "properties": {"x": {"$ref": "#/$defs/a"}},
        },
    ],
)
def test_a_recursive_schema_is_refused(schema: dict[str, Any]) -> None:
    request = _request(generationConfig={"responseMimeType": "application/json", "responseJsonSchema": schema})
    error = _invalid(request)
    assert error.param == "generationConfig.responseJsonSchema"
    assert "recursive" in error.message


def test_a_shared_but_acyclic_ref_passes() -> None:
    schema = {
        "$defs": {"leaf": {"type": "string"}},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/leaf"}, "b": {"$ref": "#/$defs/leaf"}},
    }
    check_native_request(_request(generationConfig={"responseMimeType": "application/json", "responseSchema": schema}))


@pytest.mark.parametrize("budget", [-2, -100])
def test_a_thinking_budget_below_minus_one_is_refused(budget: int) -> None:
    error = _invalid(_request(generationConfig={"thinkingConfig": {"thinkingBudget": budget}}))
    assert error.param == "generationConfig.thinkingConfig.thinkingBudget"


@pytest.mark.parametrize("budget", [-1, 0, 1, 24576])
def test_valid_thinking_budgets_pass(budget: int) -> None:
    check_native_request(_request(generationConfig={"thinkingConfig": {"thinkingBudget": budget}}))


def test_a_candidate_count_below_one_is_refused() -> None:
    assert _invalid(_request(generationConfig={"candidateCount": 0})).param == "generationConfig.candidateCount"


TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": {"type": "OBJECT"}}]}]


def test_allowed_function_names_must_be_declared() -> None:
    config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}
    error = _invalid(_request(tools=TOOLS, toolConfig=config))
    assert error.param == "toolConfig.functionCallingConfig.allowedFunctionNames"
    assert "get_time" in error.message
    _invalid(_request(toolConfig=config))  # no tools at all


def test_allowed_function_names_may_name_what_a_cache_declares() -> None:
    config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_time"]}}
    check_native_request(_request(toolConfig=config, cachedContent="cachedContents/123"))


def test_declared_allowed_function_names_pass() -> None:
    config = {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    check_native_request(_request(tools=TOOLS, toolConfig=config))


@pytest.mark.parametrize("name", ["1starts_with_digit", "has space", "a" * 65, "", "semi;colon", "emoji🙂"])
def test_a_bad_function_name_is_refused(name: str) -> None:
    tools = [{"functionDeclarations": [{"name": "fine"}]}, {"functionDeclarations": [{"name": "ok"}, {"name": name}]}]
    error = _invalid(_request(tools=tools))
    assert error.param == "tools[1].functionDeclarations[1].name"


@pytest.mark.parametrize("name", ["_private", "a", "a" * 64, "ns.get-weather_2"])
def test_good_function_names_pass(name: str) -> None:
    check_native_request(_request(tools=[{"functionDeclarations": [{"name": name}]}]))


def test_a_function_name_with_a_trailing_newline_is_refused() -> None:
    _invalid(_request(tools=[{"functionDeclarations": [{"name": "get_weather\n"}]}]))


def test_parameters_and_parameters_json_schema_together_are_refused() -> None:
    declaration = {"name": "f", "parameters": {"type": "OBJECT"}, "parametersJsonSchema": {"type": "object"}}
    error = _invalid(_request(tools=[{"functionDeclarations": [declaration]}]))
    assert error.param == "tools[0].functionDeclarations[0].parametersJsonSchema"


def test_recursive_function_parameters_are_refused() -> None:
    declaration = {"name": "f", "parametersJsonSchema": {"$ref": "#"}}
    error = _invalid(_request(tools=[{"functionDeclarations": [declaration]}]))
    assert error.param == "tools[0].functionDeclarations[0].parameters"


def test_too_many_function_declarations_are_refused() -> None:
    tools = [{"functionDeclarations": [{"name": f"f{i}"} for i in range(100)]}] * 2
    assert _invalid(_request(tools=tools)).param == "tools"


SNAKE: dict[str, Any] = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "What is in this picture?"},
                {"inline_data": {"mime_type": "image/png", "data": STANDARD}},
                {"file_data": {"mime_type": "application/pdf", "file_uri": "gs://b/o.pdf"}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"function_call": {"name": "get_weather", "args": {"city": "Paris"}}, "thought_signature": STANDARD}
            ],
        },
        {
            "role": "user",
            "parts": [{"function_response": {"name": "get_weather", "response": {"temp_c": 21}}}],
        },
    ],
    "system_instruction": {"parts": [{"text": "Be brief."}]},
    "tools": [
        {
            "function_declarations": [
                {"name": "get_weather", "parameters_json_schema": {"type": "object", "properties": {"city": {}}}}
            ]
        }
    ],
    "tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["get_weather"]}},
    "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "generation_config": {
        "max_output_tokens": 64,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["END"],
        "candidate_count": 1,
        "response_mime_type": "application/json",
        "response_json_schema": {"type": "object"},
        "thinking_config": {"thinking_budget": 128, "include_thoughts": True},
        "model_config": {"featureSelectionPreference": "BALANCED"},
    },
    "cached_content": "cachedContents/123",
}
CAMEL: dict[str, Any] = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": "What is in this picture?"},
                {"inlineData": {"mimeType": "image/png", "data": STANDARD}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://b/o.pdf"}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": STANDARD}
            ],
        },
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"temp_c": 21}}}],
        },
    ],
    "systemInstruction": {"parts": [{"text": "Be brief."}]},
    "tools": [
        {
            "functionDeclarations": [
                {"name": "get_weather", "parametersJsonSchema": {"type": "object", "properties": {"city": {}}}}
            ]
        }
    ],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "generationConfig": {
        "maxOutputTokens": 64,
        "topP": 0.9,
        "topK": 20,
        "stopSequences": ["END"],
        "candidateCount": 1,
        "responseMimeType": "application/json",
        "responseJsonSchema": {"type": "object"},
        "thinkingConfig": {"thinkingBudget": 128, "includeThoughts": True},
        "modelConfig": {"featureSelectionPreference": "BALANCED"},
    },
    "cachedContent": "cachedContents/123",
}


def test_snake_case_and_camel_case_requests_are_the_same_request() -> None:
    snake = gc.GenerateContentRequest.model_validate(SNAKE)
    camel = gc.GenerateContentRequest.model_validate(CAMEL)
    assert snake == camel
    assert snake.generation_config is not None and snake.generation_config.model_selection_config is not None
    check_native_request(snake)
    check_native_request(camel)
    assert snake == camel
    assert snake.to_json_dict() == camel.to_json_dict()


def test_the_camel_case_request_renders_as_it_came() -> None:
    assert gc.GenerateContentRequest.model_validate(SNAKE).to_json_dict() == CAMEL


# ---------------------------------------------------------------------------------------------- responses


def _response(**usage: Any) -> gc.GenerateContentResponse:
    return gc.GenerateContentResponse(
        candidates=[
            gc.Candidate(
                index=0,
                content=gc.Content(
                    role="model",
                    parts=[
                        gc.Part(text="Sunny.", thought_signature=STANDARD),
                        gc.Part(function_call=gc.FunctionCall(name="get_weather", args={"city_name": "Paris"})),
                    ],
                ),
                finish_reason="STOP",
                avg_logprobs=-0.25,
            )
        ],
        usage_metadata=gc.UsageMetadata(**usage) if usage else None,
    )


USAGE: dict[str, Any] = {
    "prompt_token_count": 12,
    "cached_content_token_count": 8,
    "candidates_token_count": 3,
    "thoughts_token_count": 2,
    "total_token_count": 17,
    "traffic_type": "ON_DEMAND",
}
CREATED = "2026-02-11T23:34:21.123456Z"


def _render(response: gc.GenerateContentResponse, dialect: gc.Dialect) -> dict[str, Any]:
    rendered = render_response(
        response, dialect=dialect, model_version="gemini-2.5-flash", response_id="resp-1", create_time=CREATED
    )
    genai_types.GenerateContentResponse.model_validate(rendered)  # the SDK's own type as oracle
    return rendered


def _keys(node: Any, *, skip: frozenset[str] = frozenset({"args"})) -> set[str]:
    if isinstance(node, dict):
        return {k for k in node} | {key for k, v in node.items() if k not in skip for key in _keys(v)}
    if isinstance(node, list):
        return {key for item in node for key in _keys(item)}
    return set()


def test_vertex_keeps_create_time_and_traffic_type() -> None:
    rendered = _render(_response(**USAGE), "vertex")
    assert rendered["createTime"] == CREATED
    assert rendered["modelVersion"] == "gemini-2.5-flash"
    assert rendered["responseId"] == "resp-1"
    assert rendered["usageMetadata"]["trafficType"] == "ON_DEMAND"
    parsed = genai_types.GenerateContentResponse.model_validate(rendered)
    assert parsed.create_time is not None and parsed.create_time.microsecond == 123456
    assert parsed.usage_metadata is not None and parsed.usage_metadata.traffic_type == genai_types.TrafficType.ON_DEMAND


def test_gemini_drops_create_time_and_traffic_type() -> None:
    rendered = _render(_response(**USAGE), "gemini")
    assert "createTime" not in rendered
    assert "trafficType" not in rendered["usageMetadata"]
    assert rendered["modelVersion"] == "gemini-2.5-flash"
    assert rendered["responseId"] == "resp-1"


def test_gemini_drops_a_create_time_the_backend_set() -> None:
    response = _response(**USAGE)
    response.create_time = "2020-01-01T00:00:00Z"
    assert "createTime" not in _render(response, "gemini")
    response = _response(**USAGE)
    response.create_time = "2020-01-01T00:00:00Z"
    assert _render(response, "vertex")["createTime"] == CREATED


@pytest.mark.parametrize("dialect", ["vertex", "gemini"])
def test_usage_details_are_text_counts(dialect: gc.Dialect) -> None:
    usage = _render(_response(**USAGE), dialect)["usageMetadata"]
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 12}]
    assert usage["cacheTokensDetails"] == [{"modality": "TEXT", "tokenCount": 8}]
    assert usage["candidatesTokensDetails"] == [{"modality": "TEXT", "tokenCount": 3}]
    assert usage["promptTokenCount"] == 12
    assert usage["cachedContentTokenCount"] == 8
    assert usage["thoughtsTokenCount"] == 2
    assert usage["totalTokenCount"] == 17
    parsed = genai_types.GenerateContentResponseUsageMetadata.model_validate(usage)
    assert parsed.prompt_tokens_details is not None
    assert parsed.prompt_tokens_details[0].modality == genai_types.MediaModality.TEXT
    assert parsed.prompt_tokens_details[0].token_count == 12


def test_no_details_for_counts_that_are_zero_or_missing() -> None:
    usage = _render(_response(prompt_token_count=5, candidates_token_count=0, total_token_count=5), "vertex")[
        "usageMetadata"
    ]
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 5}]
    assert "cacheTokensDetails" not in usage
    assert "candidatesTokensDetails" not in usage


def test_details_the_backend_gave_are_kept() -> None:
    image = [
        gc.ModalityTokenCount(modality="IMAGE", token_count=258),
        gc.ModalityTokenCount(modality="TEXT", token_count=4),
    ]
    usage = _render(_response(prompt_token_count=262, prompt_tokens_details=image), "vertex")["usageMetadata"]
    assert usage["promptTokensDetails"] == [
        {"modality": "IMAGE", "tokenCount": 258},
        {"modality": "TEXT", "tokenCount": 4},
    ]


def test_a_response_without_usage_renders() -> None:
    rendered = _render(_response(), "gemini")
    assert "usageMetadata" not in rendered


@pytest.mark.parametrize("dialect", ["vertex", "gemini"])
def test_output_keys_are_camel_case(dialect: gc.Dialect) -> None:
    rendered = _render(_response(**USAGE), dialect)
    keys = _keys(rendered)
    assert not [key for key in keys if "_" in key]
    assert {"finishReason", "avgLogprobs", "thoughtSignature", "functionCall", "usageMetadata"} <= keys
    candidate = rendered["candidates"][0]
    assert candidate["content"]["parts"][1]["functionCall"]["args"] == {"city_name": "Paris"}  # data stays as given
    assert candidate["content"]["parts"][0]["thoughtSignature"] == STANDARD


def test_an_upstream_answer_keeps_what_openvertex_does_not_model() -> None:
    """Gemini's safety ratings, grounding metadata and newer fields pass through the native surface
    untouched; a part field openvertex does not know is dropped from an answer, never a failure."""
    raw = json.loads((Path(__file__).parent.parent / "golden/gemini_to_openai/grounded_answer/input.json").read_text())
    raw["candidates"][0]["content"]["parts"][0]["someNewPartField"] = {"x": 1}
    raw["someNewTopLevelField"] = "kept"
    parsed = gc.upstream_answer(json.dumps(raw).encode())
    rendered = render_response(
        parsed, dialect="vertex", model_version="gemini-2.5-flash", response_id="id", create_time="2026-01-01T00:00:00Z"
    )
    candidate = rendered["candidates"][0]
    assert candidate["groundingMetadata"] == raw["candidates"][0]["groundingMetadata"]
    assert candidate["safetyRatings"] == raw["candidates"][0]["safetyRatings"]
    assert rendered["someNewTopLevelField"] == "kept"
    assert "someNewPartField" not in candidate["content"]["parts"][0]
    with pytest.raises(ValidationError):  # in a request, an unknown field is a 400
        gc.Part.model_validate({"text": "x", "someNewPartField": 1})
