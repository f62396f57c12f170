"""The Vertex surface end to end on the real embedded model (SmolLM2-135M via llama.cpp)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable

import httpx
import openai
import pytest

from tests.support.server import RunningServer

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.0-flash-001"
STORY = [{"role": "user", "content": "Write a story about a magic backpack."}]


def _sse_events(response: httpx.Response) -> list[str]:
    lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines), lines
    return [line.removeprefix("data: ") for line in lines]


def test_docs_curl_non_streaming(local_server: RunningServer) -> None:
    body = {"model": MODEL, "messages": STORY, "max_tokens": 40}
    response = httpx.post(local_server.chat_url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert not completion["id"].startswith("chatcmpl") and len(completion["id"]) == 22
    assert completion["model"] == MODEL  # echoed verbatim
    assert completion["system_fingerprint"] == ""
    [choice] = completion["choices"]
    assert choice["logprobs"] is None and choice["index"] == 0
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = completion["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["extra_properties"] == {"google": {"traffic_type": "ON_DEMAND"}}


def test_docs_curl_streaming_on_the_global_endpoint(local_server: RunningServer) -> None:
    url = local_server.chat_url.replace("/v1beta1/", "/v1/").replace("/us-central1/", "/global/")
    body = {"model": MODEL, "stream": True, "messages": STORY, "max_tokens": 30}
    with httpx.stream("POST", url, json=body, headers=AUTH, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk" and chunk["system_fingerprint"] == ""
        assert chunk["choices"][0]["delta"]["role"] == "assistant"  # on every chunk
        assert chunk["choices"][0]["logprobs"] is None
    assert all("finish_reason" not in c["choices"][0] for c in chunks[:-1])
    assert all("usage" not in c for c in chunks[:-1])
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] in ("stop", "length")
    assert (
        last["usage"]["completion_tokens"] <= 30
        and last["usage"]["extra_properties"]["google"]["traffic_type"] == "ON_DEMAND"
    )
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def test_openai_sdk_sync_with_strict_validation(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Why is the sky blue?"},
        ],
        max_tokens=32,
        user="ignored",  # unknown to Vertex: ignored, not rejected
        logit_bias={"50256": -100},
        parallel_tool_calls=False,
    )
    assert completion.choices[0].message.content
    assert completion.model == MODEL


def test_openai_sdk_async_and_streaming(local_server: RunningServer) -> None:
    async def run() -> tuple[str, str]:
        async with openai.AsyncOpenAI(
            base_url=local_server.sdk_base_url, api_key="t", max_retries=0, _strict_response_validation=True
        ) as sdk:
            whole = await sdk.chat.completions.create(model=MODEL, messages=STORY, max_tokens=16, seed=3)
            stream = await sdk.chat.completions.create(model=MODEL, messages=STORY, max_tokens=16, seed=3, stream=True)
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return whole.choices[0].message.content or "", streamed

    whole, streamed = asyncio.run(run())
    assert whole and whole == streamed  # same seed: the stream is the same answer


def test_seed_determinism(client: openai.OpenAI) -> None:
    def answer(seed: int) -> str:
        result = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=24, seed=seed, temperature=1.0)
        return result.choices[0].message.content or ""

    first = answer(1234)
    assert answer(1234) == first
    assert len({answer(s) for s in (1, 2, 3)}) > 1  # other seeds, other samples


def _greedy(client: openai.OpenAI, **extra: object) -> tuple[str, str]:
    result = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=48, temperature=0, **extra)  # type: ignore[call-overload]
    return result.choices[0].message.content or "", result.choices[0].finish_reason


def test_stop_sequences_truncate_and_never_leak(client: openai.OpenAI) -> None:
    full, _ = _greedy(client)
    words = full.split(" ")
    assert len(words) > 6, full
    # A stop sequence spanning several tokens, from the middle of the greedy answer.
    stop = " ".join(words[3:5])
    expected = full[: full.index(stop)]
    text, reason = _greedy(client, stop=stop)
    assert (text, reason) == (expected, "stop")
    text, reason = _greedy(client, stop=["@@never@@", stop])
    assert (text, reason) == (expected, "stop")
    stream = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=48, temperature=0, stop=[stop], stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_candidates(client: openai.OpenAI) -> None:
    result = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, n=3, seed=7)
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert all(c.message.content for c in result.choices)
    assert len({c.message.content for c in result.choices}) > 1
    again = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, n=3, seed=7)
    assert [c.message.content for c in again.choices] == [c.message.content for c in result.choices]
    assert result.usage is not None and result.usage.completion_tokens <= 36

    stream = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=12, n=3, seed=7, stream=True)
    texts = ["", "", ""]
    finished = []
    for chunk in stream:
        choice = chunk.choices[0]
        texts[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finished.append(choice.index)
    assert sorted(finished) == [0, 1, 2]
    assert texts == [c.message.content for c in result.choices]


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    for limit in ({"max_tokens": 5}, {"max_completion_tokens": 5}):
        result = client.chat.completions.create(model=MODEL, messages=STORY, **limit)  # type: ignore[call-overload]
        assert result.choices[0].finish_reason == "length"
        assert result.usage is not None and result.usage.completion_tokens == 5


def test_prompt_too_long_for_the_context(local_server: RunningServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello " * 5000}]}
    response = httpx.post(local_server.chat_url, json=body, headers=AUTH, timeout=60)
    assert response.status_code == 400
    message = response.json()[0]["error"]["message"]
    assert "input token count" in message and "(4095)" in message


def test_penalties_are_applied(client: openai.OpenAI) -> None:
    plain, _ = _greedy(client)
    penalised, _ = _greedy(client, frequency_penalty=2.0, presence_penalty=2.0)
    assert plain != penalised


def _bad_request_message(call: Callable[[], object]) -> str:
    with pytest.raises(openai.BadRequestError) as raised:
        call()
    body = raised.value.body
    assert isinstance(body, list)
    return str(body[0]["error"]["message"])


def test_unsupported_input_on_the_text_model(client: openai.OpenAI) -> None:
    video = [{"type": "image_url", "image_url": {"url": "gs://cloud-samples-data/video/animals.mp4"}}]
    message = _bad_request_message(
        lambda: client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": video}])  # type: ignore[misc,list-item]
    )
    assert message == "messages[0].content[0]: video/mp4 input is not supported by this model's backend"
    native = {"extra_body": {"google": {"tools": [{"code_execution": {}}]}}}
    message = _bad_request_message(
        lambda: client.chat.completions.create(model=MODEL, messages=STORY, extra_body=native)  # type: ignore[arg-type]
    )
    assert (
        message
        == "extra_body.google.tools[0]: the native tool 'codeExecution' is not supported by this model's backend"
    )


def test_a_client_that_leaves_frees_the_engine(local_server: RunningServer) -> None:
    # The grammar forces at least 3000 array items: minutes of decoding unless cancelled.
    endless = {
        "type": "json_schema",
        "json_schema": {"name": "Many", "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 3000}},
    }
    body = {"model": MODEL, "messages": STORY, "response_format": endless, "stream": True}
    with httpx.stream("POST", local_server.chat_url, json=body, headers=AUTH, timeout=60) as response:
        next(line for line in response.iter_lines() if line.startswith("data: {"))
    # Had the abandoned stream kept the engine, this would wait behind it and time out.
    short = {"model": MODEL, "messages": STORY, "max_tokens": 4}
    response = httpx.post(local_server.chat_url, json=short, headers=AUTH, timeout=20)
    assert response.status_code == 200


def test_logprobs_when_asked(client: openai.OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=STORY, max_tokens=6)
    assert plain.choices[0].logprobs is None  # as Vertex: null unless asked
    result = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=6, logprobs=True, top_logprobs=3, temperature=0
    )
    content = result.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 6
    assert "".join(t.token for t in content) == result.choices[0].message.content
    for token in content:
        assert token.logprob <= 0 and len(token.top_logprobs) == 3
        top = token.top_logprobs
        assert top[0].logprob >= top[1].logprob >= top[2].logprob >= -50
        assert sum(math.exp(t.logprob) for t in top) <= 1 + 1e-6
        # The model's own distribution: the chosen token is never likelier than the best.
        assert token.logprob <= top[0].logprob + 1e-6
        assert all(t.logprob == pytest.approx(token.logprob) for t in top if t.token == token.token)
    assert any(token.top_logprobs[0].token == token.token for token in content)
    stream = client.chat.completions.create(
        model=MODEL, messages=STORY, max_tokens=6, logprobs=True, temperature=0, stream=True
    )
    streamed = [
        t.token for c in stream if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []
    ]
    assert streamed == [t.token for t in content]


def _native(server: RunningServer, method: str, text: str, max_tokens: int) -> httpx.Response:
    body = {
        "contents": [{"role": "user", "parts": [{"text": text}]}],
        "generationConfig": {"maxOutputTokens": max_tokens, "temperature": 0},
    }
    path = f"/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:{method}"
    response = httpx.post(f"{server.url}{path}", json=body, headers=AUTH, timeout=60)
    assert response.status_code == 200, response.text
    return response


def test_every_native_chunk_has_the_usage_so_far(local_server: RunningServer) -> None:
    # As Gemini's do: a stream cut short (a client that leaves, a blocked answer) is still counted.
    response = _native(local_server, "streamGenerateContent?alt=sse", "Count from one to twenty.", 12)
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]
    counts = [event["usageMetadata"]["candidatesTokenCount"] for event in events]
    assert len(counts) > 1 and counts == sorted(counts) and counts[-1] == 12
    assert {event["usageMetadata"]["promptTokenCount"] for event in events} == {
        events[0]["usageMetadata"]["promptTokenCount"]
    }


def test_a_whole_native_answer_is_one_text_part_with_its_signature(local_server: RunningServer) -> None:
    # As Gemini answers: not one part per token, and the signature on the part it signs.
    response = _native(local_server, "generateContent", "Say hello and introduce yourself.", 16)
    candidate = response.json()["candidates"][0]
    assert candidate["finishReason"] == "MAX_TOKENS"
    parts = candidate["content"]["parts"]
    assert len(parts) == 1, parts
    assert len(parts[0]["text"]) > 10 and parts[0]["thoughtSignature"]
