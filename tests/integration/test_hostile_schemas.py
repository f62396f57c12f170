"""Hostile and unlucky schemas on the real model: a clean 400 or valid JSON, never a 5xx, a hang or a crash."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, Field

from tests.integration.test_errors import assert_google_error
from tests.support.hostile import BY_NAME, CATALOGUE, HostileSchema, RawJSON, check_answer, check_refusal, encode_body
from tests.support.server import RunningServer

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"
ASK_JSON = [{"role": "user", "content": "Answer with JSON."}]
TIMEOUT = 60  # a hang fails the test instead of stalling the run


def _post(server: RunningServer, body: dict[str, Any]) -> httpx.Response:
    headers = {**AUTH, "Content-Type": "application/json"}
    response = httpx.post(server.chat_url, content=encode_body(body), headers=headers, timeout=TIMEOUT)
    assert response.status_code < 500, response.text[:2000]
    return response


def _response_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _sdk_response_format(schema: dict[str, Any]) -> ResponseFormatJSONSchema:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}


def _assert_alive(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_the_39_byte_schema_that_crashed_the_process(local_server: RunningServer) -> None:
    # {"type":"string","maxLength":100000} once became a grammar nested 100,000 deep (SIGSEGV).
    schema = {"type": "string", "maxLength": 100000}
    body = {"model": MODEL, "messages": ASK_JSON, "response_format": _response_format(schema), "max_tokens": 16}
    response = _post(local_server, body)
    if response.status_code == 400:
        assert_google_error(response, 400, "INVALID_ARGUMENT", "response_format")
    else:
        assert response.status_code == 200, response.text
        choice = response.json()["choices"][0]
        text = choice["message"]["content"]
        if choice["finish_reason"] == "length":  # 16 tokens may cut the string: a prefix of one, then
            assert text.startswith('"') and not any(ord(c) < 0x20 for c in text), text
        else:
            assert choice["finish_reason"] == "stop"
            value = json.loads(text, strict=True)
            assert isinstance(value, str) and len(value) <= 100000
    _assert_alive(local_server)


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.name for case in CATALOGUE])
def test_hostile_response_format(local_server: RunningServer, case: HostileSchema) -> None:
    body = {"model": MODEL, "messages": ASK_JSON, "response_format": _response_format(case.schema), "max_tokens": 48}
    response = _post(local_server, {**body, "seed": 0})
    if response.status_code == 400:
        message = assert_google_error(response, 400, "INVALID_ARGUMENT")
        check_refusal(case, message, param="response_format")
    else:
        assert response.status_code == 200, response.text[:2000]
        choice = response.json()["choices"][0]
        check_answer(case, choice["message"]["content"] or "", choice["finish_reason"], case.schema)
    _assert_alive(local_server)


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        payload = b'{"type": "integer"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/schema+json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def schema_host() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that would serve a remote schema, and counts who asks for one."""
    hits: list[str] = []
    handler = type("Handler", (_CountingHandler,), {"hits": hits})
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as httpd:
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
        httpd.shutdown()


def test_remote_refs_are_never_fetched(local_server: RunningServer, schema_host: tuple[str, list[str]]) -> None:
    base, hits = schema_host
    schemas = [
        {"$ref": f"{base}/x.json"},
        {"$id": f"{base}/root.json", "$ref": "other.json"},  # relative to a remote $id
        {"type": "object", "properties": {"a": {"$ref": f"{base}/a.json#/defs/x"}}, "required": ["a"]},
    ]
    for schema in schemas:
        body = {"model": MODEL, "messages": ASK_JSON, "response_format": _response_format(schema), "max_tokens": 16}
        message = assert_google_error(_post(local_server, body), 400, "INVALID_ARGUMENT", "response_format")
        assert "$ref" in message or "remote" in message.lower(), message
    assert hits == []


# Tool parameters must be objects: each case becomes the one property of an object, its $defs
# hoisted to the root so that "#/$defs/…" still resolves.
TOOL_CASES = [
    "string_maxlength_100k",
    "objects_nested_3000",
    "ref_cycle_a_b_a",
    "ref_chain_5000",
    "remote_ref",
    "enum_100k_strings",
    "pattern_lookahead",
    "integer_bounds_1e30",
    "minimum_above_maximum",
    "unknown_format",
    "unique_items",
    "not",
    "type_typo",
    "schema_is_a_string",
]


def _as_parameters(schema: Any) -> Any:
    if isinstance(schema, RawJSON):
        return RawJSON(f'{{"type": "object", "properties": {{"x": {schema.text}}}, "required": ["x"]}}')
    if not isinstance(schema, dict):
        return schema  # refused as it stands
    inner = {key: value for key, value in schema.items() if key != "$defs"}
    wrapped: dict[str, Any] = {
        "type": "object",
        "properties": {"x": inner},
        "required": ["x"],
        "additionalProperties": False,
    }
    if "$defs" in schema:
        wrapped["$defs"] = schema["$defs"]
    return wrapped


@pytest.mark.parametrize("name", TOOL_CASES)
def test_hostile_tool_parameters(local_server: RunningServer, name: str) -> None:
    case = BY_NAME[name]
    parameters = _as_parameters(case.schema)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Call the tool."}],
        "tools": [{"type": "function", "function": {"name": "record", "parameters": parameters}}],
        "tool_choice": {"type": "function", "function": {"name": "record"}},
        "max_tokens": 48,
        "seed": 0,
    }
    response = _post(local_server, body)
    if response.status_code == 400:
        check_refusal(case, assert_google_error(response, 400, "INVALID_ARGUMENT"), param="tools")
    else:
        assert response.status_code == 200, response.text[:2000]
        choice = response.json()["choices"][0]
        if not (choice["finish_reason"] == "length" and case.may_truncate):
            calls = choice["message"].get("tool_calls") or []
            assert calls and {call["function"]["name"] for call in calls} == {"record"}, choice
            assert not isinstance(parameters, RawJSON), f"{name}: a whole call is impossible in 48 tokens"
            for call in calls:
                jsonschema.validate(json.loads(call["function"]["arguments"], strict=True), parameters)
    _assert_alive(local_server)


def test_server_is_still_up_after_the_catalogue(local_server: RunningServer, client: openai.OpenAI) -> None:
    _assert_alive(local_server)
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert answer.choices[0].message.content


# ------------------------------------------------------------------- bounds under high temperature

BOUNDED: dict[str, dict[str, Any]] = {
    "integer_0_to_5": {"type": "integer", "minimum": 0, "maximum": 5},
    "number_exclusive_multiple_of_half": {
        "type": "number",
        "exclusiveMinimum": -2.5,
        "exclusiveMaximum": 10,
        "multipleOf": 0.5,
    },
}


@pytest.mark.parametrize("name", list(BOUNDED))
def test_numeric_bounds_hold_on_56_hot_samples(client: openai.OpenAI, name: str) -> None:
    schema = {"type": "object", "properties": {"n": BOUNDED[name]}, "required": ["n"]}
    answers = []
    for seed in range(7):  # 7 requests x 8 candidates: 56 samples at temperature 1.5
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Pick a number, any number, and answer as JSON."}],
            response_format=_sdk_response_format(schema),
            temperature=1.5,
            n=8,
            seed=seed,
            max_tokens=64,
        )
        answers += [choice.message.content or "" for choice in completion.choices]
    assert len(answers) == 56
    for text in answers:
        value = json.loads(text, strict=True)
        jsonschema.validate(value, schema)
        if name == "integer_0_to_5":
            assert isinstance(value["n"], int) and 0 <= value["n"] <= 5, text


def test_strings_are_strict_json_under_high_temperature(client: openai.OpenAI) -> None:
    # Newlines and tabs are what the prompt invites; they must come out escaped, never raw.
    schema = {
        "type": "object",
        "properties": {"poem": {"type": "string", "maxLength": 40}, "tabs": {"type": "string", "maxLength": 10}},
        "required": ["poem", "tabs"],
        "additionalProperties": False,
    }
    prompt = "Write a poem of several lines, with line breaks\nand\ttabs, and some tab characters, as JSON."
    for seed in range(2):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            response_format=_sdk_response_format(schema),
            temperature=1.5,
            n=8,
            seed=seed,
            max_tokens=200,
        )
        for choice in completion.choices:
            assert choice.finish_reason == "stop", choice.message.content
            jsonschema.validate(json.loads(choice.message.content or "", strict=True), schema)


# --------------------------------------------------------------- nested pydantic models ($defs/$ref)


class Address(BaseModel):
    city: str = Field(max_length=20)
    postcode: str = Field(pattern=r"^[0-9]{5}$")


class Person(BaseModel):
    name: str = Field(max_length=20)
    age: int = Field(ge=0, le=120)
    home: Address
    previous: list[Address] = Field(max_length=2)


PERSON_PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "Record the person described."},
    {"role": "user", "content": "Ada, 36, lives in Paris (75001) and lived in Lyon (69001) before."},
]


def test_pydantic_function_tool_with_nested_models(client: openai.OpenAI) -> None:
    tool = openai.pydantic_function_tool(Person, name="record_person")
    assert "$defs" in json.dumps(tool["function"].get("parameters"))
    for seed in range(3):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=PERSON_PROMPT,
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "record_person"}},
            seed=seed,
            max_tokens=300,
        )
        calls = completion.choices[0].message.tool_calls or []
        assert calls, completion.choices[0]
        for call in calls:
            assert call.type == "function" and call.function.name == "record_person"
            Person.model_validate_json(call.function.arguments)


def test_parse_tool_call_into_a_nested_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL,
        messages=PERSON_PROMPT,
        tools=[openai.pydantic_function_tool(Person, name="record_person")],
        tool_choice={"type": "function", "function": {"name": "record_person"}},
        max_tokens=300,
    )
    calls = completion.choices[0].message.tool_calls or []
    assert calls, completion.choices[0]
    for call in calls:
        assert call.type == "function"
        assert isinstance(call.function.parsed_arguments, Person)


def test_parse_response_format_into_a_nested_model(client: openai.OpenAI) -> None:
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=MODEL, messages=PERSON_PROMPT, response_format=Person, seed=seed, max_tokens=300
        )
        assert isinstance(completion.choices[0].message.parsed, Person), completion.choices[0].message.content
    beta = client.beta.chat.completions.parse(
        model=MODEL, messages=PERSON_PROMPT, response_format=Person, max_tokens=300
    )
    assert isinstance(beta.choices[0].message.parsed, Person)
