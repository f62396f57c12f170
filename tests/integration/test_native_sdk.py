"""google-genai, the real SDK, against the live server on the embedded model, in its three modes:
Vertex AI (project and location; a token without ADC), Vertex express (API key) and the Gemini
Developer API (API key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import google.oauth2.credentials
import httpx
import jsonschema
import pydantic
import pytest
from google import genai
from google.genai import errors, types

from tests.support.server import RunningServer

MODEL = "gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="get_current_weather",
    description="Get the current weather in a given location",
    parameters_json_schema={
        "type": "object",
        "properties": {"location": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["location"],
    },
)
FORCE_CALL = types.ToolConfig(
    function_calling_config=types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY)
)


def _vertex(server: RunningServer) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="test-project",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="test"),  # no ADC: sent as it is
        http_options=types.HttpOptions(base_url=server.url),
    )


def _express(server: RunningServer) -> genai.Client:
    return genai.Client(vertexai=True, api_key="test", http_options=types.HttpOptions(base_url=server.url))


def _gemini(server: RunningServer) -> genai.Client:
    return genai.Client(api_key="test", http_options=types.HttpOptions(base_url=server.url))


MODES = {"vertex": _vertex, "express": _express, "gemini": _gemini}


@pytest.fixture(params=sorted(MODES))
def sdk(request: pytest.FixtureRequest, local_server: RunningServer) -> Iterator[genai.Client]:
    client = MODES[request.param](local_server)
    yield client
    client.close()


@pytest.fixture
def vertex(local_server: RunningServer) -> Iterator[genai.Client]:
    client = _vertex(local_server)
    yield client
    client.close()


def _config(**fields: Any) -> types.GenerateContentConfig:
    return types.GenerateContentConfig(**{"max_output_tokens": 24, "seed": 7, **fields})


def test_generate(sdk: genai.Client) -> None:
    response = sdk.models.generate_content(model=MODEL, contents="Say hello.", config=_config())
    assert response.text
    assert response.model_version == MODEL
    assert response.response_id
    assert response.candidates and response.candidates[0].finish_reason in ("STOP", "MAX_TOKENS")
    usage = response.usage_metadata
    assert usage is not None and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert usage.prompt_tokens_details and usage.prompt_tokens_details[0].token_count == usage.prompt_token_count
    vertex = sdk.vertexai
    assert (response.create_time is not None) == vertex  # the Gemini API has no createTime


def test_stream(sdk: genai.Client) -> None:
    chunks = list(sdk.models.generate_content_stream(model=MODEL, contents="Count to five.", config=_config()))
    assert "".join(chunk.text or "" for chunk in chunks)
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason in ("STOP", "MAX_TOKENS")
    assert last.usage_metadata and last.usage_metadata.candidates_token_count
    assert len({chunk.response_id for chunk in chunks}) == 1


def test_count_tokens_is_what_the_model_reads(sdk: genai.Client) -> None:
    contents = "Name three colours."
    counted = sdk.models.count_tokens(model=MODEL, contents=contents)
    response = sdk.models.generate_content(model=MODEL, contents=contents, config=_config(max_output_tokens=1))
    assert response.usage_metadata is not None
    assert counted.total_tokens == response.usage_metadata.prompt_token_count


def test_compute_tokens_splits_the_prompt_by_turn(vertex: genai.Client) -> None:
    contents = [
        types.Content(role="user", parts=[types.Part(text="Hi there")]),
        types.Content(role="model", parts=[types.Part(text="Hello!")]),
        types.Content(role="user", parts=[types.Part(text="How are you?")]),
    ]
    computed = vertex.models.compute_tokens(model=MODEL, contents=contents)
    counted = vertex.models.count_tokens(model=MODEL, contents=contents)
    info = computed.tokens_info or []
    assert [turn.role for turn in info][-3:] == ["user", "model", "user"]
    assert sum(len(turn.token_ids or []) for turn in info) == counted.total_tokens
    text = b"".join(piece for turn in info for piece in turn.tokens or []).decode()
    assert "Hi there" in text and "How are you?" in text


def test_function_call_round_trip_with_signatures(sdk: genai.Client) -> None:
    config = _config(tools=[types.Tool(function_declarations=[WEATHER])], tool_config=FORCE_CALL, max_output_tokens=64)
    question = types.Content(role="user", parts=[types.Part(text="What's the weather like in Boston?")])
    response = sdk.models.generate_content(model=MODEL, contents=[question], config=config)
    assert response.function_calls
    call = response.function_calls[0]
    assert call.name == "get_current_weather"
    jsonschema.validate(call.args, WEATHER.parameters_json_schema)
    answer = response.candidates[0].content if response.candidates else None
    assert answer is not None
    signed = [part for part in answer.parts or [] if part.function_call]
    assert isinstance(signed[0].thought_signature, bytes) and signed[0].thought_signature
    result = types.Part.from_function_response(name="get_current_weather", response={"temperature": "20C"})
    follow_up = [question, answer, types.Content(role="user", parts=[result])]
    tools_only = _config(tools=[types.Tool(function_declarations=[WEATHER])], max_output_tokens=16)
    assert sdk.models.generate_content(model=MODEL, contents=follow_up, config=tools_only).candidates
    # A call given back without its signature is refused on Gemini 3, and taken on 2.5, as Vertex does.
    signed[0].thought_signature = None
    with pytest.raises(errors.ClientError) as refused:
        sdk.models.generate_content(model="gemini-3-flash-preview", contents=follow_up, config=tools_only)
    assert refused.value.code == 400 and "thought_signature" in str(refused.value.message)
    assert sdk.models.generate_content(model=MODEL, contents=follow_up, config=tools_only).candidates


def test_streamed_function_call_arguments(vertex: genai.Client) -> None:
    calling = types.FunctionCallingConfig(mode=types.FunctionCallingConfigMode.ANY, stream_function_call_arguments=True)
    config = _config(
        tools=[types.Tool(function_declarations=[WEATHER])],
        tool_config=types.ToolConfig(function_calling_config=calling),
        max_output_tokens=64,
    )
    chunks = list(vertex.models.generate_content_stream(model=MODEL, contents="Weather in Paris?", config=config))
    calls = [part.function_call for c in chunks for part in (c.candidates[0].content.parts or []) if part.function_call]
    assert any(call.partial_args for call in calls)
    assert calls[0].name == "get_current_weather"


def test_thinking_with_include_thoughts(sdk: genai.Client) -> None:
    thinking = types.ThinkingConfig(include_thoughts=True, thinking_budget=32)
    config = _config(thinking_config=thinking, max_output_tokens=96)
    response = sdk.models.generate_content(model=MODEL, contents="Is 17 a prime number?", config=config)
    parts = response.candidates[0].content.parts if response.candidates and response.candidates[0].content else []
    thoughts = [part for part in parts or [] if part.thought]
    assert thoughts and thoughts[0].text
    assert response.usage_metadata is not None
    assert 0 < (response.usage_metadata.thoughts_token_count or 0) <= 32
    hidden = sdk.models.generate_content(
        model=MODEL,
        contents="Is 17 a prime number?",
        config=_config(thinking_config=types.ThinkingConfig(thinking_budget=32)),
    )
    assert hidden.candidates and not any(p.thought for p in hidden.candidates[0].content.parts or [])


@pytest.mark.parametrize("kind", ["response_schema", "response_json_schema"])
def test_structured_output(sdk: genai.Client, kind: str) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
    }
    config = _config(response_mime_type="application/json", max_output_tokens=64, **{kind: schema})
    response = sdk.models.generate_content(model=MODEL, contents="Name a big city.", config=config)
    assert response.text
    jsonschema.validate(json.loads(response.text), schema)


class City(pydantic.BaseModel):
    name: str
    districts: list[str] = pydantic.Field(max_length=3)
    nickname: str | None = None


def test_structured_output_from_a_pydantic_model(sdk: genai.Client) -> None:
    """The SDK turns the class into Gemini's Schema and sends it with snake_case keywords
    (`max_items`, `property_ordering`) and `nullable`."""
    config = _config(response_mime_type="application/json", response_schema=City, max_output_tokens=96)
    response = sdk.models.generate_content(model=MODEL, contents="Describe a city.", config=config)
    city = City.model_validate_json(response.text or "")
    assert len(city.districts) <= 3


def test_unknown_model_and_bad_input(sdk: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as bad:
        sdk.models.generate_content(model=MODEL, contents="hi", config=types.GenerateContentConfig(candidate_count=99))
    assert bad.value.code == 400 and "candidateCount" in str(bad.value.message)
    with pytest.raises(errors.ClientError) as unsupported:
        sdk.models.generate_content(
            model=MODEL, contents="hi", config=types.GenerateContentConfig(response_modalities=["IMAGE"])
        )
    assert unsupported.value.code == 400 and "responseModalities" in str(unsupported.value.message)


def test_models_list_and_get(sdk: genai.Client) -> None:
    listed = list(sdk.models.list())
    assert any((model.name or "").endswith("smollm2") for model in listed)
    model = sdk.models.get(model=MODEL)
    assert (model.name or "").endswith(MODEL)


def test_the_sdk_timeout_header_is_the_deadline(local_server: RunningServer) -> None:
    """google-genai sends `X-Server-Timeout` when HttpOptions.timeout is set: the answer must come by then."""
    url = f"{local_server.url}/v1beta1/publishers/google/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "Write a long story about a lighthouse."}]}]}
    late = httpx.post(url, json=body, headers={"x-goog-api-key": "test", "x-server-timeout": "0.3"}, timeout=60)
    assert late.status_code == 504, late.text
    assert late.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    bad = httpx.post(url, json=body, headers={"x-goog-api-key": "test", "x-server-timeout": "soon"}, timeout=60)
    assert bad.status_code == 400 and "X-Server-Timeout" in bad.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"generationConfig": {"speechConfig": {"voiceConfig": {}}}}, "generationConfig.speechConfig"),
        ({"generationConfig": {"imageConfig": {"aspectRatio": "1:1"}}}, "generationConfig.imageConfig"),
        ({"generationConfig": {"responseModalities": "IMAGE"}}, "generationConfig.responseModalities"),
        ({"modelArmorConfig": {"promptTemplateName": "t"}}, "modelArmorConfig"),
        ({"tools": [{"codeExecution": {}}]}, "tools[0].codeExecution"),
        ({"tools": [{"functionDeclarations": [{"name": "f", "behavior": "NON_BLOCKING"}]}]}, "behavior"),
        ({"cachedContent": "projects/p/locations/l/cachedContents/1"}, "cached content metadata"),
    ],
)
def test_what_the_local_model_cannot_honour_is_a_400(
    local_server: RunningServer, body: dict[str, Any], field: str
) -> None:
    url = f"{local_server.url}/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}:generateContent"
    request = {"contents": {"role": "user", "parts": {"text": "hi"}}, **body}  # lone values, as Vertex's curl sends
    response = httpx.post(url, json=request, headers={"authorization": "Bearer test"}, timeout=60)
    assert response.status_code in (400, 404), response.text
    assert field in response.json()["error"]["message"]


def test_video_metadata_without_video_input(local_server: RunningServer) -> None:
    url = f"{local_server.url}/v1/models/{MODEL}:generateContent"
    part = {"text": "describe", "videoMetadata": {"startOffset": "1s"}}
    response = httpx.post(url, json={"contents": [{"role": "user", "parts": [part]}]}, headers={"x-goog-api-key": "k"})
    assert response.status_code == 400 and "contents[0].parts[0].videoMetadata" in response.json()["error"]["message"]
