"""The HTTP edge under hostile and unlucky clients: JSON limits, hang-ups, and /openapi.json."""

from __future__ import annotations

import asyncio
import json
import re
import select
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import jsonschema
import pytest

from openvertex.app import create_app
from openvertex.backends.base import BackendLoad, CacheUsage, Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_errors import assert_google_error
from tests.integration.test_local_capacity import ENDLESS, metric, wait_for_metric
from tests.support.server import VERTEX_PATH, RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"
HELLO = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
SHORT = {**HELLO, "max_tokens": 4}
# Greedy thinking with its thoughts hidden: the answer sends nothing at all while it reasons.
HIDDEN_THINKING = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Plan a three-day trip to Rome with a budget of 500 euros."}],
    "temperature": 0,
    "max_tokens": 900,
    "extra_body": {"google": {"thinking_config": {"thinking_budget": 2000, "include_thoughts": False}}},
}


def _post(server: RunningServer, body: bytes) -> httpx.Response:
    headers = {**AUTH, "content-type": "application/json"}
    return httpx.post(server.chat_url, content=body, headers=headers, timeout=60)


def _assert_still_serving(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
    response = httpx.post(server.chat_url, json=HELLO, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- JSON limits


def _nested(depth: int) -> bytes:
    return b'{"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + (
        b"[" * depth + b"]" * depth + b"}"
    )


@pytest.mark.parametrize("depth", [5000, 200, 65])
def test_deep_json_is_refused_naming_the_limit(fake_server: RunningServer, depth: int) -> None:
    response = _post(fake_server, _nested(depth))
    assert_google_error(response, 400, "INVALID_ARGUMENT", "Nesting depth exceeds the limit of 64.")
    _assert_still_serving(fake_server)


def test_nesting_within_the_limit_is_accepted(fake_server: RunningServer) -> None:
    assert _post(fake_server, _nested(60)).status_code == 200


@pytest.mark.parametrize(
    ("literal", "fragment"),
    [
        (b"1" * 101, "a number longer than 100 characters"),
        (b"0." + b"5" * 120, "a number longer than 100 characters"),
        (b"NaN", "NaN and Infinity are not JSON"),
        (b"-Infinity", "NaN and Infinity are not JSON"),
        (b"1e999", "Number out of range"),
    ],
)
def test_numbers_json_cannot_carry_are_refused(fake_server: RunningServer, literal: bytes, fragment: str) -> None:
    body = (
        b'{"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}], "temperature": '
        + literal
        + b"}"
    )
    message = assert_google_error(_post(fake_server, body), 400, "INVALID_ARGUMENT", fragment)
    assert message.startswith("Invalid JSON payload received.")
    _assert_still_serving(fake_server)


def test_a_lone_surrogate_is_refused(fake_server: RunningServer) -> None:
    body = b'{"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    assert_google_error(_post(fake_server, body), 400, "INVALID_ARGUMENT", "lone UTF-16 surrogate")


@pytest.fixture
def roomy_fake_server(fake: FakeBackend) -> Iterator[RunningServer]:
    """Bodies past the inline-parse threshold (parsed on a worker thread)."""
    with serve(Settings(port=0, max_body_bytes=4 * 1024 * 1024), backends={"local": fake}) as server:
        yield server


def test_large_bodies_get_the_same_answers(roomy_fake_server: RunningServer) -> None:
    padding = "x" * (1024 * 1024)
    deep = _nested(100).replace(b'"content": "hi"', f'"content": "{padding}"'.encode())
    assert_google_error(_post(roomy_fake_server, deep), 400, "INVALID_ARGUMENT", "Nesting depth exceeds")
    valid = {**HELLO, "messages": [{"role": "user", "content": padding}]}
    response = httpx.post(roomy_fake_server.chat_url, json=valid, headers=AUTH, timeout=60)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == padding


# ---------------------------------------------------------------- /openapi.json and /v1/models


@pytest.fixture
def document(fake_server: RunningServer) -> dict[str, Any]:
    response = httpx.get(f"{fake_server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    return body


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def _schema_validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component; its "#/components/…" references resolve within the document."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return jsonschema.Draft202012Validator(schema)


def test_openapi_documents_every_route(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    app = create_app(Settings(port=0), backends={"local": FakeBackend()})
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)  # type: ignore[attr-defined]
        assert path in document["paths"], path
        for method in route.methods - {"HEAD"}:  # type: ignore[attr-defined]
            operation = document["paths"][path][method.lower()]
            assert operation["responses"]["200"]["content"], path
    chat = document["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "404", "429", "500"} <= set(chat["responses"])


def test_openapi_schemas_resolve_and_are_valid(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert {"ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", "ModelList", "ErrorResponse"} <= set(
        schemas
    )
    for ref in set(_refs(document)):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    assert "$defs" not in json.dumps(document)


def test_real_answers_match_the_document(fake_server: RunningServer, document: dict[str, Any]) -> None:
    request = {**HELLO, "extra_body": {"google": {"thinking_config": {"include_thoughts": False}}}}
    _schema_validator(document, "ChatCompletionRequest").validate(request)
    completion = httpx.post(fake_server.chat_url, json=request, headers=AUTH, timeout=60)
    _schema_validator(document, "ChatCompletion").validate(completion.json())
    with httpx.stream("POST", fake_server.chat_url, json={**HELLO, "stream": True}, headers=AUTH) as stream:
        events = [line.removeprefix("data: ") for line in stream.iter_lines() if line]
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        _schema_validator(document, "ChatCompletionChunk").validate(json.loads(event))
    models = httpx.get(f"{fake_server.url}/v1/models", headers=AUTH)
    _schema_validator(document, "ModelList").validate(models.json())
    error = httpx.post(fake_server.chat_url, json={"messages": []}, headers=AUTH)
    assert error.status_code == 400
    _schema_validator(document, "ErrorResponse").validate(error.json())
    with pytest.raises(jsonschema.ValidationError):
        _schema_validator(document, "ChatCompletionRequest").validate({**HELLO, "messages": "hi"})


def test_models_report_their_output_limit() -> None:
    fake = FakeBackend(capabilities=Capabilities(max_output_tokens=1024))
    with serve(Settings(port=0), backends={"local": fake}) as server:
        cards = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]
    assert cards and all(card["max_output_tokens"] == 1024 for card in cards)


def test_the_local_model_reports_its_output_limit(local_server: RunningServer) -> None:
    cards = httpx.get(f"{local_server.url}/v1/models", headers=AUTH).json()["data"]
    writers = [card for card in cards if "embedding" not in card["id"]]  # embedding models write nothing
    assert writers and all(card["max_output_tokens"] == 1024 for card in writers)
    assert all("max_output_tokens" not in card for card in cards if card not in writers)


def test_models_without_a_declared_limit_leave_it_out(fake_server: RunningServer) -> None:
    cards = httpx.get(f"{fake_server.url}/v1/models", headers=AUTH).json()["data"]
    assert cards and all("max_output_tokens" not in card for card in cards)


# ---------------------------------------------------------------- disconnects


def _open(server: RunningServer, body: dict[str, Any]) -> socket.socket:
    """A request on a raw socket, so the test decides when the client hangs up."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {VERTEX_PATH}/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(head.encode() + payload)
    return sock


def _nothing_received(sock: socket.socket) -> bool:
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


def _wait_until(condition: Callable[[], bool], what: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _cancelled_count(server: RunningServer) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r'^openvertex_requests_total\{code="499",route="chat_completions"\} (\S+)$', text, re.MULTILINE)
    return int(float(match.group(1))) if match else 0


class _Hanging:
    """A backend that never answers, and records whether its work was cancelled and closed."""

    kind = "hanging"
    capabilities = Capabilities(thinking=True)

    def __init__(self) -> None:
        self.started = 0
        self.closed = 0

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()

    def ready(self) -> bool:
        return True

    def load(self) -> BackendLoad:
        return BackendLoad(running=self.started - self.closed)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        async for chunk in self.stream(request, model=model):
            return chunk
        raise AssertionError("unreachable")

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        self.started += 1
        try:
            if "after a chunk" in str(request.contents):
                part = gc.Part(text="partial")
                yield gc.GenerateContentResponse(candidates=[gc.Candidate(content=gc.Content(parts=[part]))])
            await asyncio.Event().wait()  # forever, as hidden thinking seems from outside
            yield gc.GenerateContentResponse()
        finally:
            self.closed += 1


@pytest.mark.parametrize(("stream", "text"), [(False, "hello"), (True, "before any byte"), (True, "after a chunk")])
def test_a_hang_up_cancels_the_backend_work(stream: bool, text: str) -> None:
    hanging = _Hanging()
    with serve(Settings(port=0), backends={"local": hanging}) as server:
        sock = _open(server, {**HELLO, "messages": [{"role": "user", "content": text}], "stream": stream})
        _wait_until(lambda: hanging.started == 1, "the backend started")
        if text == "after a chunk":
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        else:
            assert _nothing_received(sock)
        sock.close()
        _wait_until(lambda: hanging.closed == 1, "the backend's generator was closed", timeout_s=30)
        if text != "after a chunk":
            _wait_until(lambda: _cancelled_count(server) == 1, "a 499 was counted", timeout_s=30)


def test_a_hang_up_in_the_middle_of_the_body_is_no_server_error(fake_server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", fake_server.port), timeout=30)
    sock.sendall(
        f"POST {VERTEX_PATH}/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer test\r\n"
        'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model": '.encode()
    )
    sock.close()  # the headers have started a request; its body never comes
    _wait_until(lambda: _cancelled_count(fake_server) == 1, "the hang-up was counted as 499", timeout_s=30)
    assert 'code="500"' not in httpx.get(f"{fake_server.url}/metrics").text
    _assert_still_serving(fake_server)


def _one_slot() -> Settings:
    local = LocalBackendSettings(n_parallel=1, max_waiting=4, n_ctx=1024)
    return Settings(port=0, backends={"local": local})


def _hang_up_then_next_runs(server: RunningServer, sock: socket.socket) -> None:
    """With one slot busy and a short request queued behind it, hang up: the queued one runs."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        queued = pool.submit(httpx.post, server.chat_url, json=SHORT, headers=AUTH, timeout=600)
        wait_for_metric(server, "openvertex_requests_waiting", 1, timeout_s=60)
        sock.close()
        response = queued.result()
    assert response.status_code == 200, response.text
    wait_for_metric(server, "openvertex_sequences_running", 0, timeout_s=60)
    _wait_until(lambda: _cancelled_count(server) == 1, "the hang-up was counted as 499", timeout_s=30)


def test_a_non_streaming_client_that_hangs_up_frees_its_slot() -> None:
    with serve(_one_slot()) as server:
        before = metric(server, "openvertex_tokens_generated_total")
        # Would fill the context (~1,000 tokens): the grammar wants 3,000 array items.
        sock = _open(server, {**ENDLESS, "max_tokens": 2000})
        wait_for_metric(server, "openvertex_sequences_running", 1, timeout_s=120)
        _wait_until(lambda: metric(server, "openvertex_tokens_generated_total") > before, "a first token")
        _hang_up_then_next_runs(server, sock)
        # Stopped within a step or two of the hang-up, far from the end it was heading for.
        assert metric(server, "openvertex_tokens_generated_total") - before < 500


def test_a_stream_that_hangs_up_while_thinking_frees_its_slot() -> None:
    with serve(_one_slot()) as server:
        before = metric(server, "openvertex_tokens_generated_total")
        sock = _open(server, {**HIDDEN_THINKING, "stream": True})
        wait_for_metric(server, "openvertex_sequences_running", 1, timeout_s=120)
        _wait_until(lambda: metric(server, "openvertex_tokens_generated_total") >= before + 8, "eight thoughts")
        assert _nothing_received(sock)  # hidden thoughts: not even the status line yet
        _hang_up_then_next_runs(server, sock)
        assert metric(server, "openvertex_tokens_generated_total") - before < 500
