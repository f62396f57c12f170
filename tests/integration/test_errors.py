"""Every failure path answers in Google's shape: [{"error": {"code", "message", "status"}}]."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.errors import ResourceExhaustedError
from openvertex.protocol import generate_content as gc
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"
USER = [{"role": "user", "content": "Hi"}]


def _body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": USER, **fields}


def assert_google_error(response: httpx.Response, code: int, status: str, fragment: str = "") -> str:
    assert response.status_code == code, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, list) and len(body) == 1
    assert set(body[0]) == {"error"}
    error = body[0]["error"]
    assert set(error) == {"code", "message", "status"}
    assert (error["code"], error["status"]) == (code, status)
    assert fragment in error["message"]
    return str(error["message"])


# (case id, JSON body or raw bytes, expected message fragment) — all 400 INVALID_ARGUMENT.
INVALID = [
    ("invalid_json", b'{"model": "x", "messages": [', "Invalid JSON payload"),
    ("not_an_object", b'[{"role": "user"}]', "Expected a JSON object"),
    ("not_utf8", b'\xff\xfe{"a": 1}', "Invalid JSON payload"),
    ("missing_messages", {"model": MODEL}, "messages"),
    ("empty_messages", _body(messages=[]), "messages"),
    ("messages_not_list", _body(messages="hi"), "messages"),
    ("unknown_role", _body(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    ("content_wrong_type", _body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (
        "part_text_wrong_type",
        _body(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
        "messages[0].content[0].text",
    ),
    (
        "part_unknown_type",
        _body(messages=[{"role": "user", "content": [{"type": "video", "video": "x"}]}]),
        "messages[0].content[0].type",
    ),
    (
        "part_missing_payload",
        _body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
        "messages[0].content[0]",
    ),
    (
        "bad_image_uri",
        _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "ftp://x/y.png"}]}]),
        "messages[0].content[0].image_url",
    ),
    (
        "bad_data_uri",
        _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png,abc"}]}]),
        "data URI",
    ),
    (
        "bad_audio_format",
        _body(
            messages=[
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}]}
            ]
        ),
        "input_audio.format",
    ),
    ("only_system", _body(messages=[{"role": "system", "content": "x"}]), "non-system message"),
    ("user_without_content", _body(messages=[{"role": "user"}]), "messages[0].content"),
    ("temperature_type", _body(temperature="hot"), "temperature"),
    ("temperature_range", _body(temperature=3), "temperature"),
    ("top_p_range", _body(top_p=1.5), "top_p"),
    ("max_tokens_zero", _body(max_tokens=0), "max_tokens"),
    ("n_zero", _body(n=0), "n"),
    ("n_too_many", _body(n=9), "candidateCount must be between 1 and 8"),
    ("penalty_range", _body(presence_penalty=5), "presence_penalty"),
    ("stop_too_many", _body(stop=["a", "b", "c", "d", "e", "f"]), "stop"),
    ("stop_empty", _body(stop=[""]), "stop[0]"),
    ("response_format_unknown", _body(response_format={"type": "yaml"}), "response_format.type"),
    ("json_schema_missing", _body(response_format={"type": "json_schema"}), "response_format.json_schema"),
    (
        "json_schema_recursive",
        _body(
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "T",
                    "schema": {
                        "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
                        "$ref": "#/$defs/node",
                    },
                },
            }
        ),
        "recursive",
    ),
    ("reasoning_effort_unknown", _body(reasoning_effort="extreme"), "reasoning_effort"),
    (
        "reasoning_and_thinking_config",
        _body(reasoning_effort="low", extra_body={"google": {"thinking_config": {"thinking_budget": 100}}}),
        "cannot be used together",
    ),
    ("google_unknown_key", _body(extra_body={"google": {"thinking": {}}}), 'Unknown name "thinking"'),
    (
        "google_bad_type",
        _body(extra_body={"google": {"thought_tag_marker": 7}}),
        "extra_body.google.thought_tag_marker",
    ),
    ("tool_choice_unknown", _body(tool_choice="sometimes"), "tool_choice"),
    ("tool_choice_without_tools", _body(tool_choice="required"), "tool_choice: a function must be called"),
    ("tool_bad_name", _body(tools=[{"type": "function", "function": {"name": "9lives"}}]), "tools[0].function.name"),
    (
        "tool_choice_undeclared",
        _body(
            tools=[{"type": "function", "function": {"name": "a"}}],
            tool_choice={"type": "function", "function": {"name": "b"}},
        ),
        "tool_choice",
    ),
    (
        "tool_arguments_not_json",
        _body(
            messages=[
                *USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}],
                },
            ]
        ),
        "messages[1].tool_calls[0].function.arguments",
    ),
    (
        "tool_result_dangling_id",
        _body(messages=[*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]),
        "messages[1].tool_call_id",
    ),
    ("modalities_unknown", _body(modalities=["smell"]), "modalities"),
    ("model_wrong_type", _body(model=5), "model"),
]


@pytest.fixture(scope="module")
def catalogue_server() -> Iterator[RunningServer]:
    with serve(Settings(port=0), backends={"local": FakeBackend()}) as server:
        yield server


@pytest.mark.parametrize(("case", "body", "fragment"), INVALID, ids=[case for case, _, _ in INVALID])
def test_malformed_request_is_a_400_naming_the_problem(
    catalogue_server: RunningServer, case: str, body: Any, fragment: str
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(catalogue_server.chat_url, content=content, headers=AUTH)
    assert_google_error(response, 400, "INVALID_ARGUMENT", fragment)


def test_missing_model_is_a_400(fake_server: RunningServer) -> None:
    response = httpx.post(fake_server.chat_url, json={"messages": USER}, headers=AUTH)
    assert_google_error(response, 400, "INVALID_ARGUMENT", "model")


def test_missing_credentials_is_401(fake_server: RunningServer) -> None:
    assert_google_error(httpx.post(fake_server.chat_url, json=_body()), 401, "UNAUTHENTICATED")
    assert_google_error(
        httpx.post(fake_server.chat_url, json=_body(), headers={"Authorization": "Basic abc"}), 401, "UNAUTHENTICATED"
    )


def test_unknown_model_is_404(fake_server: RunningServer) -> None:
    response = httpx.post(fake_server.chat_url, json=_body(model="meta/llama-99"), headers=AUTH)
    assert_google_error(response, 404, "NOT_FOUND", "meta/llama-99")


def test_unknown_endpoint_and_path_are_404(fake_server: RunningServer) -> None:
    endpoint = fake_server.chat_url.replace("/openapi/", "/1234567890/")
    assert_google_error(httpx.post(endpoint, json=_body(), headers=AUTH), 404, "NOT_FOUND", "1234567890")
    assert_google_error(httpx.get(fake_server.chat_url, headers=AUTH), 405, "NOT_FOUND")
    # Paths outside the OpenAI-compatible surface answer in the native shape: one object.
    unknown = httpx.post(f"{fake_server.url}/v2/nothing", json=_body(), headers=AUTH)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["status"] == "NOT_FOUND"


def test_body_over_the_limit_is_rejected(fake_server: RunningServer) -> None:
    big = _body(messages=[{"role": "user", "content": "x" * 70_000}])
    assert_google_error(
        httpx.post(fake_server.chat_url, json=big, headers=AUTH), 400, "INVALID_ARGUMENT", "exceeds the limit"
    )

    def chunked() -> Any:  # no Content-Length: the limit holds while reading
        yield b'{"model": "x", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}]}'

    response = httpx.post(fake_server.chat_url, content=chunked(), headers=AUTH)
    assert_google_error(response, 400, "INVALID_ARGUMENT", "exceeds the limit")


def test_unsupported_feature_is_a_clear_400_not_a_silent_drop() -> None:
    from openvertex.backends.base import Capabilities

    text_only = FakeBackend(capabilities=Capabilities())
    with serve(Settings(port=0), backends={"local": text_only}) as server:
        cases = [
            (
                _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": "gs://b/cat.jpg"}]}]),
                "messages[0].content[0]",
            ),
            (_body(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
            (_body(reasoning_effort="high"), "reasoning_effort"),
            (_body(modalities=["image"]), "modalities"),
            (_body(web_search_options={}), "web_search_options"),
            (_body(extra_body={"google": {"cached_content": "cachedContents/1"}}), "cached_content"),
            (
                _body(
                    extra_body={
                        "google": {
                            "safety_settings": [
                                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_LOW_AND_ABOVE"}
                            ]
                        }
                    }
                ),
                "safety_settings[0]",
            ),
            (_body(extra_body={"google": {"tools": [{"google_search": {}}]}}), "extra_body.google.tools[0]"),
        ]
        for body, fragment in cases:
            message = assert_google_error(
                httpx.post(server.chat_url, json=body, headers=AUTH), 400, "INVALID_ARGUMENT", fragment
            )
            assert "not supported" in message
        assert text_only.requests == []  # rejected before reaching the backend
        # What any model honours is accepted: no thinking, non-blocking safety settings.
        ok = _body(
            reasoning_effort="none",
            extra_body={"google": {"safety_settings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "OFF"}]}},
        )
        assert httpx.post(server.chat_url, json=ok, headers=AUTH).status_code == 200


def test_backend_error_keeps_its_status(fake_server: RunningServer, fake: FakeBackend) -> None:
    fake.add(ResourceExhaustedError("Resource exhausted. Please try again later."))
    response = httpx.post(fake_server.chat_url, json=_body(), headers=AUTH)
    assert_google_error(response, 429, "RESOURCE_EXHAUSTED", "try again")


def test_internal_error_hides_the_stack_trace(fake_server: RunningServer, fake: FakeBackend) -> None:
    fake.add(RuntimeError("secret detail /home/user/app.py line 3"))
    message = assert_google_error(httpx.post(fake_server.chat_url, json=_body(), headers=AUTH), 500, "INTERNAL")
    assert "secret" not in message and "Traceback" not in message


def test_error_after_the_stream_started_is_one_error_event(fake_server: RunningServer, fake: FakeBackend) -> None:
    first = gc.GenerateContentResponse(
        candidates=[gc.Candidate(index=0, content=gc.Content(role="model", parts=[gc.Part(text="Hel")]))]
    )
    fake.add([first, ResourceExhaustedError("Resource exhausted.")])
    with httpx.stream("POST", fake_server.chat_url, json=_body(stream=True), headers=AUTH) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert events[0].startswith("data: {") and json.loads(events[0][6:])["choices"][0]["delta"]["content"] == "Hel"
    assert json.loads(events[1][6:]) == {
        "error": {"code": 429, "message": "Resource exhausted.", "status": "RESOURCE_EXHAUSTED"}
    }
    assert len(events) == 2  # the stream ends: no [DONE]


def test_error_before_the_first_chunk_gets_a_real_status(fake_server: RunningServer, fake: FakeBackend) -> None:
    fake.add([ResourceExhaustedError("Resource exhausted.")])
    response = httpx.post(fake_server.chat_url, json=_body(stream=True), headers=AUTH)
    assert_google_error(response, 429, "RESOURCE_EXHAUSTED")


def test_openai_sdk_sees_the_google_body(fake_server: RunningServer) -> None:
    with (
        openai.OpenAI(base_url=fake_server.sdk_base_url, api_key="test", max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError) as raised,
    ):
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], n=9)
    assert raised.value.status_code == 400
    assert isinstance(raised.value.body, list)
    assert raised.value.body[0]["error"]["status"] == "INVALID_ARGUMENT"
