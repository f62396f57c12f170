"""The Gemini backend against a real server speaking the real wire: a second openvertex serving
the native API on the embedded model (the session's `local_server`), and scripted stubs for the
failures a real server does not produce on demand. Everything on loopback."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from openvertex.settings import GeminiBackendSettings, ModelRoute, Settings
from tests.integration.test_local_capacity import metric
from tests.support.google_token import ACCESS_TOKEN, token_endpoint
from tests.support.server import RunningServer, serve
from tests.support.stub import Reply, stub_server

MODEL = "gemini-2.5-flash"
ANSWER = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "Hello", "thoughtSignature": "c2ln"}]},
            "finishReason": "STOP",
            "safetyRatings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "probability": "NEGLIGIBLE"}],
            "groundingMetadata": {"webSearchQueries": ["hello"]},
        }
    ],
    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1, "totalTokenCount": 4},
    "modelVersion": MODEL,
}


def _gateway(state_dir: Path, **gemini: Any) -> Settings:
    backend = GeminiBackendSettings(type="gemini", **gemini)
    return Settings(
        port=0,
        state_dir=state_dir,
        backends={"gemini": backend},
        routes=[ModelRoute(model="google/*", backend="gemini")],
        request_timeout_s=120,
    )


@pytest.fixture(scope="module")
def gateway(local_server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """openvertex in front of Gemini, Gemini being the other openvertex (Vertex AI with an API key and a project)."""
    settings = _gateway(
        tmp_path_factory.mktemp("gateway"),
        api="vertex",
        project="upstream-project",
        location="us-central1",
        api_key="upstream-key",
        base_url=local_server.url,
    )
    with serve(settings) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(gateway: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.sdk_base_url, api_key="test", max_retries=0) as client:
        yield client


def _genai(server: RunningServer) -> genai.Client:
    token = google.oauth2.credentials.Credentials(token="test")
    options = types.HttpOptions(base_url=server.url)
    return genai.Client(vertexai=True, project="p", location="us-central1", credentials=token, http_options=options)


def test_text_through_the_openai_surface(sdk: openai.OpenAI, gateway: RunningServer) -> None:
    completion = sdk.chat.completions.create(
        model=f"google/{MODEL}", messages=[{"role": "user", "content": "Say hello."}], max_tokens=12, seed=1
    )
    assert completion.choices[0].message.content
    assert completion.usage and completion.usage.prompt_tokens > 0
    assert metric_by_backend(gateway, "openvertex_upstream_requests_total") >= 1


def metric_by_backend(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f'{name}{{backend="gemini"}}')
    )


def test_stream_through_the_openai_surface(sdk: openai.OpenAI) -> None:
    stream = sdk.chat.completions.create(
        model=f"google/{MODEL}", messages=[{"role": "user", "content": "Count to five."}], max_tokens=16, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None


def test_native_generate_and_count_through_the_gateway(gateway: RunningServer) -> None:
    client = _genai(gateway)
    response = client.models.generate_content(
        model=MODEL, contents="Say hi.", config=types.GenerateContentConfig(max_output_tokens=8)
    )
    assert response.text and response.model_version == MODEL
    counted = client.models.count_tokens(model=MODEL, contents="Say hi.")
    assert counted.total_tokens and counted.total_tokens > 0


def test_tools_with_streamed_arguments_and_signatures(sdk: openai.OpenAI) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    question = [{"role": "user", "content": "Weather in Paris?"}]
    stream = sdk.chat.completions.create(
        model=f"google/{MODEL}",
        messages=question,  # type: ignore[arg-type]
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=48,
        stream=True,
        extra_body={"extra_body": {"google": {"stream_function_call_arguments": True}}},
    )
    # The first call's pieces (the model may start a second one that max_tokens cuts short).
    pieces = [
        call for chunk in stream if chunk.choices for call in chunk.choices[0].delta.tool_calls or [] if call.index == 0
    ]
    assert len(pieces) > 1  # arguments in pieces, from the upstream's partialArgs
    arguments = json.loads("".join(piece.function.arguments or "" for piece in pieces if piece.function))
    assert isinstance(arguments.get("city"), str)
    signature = next(p.model_extra["extra_content"]["google"]["thought_signature"] for p in pieces if p.model_extra)
    # The upstream issued the signature and checks it: given back through the gateway, it passes.
    call = {
        "id": pieces[0].id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(arguments)},
    }
    call["extra_content"] = {"google": {"thought_signature": signature}}
    follow_up = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": pieces[0].id, "content": '{"temperature": "20C"}'},
    ]
    answer = sdk.chat.completions.create(
        model=f"google/{MODEL}",
        messages=follow_up,
        tools=[tool],
        max_tokens=8,  # type: ignore[arg-type,list-item]
    )
    assert answer.choices
    call["extra_content"] = {"google": {"thought_signature": "bm90IGEgc2lnbmF0dXJl"}}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=f"google/{MODEL}",
            messages=follow_up,
            tools=[tool],
            max_tokens=8,  # type: ignore[arg-type,list-item]
        )
    assert "Thought signature is not valid" in refused.value.response.text


def test_thinking_and_structured_output(sdk: openai.OpenAI) -> None:
    thought = sdk.chat.completions.create(
        model=f"google/{MODEL}",
        messages=[{"role": "user", "content": "Is 7 prime?"}],
        max_tokens=64,
        extra_body={"extra_body": {"google": {"thinking_config": {"thinking_budget": 16, "include_thoughts": True}}}},
    )
    assert thought.usage and thought.usage.completion_tokens_details
    assert thought.usage.completion_tokens_details.reasoning_tokens
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    structured = sdk.chat.completions.create(
        model=f"google/{MODEL}",
        messages=[{"role": "user", "content": "Name a city."}],
        max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert isinstance(json.loads(structured.choices[0].message.content or ""), dict)


def test_upstream_errors_keep_their_code_status_and_message(gateway: RunningServer) -> None:
    client = _genai(gateway)
    with pytest.raises(errors.ClientError) as refused:  # the gateway lets IMAGE through; the upstream refuses it
        client.models.generate_content(
            model=MODEL, contents="hi", config=types.GenerateContentConfig(response_modalities=["IMAGE"])
        )
    assert refused.value.code == 400 and refused.value.status == "INVALID_ARGUMENT"
    assert "responseModalities" in str(refused.value.message)


def test_a_client_that_leaves_cancels_the_upstream(gateway: RunningServer, local_server: RunningServer) -> None:
    url = f"{gateway.url}/v1beta1/projects/p/locations/l/publishers/google/models/{MODEL}:streamGenerateContent"
    long = {"type": "array", "items": {"type": "integer"}, "minItems": 400}  # the grammar keeps it going
    config = {"maxOutputTokens": 2000, "responseMimeType": "application/json", "responseJsonSchema": long}
    body = {"contents": [{"role": "user", "parts": [{"text": "List numbers."}]}], "generationConfig": config}
    generated = "openvertex_tokens_generated_total"
    before = metric(local_server, generated)
    with httpx.stream(
        "POST", url, params={"alt": "sse"}, json=body, headers={"x-goog-api-key": "k"}, timeout=60
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                break
    deadline = time.monotonic() + 10
    while metric(local_server, "openvertex_sequences_running") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(local_server, "openvertex_sequences_running") == 0
    stopped = metric(local_server, generated)
    time.sleep(0.5)
    assert metric(local_server, generated) == stopped  # nothing more is generated for it
    assert stopped - before < 1000  # far from the 2000 it would have written


def test_429_and_503_are_retried_then_the_answer_passes_through_untouched(tmp_path: Path) -> None:
    busy = Reply(
        429, b'{"error": {"code": 429, "message": "busy", "status": "RESOURCE_EXHAUSTED"}}', (("retry-after", "0"),)
    )
    down = Reply(503, b'{"error": {"code": 503, "message": "down", "status": "UNAVAILABLE"}}')
    with stub_server([busy, down, Reply(200, json.dumps(ANSWER).encode())]) as upstream:
        settings = _gateway(tmp_path, api="gemini", api_key="gemini-key", base_url=upstream.url, max_retry_delay_s=5)
        with serve(settings) as server:
            url = f"{server.url}/v1beta/models/{MODEL}:generateContent"
            response = httpx.post(
                url, json={"contents": [{"parts": [{"text": "hi"}]}]}, headers={"x-goog-api-key": "k"}
            )
            assert response.status_code == 200, response.text
            candidate = response.json()["candidates"][0]
            assert candidate["safetyRatings"] == ANSWER["candidates"][0]["safetyRatings"]  # type: ignore[index]
            assert candidate["groundingMetadata"] == {"webSearchQueries": ["hello"]}
            assert candidate["content"]["parts"][0]["thoughtSignature"] == "c2ln"  # Gemini's own, untouched
            assert metric_by_backend(server, "openvertex_upstream_retries_total") == 2
        assert [r.path for r in upstream.requests] == [f"/v1beta/models/{MODEL}:generateContent"] * 3
        assert {r.headers["x-goog-api-key"] for r in upstream.requests} == {"gemini-key"}
        assert "authorization" not in upstream.requests[0].headers


def test_image_output_through_the_openai_surface(tmp_path: Path) -> None:
    """`modalities: ["image", "text"]` goes up as responseModalities; Gemini's image part comes back in
    `message.audio` with `extra_content.google.mime_type`, and `content` is null (the docs' shape);
    streamed, one delta carries the whole image."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(200))).decode()
    answer = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": png}}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1120, "totalTokenCount": 1127},
    }
    stream = Reply(200, b"data: " + json.dumps(answer).encode() + b"\r\n\r\n", (("content-type", "text/event-stream"),))
    with (
        stub_server([Reply(200, json.dumps(answer).encode()), stream]) as upstream,
        serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=upstream.url)) as server,
    ):
        sdk = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=0)
        request = {
            "model": f"google/{MODEL}",
            "messages": [{"role": "user", "content": "Generate an image of the Eiffel tower with fireworks."}],
            "modalities": ["image", "text"],
        }
        completion = sdk.chat.completions.create(**request)  # type: ignore[call-overload]
        message = completion.choices[0].message
        assert message.content is None and message.audio is not None
        assert message.audio.data == png  # type: ignore[attr-defined]
        audio = message.model_dump()["audio"]
        assert audio["extra_content"] == {"google": {"mime_type": "image/png"}}
        chunks = list(sdk.chat.completions.create(**request, stream=True))  # type: ignore[call-overload]
        with_image = [c for c in chunks if c.choices and c.choices[0].delta.model_dump().get("audio")]
        assert len(with_image) == 1 and with_image[0].choices[0].delta.model_dump()["audio"]["data"] == png
    sent = [json.loads(r.body) for r in upstream.requests]
    assert [body["generationConfig"]["responseModalities"] for body in sent] == [["IMAGE", "TEXT"]] * 2


def test_a_long_retry_delay_is_not_waited_for(tmp_path: Path) -> None:
    quota = {
        "error": {
            "code": 429,
            "message": "Quota exceeded",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"}],
        }
    }
    with stub_server([Reply(429, json.dumps(quota).encode())]) as upstream:
        with serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=upstream.url)) as server:
            sdk = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=0)
            with pytest.raises(openai.RateLimitError) as limited:
                sdk.chat.completions.create(model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}])
            assert "Quota exceeded" in limited.value.response.text
        assert len(upstream.requests) == 1


def test_an_upstream_error_keeps_its_details_and_retry_after(tmp_path: Path) -> None:
    """Natively, Gemini's error `details` (quota, retry info) and its Retry-After reach the client."""
    details = [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "PerMinute"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "3600s"},
    ]
    quota = {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED", "details": details}}
    reply = Reply(429, json.dumps(quota).encode(), (("content-type", "application/json"), ("retry-after", "3600")))
    with (
        stub_server([reply]) as upstream,
        serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=upstream.url)) as server,
    ):
        response = httpx.post(
            f"{server.url}/v1beta/models/{MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "k"},
        )
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3600"
    assert response.json() == quota


def test_an_unreachable_upstream_is_a_503(tmp_path: Path) -> None:
    with stub_server([Reply(200, b"{}")]) as upstream:
        gone = upstream.url
    with serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=gone, max_retries=1)) as server:
        response = httpx.post(
            server.chat_url,
            json={"model": f"google/{MODEL}", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": "Bearer t"},
        )
        assert response.status_code == 503 and response.json()[0]["error"]["status"] == "UNAVAILABLE"


def test_vertex_with_a_service_account(tmp_path: Path) -> None:
    """ADC from a service-account file: google-auth signs a JWT and exchanges it at the token endpoint."""
    with token_endpoint(tmp_path) as tokens, stub_server([Reply(200, json.dumps(ANSWER).encode())]) as upstream:
        settings = _gateway(
            tmp_path, api="vertex", location="europe-west4", credentials_file=tokens.key_file, base_url=upstream.url
        )
        with serve(settings) as server:
            client = _genai(server)
            for _ in range(2):
                assert client.models.generate_content(model=MODEL, contents="hi").text == "Hello"
        path = f"/v1beta1/projects/sa-project/locations/europe-west4/publishers/google/models/{MODEL}:generateContent"
        assert [r.path for r in upstream.requests] == [path, path]  # the project comes from the credentials
        assert {r.headers["authorization"] for r in upstream.requests} == {f"Bearer {ACCESS_TOKEN}"}
        assert len(tokens.grants) == 1  # refreshed once, reused while fresh
        assert tokens.grants[0]["scope"] == "https://www.googleapis.com/auth/cloud-platform"


def test_a_failed_token_exchange_is_not_retried_at_every_request(tmp_path: Path) -> None:
    """A token endpoint that refuses is asked once; the requests right after get its answer (a 503)."""
    with token_endpoint(tmp_path, status=400) as tokens, stub_server([]) as upstream:
        settings = _gateway(tmp_path, api="vertex", credentials_file=tokens.key_file, base_url=upstream.url)
        with serve(settings) as server:
            url = f"{server.url}/v1/projects/p/locations/l/endpoints/openapi/chat/completions"
            body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": "hi"}]}
            statuses = [httpx.post(url, json=body, headers={"authorization": "Bearer t"}).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]
    assert len(tokens.grants) == 1
    assert upstream.requests == []


def test_a_streamed_image_part_larger_than_a_line_buffer(tmp_path: Path) -> None:
    """An image arrives as one `data:` line of a few MB (aiohttp's own line reader stops at 128-512 KiB)."""
    image = base64.b64encode(bytes(range(256)) * 8192).decode()  # 2 MiB, 2.7 MB as base64
    first = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Here:"}]}}]}
    second = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": image}}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1290, "totalTokenCount": 1293},
    }
    events = b"".join(b"data: " + json.dumps(event).encode() + b"\r\n\r\n" for event in (first, second))
    sse = Reply(200, events, (("content-type", "text/event-stream"),))
    with (
        stub_server([sse]) as upstream,
        serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=upstream.url)) as server,
    ):
        url = f"{server.url}/v1beta/models/{MODEL}:streamGenerateContent"
        response = httpx.post(
            url,
            params={"alt": "sse"},
            json={"contents": [{"parts": [{"text": "draw"}]}]},
            headers={"x-goog-api-key": "k"},
            timeout=60,
        )
        assert response.status_code == 200
        received = [json.loads(line[6:]) for line in response.text.split("\r\n\r\n") if line.startswith("data: ")]
        assert received[-1]["candidates"][0]["content"]["parts"][0]["inlineData"]["data"] == image


def test_a_whole_gemini_answer_keeps_its_own_shape(tmp_path: Path) -> None:
    """Gemini's whole answer goes through the pipeline's stages, and comes back as Gemini gave it:
    its parts as they were (grounding segments index them), the fields openvertex does not model."""
    answer = {
        "candidates": [
            {
                "content": {
                    "role": "model",
                    "parts": [{"text": "One. "}, {"text": "Two.", "thoughtSignature": "c2ln"}],
                },
                "finishReason": "STOP",
                "avgLogprobs": -0.25,
                "groundingMetadata": {"groundingSupports": [{"segment": {"partIndex": 1, "text": "Two."}}]},
            }
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 2, "totalTokenCount": 3},
        "modelStatus": {"modelStage": "STABLE"},
    }
    with (
        stub_server([Reply(200, json.dumps(answer).encode())]) as upstream,
        serve(_gateway(tmp_path, api="gemini", api_key="k", base_url=upstream.url)) as server,
    ):
        response = httpx.post(
            f"{server.url}/v1beta/models/{MODEL}:generateContent",
            json={"contents": [{"parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": "k"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    candidate = body["candidates"][0]
    assert candidate["content"]["parts"] == answer["candidates"][0]["content"]["parts"]  # type: ignore[index]
    assert candidate["avgLogprobs"] == -0.25 and body["modelStatus"] == {"modelStage": "STABLE"}
