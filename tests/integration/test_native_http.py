"""The native surfaces (Vertex AI and the Gemini Developer API) over raw HTTP, against a scripted fake backend.

What google-genai depends on byte for byte (native-gemini.md A.3, A.4, B.3, C): every route shape
answers exactly 200 in camelCase; `alt=sse` streams only `data: {json}\\r\\n\\r\\n` events; errors
are one object with `details` (a one-element list only on a JSON-array stream); requests in
either casing and either base64 alphabet; the cachedContents lifecycle on both parents.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.errors import UnavailableError
from openvertex.protocol import generate_content as gc
from openvertex.settings import ModelRoute, Settings
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "gemini-2.5-flash"
PARENT = "projects/p/locations/l"
VERTEX = f"/v1beta1/{PARENT}/publishers/google/models/{MODEL}"
EXPRESS = f"/v1beta1/publishers/google/models/{MODEL}"
GEMINI = f"/v1beta/models/{MODEL}"
VERTEX_CACHE_MODEL = f"{PARENT}/publishers/google/models/{MODEL}"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
WORD_LIST = "alpha beta gamma delta"  # four tokens to the fake (one per word)


# ---------------------------------------------------------------- helpers


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": text}]}


def ask(*texts: str, **fields: Any) -> dict[str, Any]:
    return {"contents": [user(text) for text in texts], **fields}


def chunk(
    text: str | None = None, *, finish: str | None = None, prompt: int | None = None
) -> gc.GenerateContentResponse:
    """One scripted stream chunk; `prompt` adds usage (prompt tokens, one candidate token)."""
    candidates = None
    if text is not None or finish is not None:
        parts = [gc.Part(text=text)] if text is not None else []
        content = gc.Content(role="model", parts=parts)
        candidates = [gc.Candidate(index=0, content=content, finish_reason=finish)]
    usage = None
    if prompt is not None:
        usage = gc.UsageMetadata(prompt_token_count=prompt, candidates_token_count=1, total_token_count=prompt + 1)
    return gc.GenerateContentResponse(candidates=candidates, usage_metadata=usage)


def post(server: RunningServer, path: str, body: Any, **params: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, params=params, headers=AUTH)


def assert_camel_case(value: Any) -> None:
    """No snake_case key anywhere (the SDK drops snake_case top-level keys silently)."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert "_" not in key or key.startswith("@"), key
            assert_camel_case(item)
    elif isinstance(value, list):
        for item in value:
            assert_camel_case(item)


def assert_native_error(response: httpx.Response, code: int, status: str, fragment: str = "") -> dict[str, Any]:
    """Google's native error: one object, `{"error": {code, message, status, details}}`."""
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "status", "details"}, error
    assert (error["code"], error["status"]) == (code, status)
    assert isinstance(error["details"], list)
    assert fragment in error["message"], error["message"]
    return error


def assert_wrapped_error(response: httpx.Response, code: int, status: str, fragment: str = "") -> dict[str, Any]:
    """The JSON-array stream's (and the OpenAI surface's) error: a one-element list."""
    assert response.status_code == code, response.text
    body = response.json()
    assert isinstance(body, list) and len(body) == 1 and set(body[0]) == {"error"}, body
    error: dict[str, Any] = body[0]["error"]
    assert (error["code"], error["status"]) == (code, status)
    assert fragment in error["message"], error["message"]
    return error


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    """The events of a native `alt=sse` stream, checking its framing as google-genai parses it."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    body = response.content
    assert body.endswith(b"\r\n\r\n") and b"[DONE]" not in body
    frames = body.split(b"\r\n\r\n")
    assert frames.pop() == b""
    events = []
    for frame in frames:
        assert frame.startswith(b"data: {"), frame  # no event:, id: or comment lines
        assert b"\n" not in frame and b"\r" not in frame, frame
        events.append(json.loads(frame.removeprefix(b"data: ")))
    return events


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


# ---------------------------------------------------------------- servers


@pytest.fixture
def server(fake: FakeBackend, tmp_path: Path) -> Iterator[RunningServer]:
    """The default routes (`google/*`, `smollm2`) on the fake; the database in this test's directory."""
    with serve(Settings(port=0, state_dir=tmp_path), backends={"local": fake}) as running:
        yield running


@pytest.fixture
def narrow_server(fake: FakeBackend, tmp_path: Path) -> Iterator[RunningServer]:
    """One Gemini model only, so that another Gemini-API name is unknown (`google/*` routes them all)."""
    routes = [ModelRoute(model=f"google/{MODEL}", backend="local")]
    with serve(Settings(port=0, state_dir=tmp_path, routes=routes), backends={"local": fake}) as running:
        yield running


# ---------------------------------------------------------------- generateContent on every shape

# (path without the method, dialect, the modelVersion it reports)
ROUTE_SHAPES = [
    pytest.param(VERTEX, "vertex", MODEL, id="vertex-v1beta1"),
    pytest.param(f"/v1/{PARENT}/publishers/google/models/{MODEL}", "vertex", MODEL, id="vertex-v1"),
    pytest.param(EXPRESS, "vertex", MODEL, id="express"),
    pytest.param(f"/v1beta1/{PARENT}/endpoints/smollm2", "vertex", "smollm2", id="endpoint"),
    pytest.param("/v1beta1/endpoints/smollm2", "vertex", "smollm2", id="express-endpoint"),
    pytest.param(f"/v1/models/{MODEL}", "gemini", MODEL, id="gemini-v1"),
    pytest.param(GEMINI, "gemini", MODEL, id="gemini-v1beta"),
    pytest.param(f"/v1alpha/models/{MODEL}", "gemini", MODEL, id="gemini-v1alpha"),
    pytest.param(f"/publishers/google/models/{MODEL}", "vertex", MODEL, id="collection"),
]


@pytest.mark.parametrize(("path", "dialect", "version"), ROUTE_SHAPES)
def test_generate_content_on_every_route_shape(
    server: RunningServer, fake: FakeBackend, path: str, dialect: str, version: str
) -> None:
    response = post(server, f"{path}:generateContent", ask("hello there"))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert_camel_case(body)
    assert body["candidates"][0]["content"] == {"role": "model", "parts": [{"text": "hello there"}]}
    assert body["candidates"][0]["finishReason"] == "STOP"
    assert body["modelVersion"] == version
    assert body["responseId"]
    usage = body["usageMetadata"]
    assert usage["promptTokenCount"] == 2 and usage["totalTokenCount"] == 4
    assert usage["promptTokensDetails"] == [{"modality": "TEXT", "tokenCount": 2}]
    if dialect == "vertex":
        assert parse_time(body["createTime"]) == pytest.approx(time.time(), abs=60)
    else:
        assert "createTime" not in body and "trafficType" not in usage
    assert len(fake.requests) == 1


def test_unknown_endpoint_id_is_404(server: RunningServer) -> None:
    response = post(server, f"/v1beta1/{PARENT}/endpoints/1234567890:generateContent", ask("hi"))
    assert_native_error(response, 404, "NOT_FOUND", "1234567890")


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f"/v9/models/{MODEL}:generateContent", id="unknown-version"),
        pytest.param(f"{GEMINI}:fooBar", id="unknown-method"),
        pytest.param(f"/v1beta1/{PARENT}/publishers/google/models/{MODEL}/extra:generateContent", id="extra-segment"),
    ],
)
def test_unknown_paths_are_404(server: RunningServer, path: str) -> None:
    assert_native_error(post(server, path, ask("hi")), 404, "NOT_FOUND")


def test_unknown_publisher_model_is_404_with_vertex_text(server: RunningServer) -> None:
    response = post(server, "/v1beta1/publishers/meta/models/llama-3:generateContent", ask("hi"))
    assert_native_error(response, 404, "NOT_FOUND", "Publisher Model `publishers/meta/models/llama-3` was not found")


def test_unknown_gemini_model_is_404_with_gemini_text(narrow_server: RunningServer) -> None:
    response = post(narrow_server, "/v1beta/models/gemini-9:generateContent", ask("hi"))
    assert_native_error(response, 404, "NOT_FOUND", "models/gemini-9 is not found for API version v1beta")
    assert post(narrow_server, f"{GEMINI}:generateContent", ask("hi")).status_code == 200


# ---------------------------------------------------------------- streaming


def _script_three_chunks(fake: FakeBackend) -> None:
    fake.add([chunk("Hel"), chunk("lo"), chunk("!", finish="STOP", prompt=3)])


@pytest.mark.parametrize("path", [VERTEX, GEMINI], ids=["vertex", "gemini"])
def test_sse_stream_is_only_data_events(server: RunningServer, fake: FakeBackend, path: str) -> None:
    _script_three_chunks(fake)
    events = sse_events(post(server, f"{path}:streamGenerateContent", ask("hi"), alt="sse"))
    assert len(events) == 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == "Hello!"
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["promptTokenCount"] == 3
    assert len({e["responseId"] for e in events}) == 1
    assert {e["modelVersion"] for e in events} == {MODEL}
    for event in events:
        assert_camel_case(event)
        assert ("createTime" in event) == (path == VERTEX)


def test_stream_without_alt_is_one_json_array(server: RunningServer, fake: FakeBackend) -> None:
    _script_three_chunks(fake)
    response = post(server, f"{VERTEX}:streamGenerateContent", ask("hi"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = json.loads(response.content)
    assert isinstance(body, list) and len(body) == 3
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in body) == "Hello!"
    assert all(e["modelVersion"] == MODEL and e["createTime"] for e in body)


def test_mid_stream_error_is_the_last_sse_event(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([chunk("partial"), UnavailableError("boom")])
    events = sse_events(post(server, f"{VERTEX}:streamGenerateContent", ask("hi"), alt="sse"))
    assert len(events) == 2
    assert events[0]["candidates"][0]["content"]["parts"][0]["text"] == "partial"
    last = events[-1]
    assert next(iter(last)) == "error" and set(last) == {"error"}  # the SDK looks at the first key
    assert last["error"] == {"code": 503, "message": "boom", "status": "UNAVAILABLE", "details": []}


def test_unexpected_mid_stream_failure_is_an_internal_error_event(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([chunk("partial"), RuntimeError("secret detail")])
    events = sse_events(post(server, f"{GEMINI}:streamGenerateContent", ask("hi"), alt="sse"))
    assert events[-1]["error"]["code"] == 500 and events[-1]["error"]["status"] == "INTERNAL"
    assert "secret" not in json.dumps(events)


def test_mid_stream_error_closes_the_json_array(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([chunk("partial"), UnavailableError("boom")])
    response = post(server, f"{VERTEX}:streamGenerateContent", ask("hi"))
    assert response.status_code == 200
    body = json.loads(response.content)  # still valid JSON
    assert isinstance(body, list) and len(body) == 2
    assert body[0]["candidates"][0]["content"]["parts"][0]["text"] == "partial"
    assert body[-1] == {"error": {"code": 503, "message": "boom", "status": "UNAVAILABLE"}}


def test_error_before_an_sse_stream_is_a_real_status(server: RunningServer) -> None:
    response = post(server, "/v1beta1/publishers/meta/models/llama-3:streamGenerateContent", ask("hi"), alt="sse")
    assert_native_error(response, 404, "NOT_FOUND", "was not found")


def test_backend_failure_before_the_first_chunk_is_a_real_status(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([UnavailableError("warming up")])
    response = post(server, f"{GEMINI}:streamGenerateContent", ask("hi"), alt="sse")
    assert_native_error(response, 503, "UNAVAILABLE", "warming up")


def test_error_before_a_json_array_stream_is_a_one_element_list(server: RunningServer) -> None:
    response = post(server, "/v1beta1/publishers/meta/models/llama-3:streamGenerateContent", ask("hi"))
    error = assert_wrapped_error(response, 404, "NOT_FOUND", "was not found")
    assert set(error) == {"code", "message", "status"}


# ---------------------------------------------------------------- request casing and bytes

PIXEL = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
CAMEL = {
    "contents": [
        {"role": "user", "parts": [{"text": "hi there"}, {"inlineData": {"mimeType": "image/png", "data": PIXEL}}]}
    ],
    "systemInstruction": {"role": "user", "parts": [{"text": "be brief"}]},
    "tools": [{"functionDeclarations": [{"name": "f", "parametersJsonSchema": {"type": "object"}}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["f"]}},
    "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "generationConfig": {
        "maxOutputTokens": 5,
        "stopSequences": ["END"],
        "topK": 3,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 100},
    },
}
SNAKE = {
    "contents": [
        {"role": "user", "parts": [{"text": "hi there"}, {"inline_data": {"mime_type": "image/png", "data": PIXEL}}]}
    ],
    "system_instruction": {"role": "user", "parts": [{"text": "be brief"}]},
    "tools": [{"function_declarations": [{"name": "f", "parameters_json_schema": {"type": "object"}}]}],
    "tool_config": {"function_calling_config": {"mode": "ANY", "allowed_function_names": ["f"]}},
    "safety_settings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
    "generation_config": {
        "max_output_tokens": 5,
        "stop_sequences": ["END"],
        "top_k": 3,
        "thinking_config": {"include_thoughts": True, "thinking_budget": 100},
    },
}
# What google-genai actually sends: camelCase outside, snake_case inside some sub-objects (A.4).
MIXED = {
    **CAMEL,
    "contents": [
        {"role": "user", "parts": [{"text": "hi there"}, {"inlineData": {"mime_type": "image/png", "data": PIXEL}}]}
    ],
    "generationConfig": {
        "maxOutputTokens": 5,
        "stopSequences": ["END"],
        "topK": 3,
        "thinkingConfig": {"include_thoughts": True, "thinking_budget": 100},
    },
}


def test_snake_case_and_camel_case_requests_reach_the_backend_equal(server: RunningServer, fake: FakeBackend) -> None:
    for body in (CAMEL, SNAKE, MIXED):
        assert post(server, f"{VERTEX}:generateContent", body).status_code == 200
    camel, snake, mixed = (request.model_dump() for request in fake.requests)
    assert snake == camel and mixed == camel
    request = fake.requests[0]
    assert request.system_instruction is not None and request.system_instruction.parts[0].text == "be brief"
    config = request.generation_config
    assert config is not None and config.max_output_tokens == 5 and config.stop_sequences == ["END"]
    assert config.thinking_config == gc.ThinkingConfig(include_thoughts=True, thinking_budget=100)


SIGNATURE = bytes([0xFB, 0xFF, 0xBF, 0xFE])  # "+/+/" territory: URL-safe base64 differs


@pytest.mark.parametrize("padded", [True, False], ids=["padded", "unpadded"])
def test_url_safe_thought_signature_reaches_the_backend_as_standard_base64(
    server: RunningServer, fake: FakeBackend, padded: bool
) -> None:
    url_safe = base64.urlsafe_b64encode(SIGNATURE).decode()
    url_safe = url_safe if padded else url_safe.rstrip("=")
    assert set(url_safe) & set("-_")
    model_turn = {"role": "model", "parts": [{"text": "earlier", "thoughtSignature": url_safe}]}
    body = {"contents": [user("first"), model_turn, user("second")]}
    assert post(server, f"{GEMINI}:generateContent", body).status_code == 200
    received = fake.requests[-1].contents[1].parts[0].thought_signature
    assert received == base64.b64encode(SIGNATURE).decode()


def test_url_safe_inline_data_reaches_the_backend_as_standard_base64(server: RunningServer, fake: FakeBackend) -> None:
    data = bytes(range(250, 256)) * 3
    part = {"inlineData": {"mimeType": "image/png", "data": base64.urlsafe_b64encode(data).decode().rstrip("=")}}
    body = {"contents": [{"role": "user", "parts": [{"text": "look"}, part]}]}
    assert post(server, f"{VERTEX}:generateContent", body).status_code == 200
    inline = fake.requests[-1].contents[0].parts[1].inline_data
    assert inline is not None and inline.data == base64.b64encode(data).decode()


def test_bytes_that_are_not_base64_are_400(server: RunningServer, fake: FakeBackend) -> None:
    part = {"inlineData": {"mimeType": "image/png", "data": "not*base64!"}}
    response = post(server, f"{VERTEX}:generateContent", {"contents": [{"role": "user", "parts": [part]}]})
    assert_native_error(response, 400, "INVALID_ARGUMENT", "Base64 decoding failed")
    assert not fake.requests


# ---------------------------------------------------------------- request errors


@pytest.mark.parametrize("path", [VERTEX, EXPRESS, GEMINI], ids=["vertex", "express", "gemini"])
def test_unknown_field_is_400_in_native_shape(server: RunningServer, fake: FakeBackend, path: str) -> None:
    body = ask("hi", generationConfig={"maxOutputTokens": 5, "bogusKnob": 1})
    error = assert_native_error(post(server, f"{path}:generateContent", body), 400, "INVALID_ARGUMENT", "Unknown name")
    assert '"bogusKnob"' in error["message"] and "Cannot find field" in error["message"]
    assert not fake.requests


def test_unknown_field_names_it_in_bad_request_details(server: RunningServer) -> None:
    body = ask("hi", generationConfig={"bogusKnob": 1})
    error = assert_native_error(post(server, f"{VERTEX}:generateContent", body), 400, "INVALID_ARGUMENT")
    assert error["details"] and error["details"][0]["@type"] == BAD_REQUEST


def test_top_level_unknown_field_wording(server: RunningServer) -> None:
    response = post(server, f"{VERTEX}:generateContent", ask("hi", bogus=1))
    error = assert_native_error(response, 400, "INVALID_ARGUMENT")
    assert error["message"] == 'Invalid JSON payload received. Unknown name "bogus": Cannot find field.'


@pytest.mark.parametrize(
    ("config", "field"),
    [
        pytest.param({"candidateCount": 99}, "generationConfig.candidateCount", id="candidate-count-high"),
        pytest.param({"candidateCount": 0}, "generationConfig.candidateCount", id="candidate-count-zero"),
        pytest.param({"temperature": "hot"}, "generationConfig.temperature", id="wrong-type"),
        pytest.param(
            {"thinkingConfig": {"thinkingBudget": -5}}, "generationConfig.thinkingConfig.thinkingBudget", id="budget"
        ),
    ],
)
def test_invalid_value_is_400_naming_the_field(
    server: RunningServer, fake: FakeBackend, config: dict[str, Any], field: str
) -> None:
    response = post(server, f"{GEMINI}:generateContent", ask("hi", generationConfig=config))
    error = assert_native_error(response, 400, "INVALID_ARGUMENT", field)
    assert error["details"][0]["@type"] == BAD_REQUEST
    assert error["details"][0]["fieldViolations"][0]["field"] == field
    assert not fake.requests


def test_errors_are_pretty_printed_single_objects(server: RunningServer) -> None:
    response = post(server, f"{VERTEX}:generateContent", ask("hi", generationConfig={"candidateCount": 99}))
    assert response.text.startswith('{\n  "error": {\n')


def test_gemini_v1_errors_are_single_objects(server: RunningServer) -> None:
    response = post(server, f"/v1/models/{MODEL}:generateContent", ask("hi", generationConfig={"candidateCount": 99}))
    assert_native_error(response, 400, "INVALID_ARGUMENT", "candidateCount")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/v9/models", None, id="gemini-list"),
        pytest.param("GET", "/v9/publishers/google/models", None, id="vertex-list"),
        pytest.param("GET", "/v9/cachedContents", None, id="cache-list"),
        pytest.param(
            "POST", f"/v9/{PARENT}/cachedContents", {"model": VERTEX_CACHE_MODEL, **ask(WORD_LIST)}, id="cache-create"
        ),
    ],
)
def test_unknown_version_on_list_and_cache_routes_is_404(
    server: RunningServer, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=body, headers=AUTH)
    assert_native_error(response, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"contents": []}, id="no-contents"),
        pytest.param({"contents": [user("x") | {"parts": []}]}, id="no-parts"),
    ],
)
def test_empty_contents_is_400(server: RunningServer, fake: FakeBackend, body: dict[str, Any]) -> None:
    assert_native_error(post(server, f"{GEMINI}:generateContent", body), 400, "INVALID_ARGUMENT", "contents")
    assert not fake.requests


# ---------------------------------------------------------------- countTokens, computeTokens


@pytest.mark.parametrize("path", [VERTEX, EXPRESS, GEMINI, f"/v1/models/{MODEL}"])
def test_count_tokens(server: RunningServer, path: str) -> None:
    response = post(server, f"{path}:countTokens", ask(WORD_LIST, "one more"))
    assert response.status_code == 200, response.text
    body = response.json()
    counted = {"totalTokens": 6, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 6}]}
    if path in (VERTEX, EXPRESS):  # Vertex also counts the characters it bills: the text without whitespace
        counted["totalBillableCharacters"] = len("alphabetagammadeltaonemore")
    assert body == counted


def test_billable_characters_leave_whitespace_out(server: RunningServer) -> None:
    # A recorded Vertex countTokens: these two texts (30 and 26 characters) bill 47.
    body = ask("What is the capital of France?", systemInstruction={"parts": [{"text": "You are a helpful chatbot."}]})
    assert post(server, f"{VERTEX}:countTokens", body).json()["totalBillableCharacters"] == 47


def test_count_tokens_counts_the_system_instruction(server: RunningServer) -> None:
    body = ask(WORD_LIST, systemInstruction={"parts": [{"text": "be brief"}]})
    assert post(server, f"{VERTEX}:countTokens", body).json()["totalTokens"] == 6


def test_count_tokens_with_a_nested_generate_content_request(server: RunningServer) -> None:
    body = {"generateContentRequest": {"model": f"models/{MODEL}", **ask(WORD_LIST)}}
    response = post(server, f"{GEMINI}:countTokens", body)
    assert response.status_code == 200, response.text
    assert response.json()["totalTokens"] == 4


def test_compute_tokens(server: RunningServer) -> None:
    body = {"contents": [user("hello there"), {"role": "model", "parts": [{"text": "hi"}]}]}
    response = post(server, f"{VERTEX}:computeTokens", body)
    assert response.status_code == 200, response.text
    info = response.json()["tokensInfo"]
    assert [turn["role"] for turn in info] == ["user", "model"]
    assert info[0]["tokenIds"] == ["0", "1"]  # int64 as JSON strings
    assert [base64.b64decode(token) for token in info[0]["tokens"]] == [b"hello", b"there"]
    assert info[1] == {"tokens": [base64.b64encode(b"hi").decode()], "tokenIds": ["0"], "role": "model"}


# ---------------------------------------------------------------- models


def test_list_models_vertex(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/v1beta1/publishers/google/models", headers=AUTH)
    assert response.status_code == 200
    models = response.json()["publisherModels"]
    assert [m["name"] for m in models] == ["publishers/google/models/smollm2"]  # patterns are not listed
    assert models[0]["versionId"] and "generateContent" in models[0]["supportedGenerationMethods"]


def test_list_models_gemini(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/v1beta/models", headers=AUTH)
    assert response.status_code == 200
    assert [m["name"] for m in response.json()["models"]] == ["models/smollm2"]


def test_v1_models_serves_openai_and_gemini_lists(server: RunningServer) -> None:
    response = httpx.get(f"{server.url}/v1/models", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and "smollm2" in [card["id"] for card in body["data"]]
    assert [m["name"] for m in body["models"]] == ["models/smollm2"]


@pytest.mark.parametrize(
    ("path", "name"),
    [
        (f"/v1beta1/publishers/google/models/{MODEL}", f"publishers/google/models/{MODEL}"),
        (f"/v1beta/models/{MODEL}", f"models/{MODEL}"),
        (f"/v1/models/{MODEL}", f"models/{MODEL}"),
    ],
)
def test_get_model(server: RunningServer, path: str, name: str) -> None:
    response = httpx.get(f"{server.url}{path}", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"] == name and body["displayName"] == MODEL
    if path.startswith("/v1/models/"):  # OpenAI's retrieve shares the path: its fields are there too
        assert (body.pop("id"), body.pop("object"), body.pop("owned_by")) == (MODEL, "model", "openvertex")
        assert isinstance(body.pop("created"), int)
    assert_camel_case(body)


def test_get_unknown_model(narrow_server: RunningServer) -> None:
    gemini = httpx.get(f"{narrow_server.url}/v1beta/models/gemini-9", headers=AUTH)
    assert_native_error(gemini, 404, "NOT_FOUND", "is not found for API version v1beta")
    vertex = httpx.get(f"{narrow_server.url}/v1beta1/publishers/google/models/gemini-9", headers=AUTH)
    assert_native_error(vertex, 404, "NOT_FOUND", "Publisher Model `publishers/google/models/gemini-9`")


# ---------------------------------------------------------------- cachedContents


@dataclass(frozen=True)
class CacheScope:
    """Where one dialect keeps its caches, how it names their model, and where it generates."""

    collection: str
    model: str
    generate: str
    name_prefix: str

    def url(self, server: RunningServer, name: str) -> str:
        return f"{server.url}/{self.collection.split('/')[1]}/{name}"


SCOPES = {
    "vertex": CacheScope(f"/v1beta1/{PARENT}/cachedContents", VERTEX_CACHE_MODEL, VERTEX, f"{PARENT}/cachedContents/"),
    "gemini": CacheScope("/v1beta/cachedContents", f"models/{MODEL}", GEMINI, "cachedContents/"),
}
each_scope = pytest.mark.parametrize("dialect", sorted(SCOPES))


def create_cache(server: RunningServer, scope: CacheScope, **fields: Any) -> dict[str, Any]:
    """A cache of 7 tokens to the fake: "be brief" (system) + WORD_LIST + "noted"."""
    body = {
        "model": scope.model,
        "contents": [user(WORD_LIST), {"role": "model", "parts": [{"text": "noted"}]}],
        "systemInstruction": {"parts": [{"text": "be brief"}]},
        **fields,
    }
    response = post(server, scope.collection, body)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


@each_scope
def test_cache_lifecycle(server: RunningServer, fake: FakeBackend, dialect: str) -> None:
    scope = SCOPES[dialect]
    before = time.time()
    created = create_cache(server, scope, displayName="words")
    # contents, systemInstruction and ttl are input only
    assert set(created) == {"name", "displayName", "model", "createTime", "updateTime", "expireTime", "usageMetadata"}
    name = created["name"]
    assert name.startswith(scope.name_prefix) and name.removeprefix(scope.name_prefix).isdigit()
    assert created["model"] == scope.model
    assert created["usageMetadata"] == {"totalTokenCount": 7}
    assert parse_time(created["expireTime"]) == pytest.approx(before + 3600, abs=30)  # the default TTL
    assert name in fake.prefixes
    url = scope.url(server, name)

    got = httpx.get(url, headers=AUTH)
    assert got.status_code == 200 and got.json() == created

    patched = httpx.patch(url, json={"ttl": "600s"}, headers=AUTH)  # no updateMask, as the SDK sends
    assert patched.status_code == 200, patched.text
    assert parse_time(patched.json()["expireTime"]) == pytest.approx(time.time() + 600, abs=30)
    assert parse_time(patched.json()["updateTime"]) >= parse_time(created["updateTime"])

    for expire in ("2030-01-01T00:00:00Z", "2030-01-01T00:00:00+00:00"):
        patched = httpx.patch(url, json={"expireTime": expire}, headers=AUTH)
        assert patched.status_code == 200, patched.text
        assert parse_time(patched.json()["expireTime"]) == parse_time("2030-01-01T00:00:00+00:00")
    assert httpx.get(url, headers=AUTH).json()["expireTime"] == patched.json()["expireTime"]

    deleted = httpx.delete(url, headers=AUTH)
    assert deleted.status_code == 200 and deleted.json() == {}
    assert name not in fake.prefixes
    gone = httpx.get(url, headers=AUTH)
    if dialect == "vertex":
        assert_native_error(gone, 404, "NOT_FOUND", name.rpartition("/")[2])
    else:
        assert_native_error(gone, 403, "PERMISSION_DENIED", "CachedContent not found (or permission denied)")
    assert httpx.get(f"{server.url}{scope.collection}", headers=AUTH).json()["cachedContents"] == []


@each_scope
def test_cache_list_pages(server: RunningServer, dialect: str) -> None:
    scope = SCOPES[dialect]
    names = {create_cache(server, scope)["name"] for _ in range(2)}
    list_url = f"{server.url}{scope.collection}"
    first = httpx.get(list_url, params={"pageSize": 1}, headers=AUTH)
    assert first.status_code == 200, first.text
    page = first.json()
    assert len(page["cachedContents"]) == 1 and page["nextPageToken"]
    second = httpx.get(list_url, params={"pageSize": 1, "pageToken": page["nextPageToken"]}, headers=AUTH).json()
    assert len(second["cachedContents"]) == 1 and "nextPageToken" not in second
    assert {c["name"] for c in page["cachedContents"] + second["cachedContents"]} == names
    everything = httpx.get(list_url, headers=AUTH).json()
    assert {c["name"] for c in everything["cachedContents"]} == names and "nextPageToken" not in everything


@pytest.mark.parametrize(
    ("params", "field"),
    [({"pageSize": "ten"}, "page_size"), ({"pageSize": "-1"}, "page_size"), ({"pageToken": "garbage"}, "page_token")],
)
def test_cache_list_bad_paging_is_400(server: RunningServer, params: dict[str, str], field: str) -> None:
    response = httpx.get(f"{server.url}{SCOPES['vertex'].collection}", params=params, headers=AUTH)
    assert_native_error(response, 400, "INVALID_ARGUMENT", field)


def test_cache_lists_are_per_parent(server: RunningServer) -> None:
    mine = create_cache(server, SCOPES["vertex"])["name"]
    other = "projects/q/locations/l"
    theirs_scope = CacheScope(f"/v1/{other}/cachedContents", f"{other}/publishers/google/models/{MODEL}", "", "")
    theirs = create_cache(server, theirs_scope)["name"]
    root = create_cache(server, SCOPES["gemini"])["name"]

    def listed(path: str) -> list[str]:
        return [c["name"] for c in httpx.get(f"{server.url}{path}", headers=AUTH).json()["cachedContents"]]

    assert listed(f"/v1beta1/{PARENT}/cachedContents") == [mine]
    assert listed(f"/v1beta1/{other}/cachedContents") == [theirs]  # v1 and v1beta1 share them
    assert listed("/v1beta/cachedContents") == [root]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_unknown_cache_id_is_404_on_vertex(server: RunningServer, method: str) -> None:
    body = {"ttl": "600s"} if method == "PATCH" else None
    url = f"{server.url}/v1beta1/{PARENT}/cachedContents/123456789"
    response = httpx.request(method, url, json=body, headers=AUTH)
    assert_native_error(response, 404, "NOT_FOUND", "Not found: cached content metadata for 123456789.")


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_unknown_cache_id_is_403_on_gemini(server: RunningServer, method: str) -> None:
    body = {"ttl": "600s"} if method == "PATCH" else None
    response = httpx.request(method, f"{server.url}/v1beta/cachedContents/123456789", json=body, headers=AUTH)
    assert_native_error(response, 403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        pytest.param({"displayName": "renamed"}, "Only expire_time or ttl can be updated", id="other-field"),
        pytest.param({}, "must set ttl or expire_time", id="nothing"),
        pytest.param({"ttl": "600s", "expireTime": "2030-01-01T00:00:00Z"}, "not both", id="both"),
        pytest.param({"ttl": "ten minutes"}, "ttl", id="bad-ttl"),
        pytest.param({"expireTime": "2001-01-01T00:00:00Z"}, "must be in the future", id="past"),
    ],
)
def test_cache_update_rules(server: RunningServer, body: dict[str, Any], fragment: str) -> None:
    name = create_cache(server, SCOPES["vertex"])["name"]
    response = httpx.patch(f"{server.url}/v1beta1/{name}", json=body, headers=AUTH)
    assert_native_error(response, 400, "INVALID_ARGUMENT", fragment)


def test_cache_create_with_ttl(server: RunningServer) -> None:
    created = create_cache(server, SCOPES["gemini"], ttl="120s")
    assert parse_time(created["expireTime"]) == pytest.approx(time.time() + 120, abs=30)
    assert "ttl" not in created


def test_vertex_cache_needs_the_full_model_name(server: RunningServer) -> None:
    body = {"model": MODEL, "contents": [user(WORD_LIST)]}
    response = post(server, SCOPES["vertex"].collection, body)
    assert_native_error(response, 400, "INVALID_ARGUMENT", "is malformed and it should be in form of projects/")


@each_scope
def test_generate_with_a_cache_puts_its_contents_first(server: RunningServer, fake: FakeBackend, dialect: str) -> None:
    scope = SCOPES[dialect]
    name = create_cache(server, scope)["name"]
    fake.add([chunk("ok", finish="STOP", prompt=20)])
    response = post(server, f"{scope.generate}:generateContent", ask("question", cachedContent=name))
    assert response.status_code == 200, response.text
    received = fake.requests[-1]
    assert [c.parts[0].text for c in received.contents] == [WORD_LIST, "noted", "question"]
    assert [c.role for c in received.contents] == ["user", "model", "user"]
    assert received.system_instruction is not None and received.system_instruction.parts[0].text == "be brief"
    usage = response.json()["usageMetadata"]
    assert usage["cachedContentTokenCount"] == 7 and usage["promptTokenCount"] == 20
    assert usage["cacheTokensDetails"] == [{"modality": "TEXT", "tokenCount": 7}]


def test_stream_with_a_cache_reports_cached_tokens(server: RunningServer, fake: FakeBackend) -> None:
    name = create_cache(server, SCOPES["vertex"])["name"]
    fake.add([chunk("o"), chunk("k", finish="STOP", prompt=20)])
    events = sse_events(post(server, f"{VERTEX}:streamGenerateContent", ask("q", cachedContent=name), alt="sse"))
    assert events[-1]["usageMetadata"]["cachedContentTokenCount"] == 7


def test_count_tokens_with_a_cache_on_gemini(server: RunningServer) -> None:
    name = create_cache(server, SCOPES["gemini"])["name"]
    body = {"generateContentRequest": {"model": f"models/{MODEL}", **ask("one two", cachedContent=name)}}
    response = post(server, f"{GEMINI}:countTokens", body)
    assert response.status_code == 200, response.text
    assert response.json()["cachedContentTokenCount"] == 7


CONFLICT = {
    "vertex": "Tool config, tools and system instruction should not be set in the request when using cached content.",
    "gemini": "CachedContent can not be used with GenerateContent request setting system_instruction, tools or "
    "tool_config.",
}


@each_scope
@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({"systemInstruction": {"parts": [{"text": "be long"}]}}, id="system"),
        pytest.param({"tools": [{"functionDeclarations": [{"name": "f"}]}]}, id="tools"),
        pytest.param({"toolConfig": {"functionCallingConfig": {"mode": "AUTO"}}}, id="tool-config"),
    ],
)
def test_generate_with_a_cache_and_what_it_holds_is_400(
    server: RunningServer, fake: FakeBackend, dialect: str, extra: dict[str, Any]
) -> None:
    scope = SCOPES[dialect]
    name = create_cache(server, scope)["name"]
    response = post(server, f"{scope.generate}:generateContent", ask("q", cachedContent=name, **extra))
    assert assert_native_error(response, 400, "INVALID_ARGUMENT")["message"] == CONFLICT[dialect]
    assert not fake.requests


def test_generate_with_a_cache_of_another_model_is_400(server: RunningServer) -> None:
    name = create_cache(server, SCOPES["vertex"])["name"]
    other = f"/v1beta1/{PARENT}/publishers/google/models/gemini-2.5-pro:generateContent"
    assert_native_error(
        post(server, other, ask("q", cachedContent=name)), 400, "INVALID_ARGUMENT", "has to be the same"
    )


def test_generate_with_a_missing_cache(server: RunningServer) -> None:
    vertex = post(server, f"{VERTEX}:generateContent", ask("q", cachedContent=f"{PARENT}/cachedContents/42"))
    assert_native_error(vertex, 404, "NOT_FOUND")
    gemini = post(server, f"{GEMINI}:generateContent", ask("q", cachedContent="cachedContents/42"))
    assert_native_error(gemini, 403, "PERMISSION_DENIED")


@pytest.mark.parametrize(
    "placement",
    [
        pytest.param(lambda name: {"extra_body": {"google": {"cached_content": name}}}, id="extra_body"),
        pytest.param(lambda name: {"google": {"cached_content": name}}, id="top-level"),
    ],
)
def test_openai_surface_uses_a_cache(server: RunningServer, fake: FakeBackend, placement: Any) -> None:
    name = create_cache(server, SCOPES["vertex"])["name"]
    fake.add([chunk("ok", finish="STOP", prompt=20)])
    body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": "question"}], **placement(name)}
    response = httpx.post(server.chat_url, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    assert usage["prompt_tokens"] == 20 and usage["prompt_tokens_details"] == {"cached_tokens": 7}
    assert [c.parts[0].text for c in fake.requests[-1].contents] == [WORD_LIST, "noted", "question"]


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"{VERTEX}:generateContent"),
        ("POST", f"{GEMINI}:streamGenerateContent?alt=sse"),
        ("POST", f"{EXPRESS}:countTokens"),
        ("GET", "/v1beta/models"),
        ("GET", f"/v1beta1/publishers/google/models/{MODEL}"),
        ("GET", f"/v1beta1/{PARENT}/cachedContents"),
        ("DELETE", "/v1beta/cachedContents/1"),
    ],
)
def test_native_calls_need_a_credential(server: RunningServer, fake: FakeBackend, method: str, path: str) -> None:
    response = httpx.request(method, f"{server.url}{path}", json=ask("hi") if method == "POST" else None)
    assert_native_error(response, 401, "UNAUTHENTICATED", "missing required authentication credential")
    assert not fake.requests


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        pytest.param({}, {"key": "x"}, id="query-key"),
        pytest.param({"x-goog-api-key": "x"}, {}, id="api-key-header"),
        pytest.param({"Authorization": "Bearer x"}, {}, id="bearer"),
    ],
)
def test_native_credentials(server: RunningServer, headers: dict[str, str], params: dict[str, str]) -> None:
    url = f"{server.url}{GEMINI}:generateContent"
    assert httpx.post(url, json=ask("hi"), headers=headers, params=params).status_code == 200


def test_a_wrong_key_is_401(fake: FakeBackend, tmp_path: Path) -> None:
    with serve(Settings(port=0, state_dir=tmp_path, api_keys=["right"]), backends={"local": fake}) as keyed:
        url = f"{keyed.url}{EXPRESS}:generateContent"
        assert httpx.post(url, json=ask("hi"), params={"key": "right"}).status_code == 200
        wrong = httpx.post(url, json=ask("hi"), headers={"x-goog-api-key": "wrong"})
        assert_native_error(wrong, 401, "UNAUTHENTICATED", "invalid authentication credentials")


# ---------------------------------------------------------------- bounds and fields no backend here honours


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"temperature": 2.5}, "generationConfig.temperature"),
        ({"topP": -0.1}, "generationConfig.topP"),
        ({"topK": 0}, "generationConfig.topK"),
        ({"maxOutputTokens": 0}, "generationConfig.maxOutputTokens"),
        ({"presencePenalty": 2.0}, "generationConfig.presencePenalty"),
        ({"frequency_penalty": -3}, "generationConfig.frequencyPenalty"),
        ({"responseLogprobs": True, "logprobs": 5000}, "generationConfig.logprobs"),
        ({"logprobs": -1}, "generationConfig.logprobs"),
        ({"stopSequences": ["a", "b", "c", "d", "e", "f"]}, "generationConfig.stopSequences"),
        ({"stopSequences": [""]}, "generationConfig.stopSequences"),
        ({"thinkingConfig": {"thinkingLevel": "EXTREME"}}, "generationConfig.thinkingConfig.thinkingLevel"),
        ({"thinkingConfig": {"thinkingLevel": "LOW", "thinkingBudget": 10}}, "generationConfig.thinkingConfig"),
    ],
)
def test_generation_config_out_of_range_is_a_400_naming_the_field(
    server: RunningServer, config: dict[str, Any], field: str
) -> None:
    response = post(server, f"{VERTEX}:generateContent", ask("hi", generationConfig=config))
    error = assert_native_error(response, 400, "INVALID_ARGUMENT", field)
    assert error["details"][0]["fieldViolations"][0]["field"] == field


def test_count_tokens_takes_one_shape_of_request(server: RunningServer) -> None:
    body = {"contents": [user("a b")], "generateContentRequest": ask("c d")}
    assert_native_error(post(server, f"{GEMINI}:countTokens", body), 400, "INVALID_ARGUMENT", "generateContentRequest")


def test_a_cache_of_another_project_is_not_found(server: RunningServer) -> None:
    created = post(
        server, f"/v1beta1/{PARENT}/cachedContents", {"model": VERTEX_CACHE_MODEL, "contents": [user(WORD_LIST)]}
    )
    assert created.status_code == 200, created.text
    other = f"/v1beta1/projects/q/locations/l/publishers/google/models/{MODEL}:generateContent"
    response = post(server, other, ask("hi", cachedContent=created.json()["name"]))
    assert_native_error(response, 404, "NOT_FOUND")
    elsewhere = {"model": f"projects/q/locations/l/publishers/google/models/{MODEL}", "contents": [user(WORD_LIST)]}
    assert_native_error(post(server, f"/v1beta1/{PARENT}/cachedContents", elsewhere), 400, "INVALID_ARGUMENT", "model")


@pytest.mark.parametrize(
    ("path", "numbers"),
    [  # each dialect's own numbering: HARM_CATEGORY_HARASSMENT is 3 on Vertex, 7 on the Gemini API
        (VERTEX, {"mode": 2, "harassment": 3, "stop": 1}),
        (GEMINI, {"mode": 2, "harassment": 7, "stop": 1}),
    ],
)
def test_enums_as_numbers(server: RunningServer, fake: FakeBackend, path: str, numbers: dict[str, int]) -> None:
    """google-cloud-aiplatform's REST transport (LangChain's ChatVertexAI) and generativelanguage's
    send `$alt=json;enum-encoding=int` and write enums as numbers; the answer's enums are numbers."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "get_weather",
                        "parameters": {"type": 6, "properties": {"city": {"type": 1}}, "required": ["city"]},
                    }
                ]
            }
        ],
        "toolConfig": {"functionCallingConfig": {"mode": numbers["mode"]}},
        "safetySettings": [{"category": numbers["harassment"], "threshold": 4}],
        "generationConfig": {"responseModalities": [1], "mediaResolution": 1},
    }
    fake.add(
        [
            gc.GenerateContentResponse.model_validate(
                {
                    "candidates": [
                        {
                            "content": {
                                "role": "model",
                                "parts": [{"functionCall": {"name": "get_weather", "args": {}}}],
                            },
                            "finishReason": "STOP",
                            "safetyRatings": [{"category": "HARM_CATEGORY_HARASSMENT", "probability": "NEGLIGIBLE"}],
                        }
                    ],
                    "usageMetadata": {"promptTokenCount": 3, "totalTokenCount": 3},
                }
            )
        ]
    )
    url = f"{server.url}{path}:generateContent?$alt=json;enum-encoding=int"
    response = httpx.post(url, json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    received = fake.requests[-1]
    assert received.tool_config and received.tool_config.function_calling_config
    assert received.tool_config.function_calling_config.mode == "ANY"
    assert received.tools and received.tools[0].function_declarations
    assert received.tools[0].function_declarations[0].parameters == {
        "type": "OBJECT",
        "properties": {"city": {"type": "STRING"}},
        "required": ["city"],
    }
    assert received.safety_settings and received.safety_settings[0].category == "HARM_CATEGORY_HARASSMENT"
    assert received.safety_settings[0].threshold == "BLOCK_NONE"
    candidate = response.json()["candidates"][0]
    assert candidate["finishReason"] == numbers["stop"]
    assert candidate["safetyRatings"] == [{"category": numbers["harassment"], "probability": 1}]
    assert response.json()["usageMetadata"]["promptTokensDetails"] == [{"modality": 1, "tokenCount": 3}]

    named = httpx.post(f"{server.url}{path}:generateContent", json={"contents": body["contents"]}, headers=AUTH)
    assert named.json()["candidates"][0]["finishReason"] == "STOP"  # without the flag: names
    wrong = httpx.post(url, json={**body, "toolConfig": {"functionCallingConfig": {"mode": 42}}}, headers=AUTH)
    assert wrong.status_code == 400 and "mode" in wrong.text
