"""Injected faults (service/faults.py) on the wire, on both surfaces, streamed and whole: by rule (a
model, a key, a sequence, a probability) and by the `x-openvertex-fault` header where allowed; and
the SDKs' own retry settings observed against them."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import AbstractContextManager
from typing import Any

import google.oauth2.credentials
import httpx
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from openvertex.backends.base import Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.service import faults as faults_module
from openvertex.service.keys import configured_key_name
from openvertex.settings import EndpointSettings, FaultRule, Settings
from tests.support.openai_upstream import Upstream, upstream_server
from tests.support.server import RunningServer, serve

MODEL = "gemini-2.5-flash"
VERTEX = "/v1beta1/projects/p/locations/us-central1/publishers/google/models"
WORDS = ["one ", "two ", "three"]
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
AUTH = {"Authorization": "Bearer t"}  # any key, while the server has none


def _chunk(text: str, *, last: bool) -> gc.GenerateContentResponse:
    candidate = gc.Candidate(
        index=0, content=gc.Content(role="model", parts=[gc.Part(text=text)]), finish_reason="STOP" if last else None
    )
    usage = gc.UsageMetadata(prompt_token_count=2, candidates_token_count=3, total_token_count=5) if last else None
    return gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage)


class ThreeChunks(FakeBackend):
    """Every answer in three chunks, as many times as asked."""

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        self.requests.append(request)
        for i, word in enumerate(WORDS):
            yield _chunk(word, last=i == len(WORDS) - 1)


def _backends() -> dict[str, FakeBackend]:
    embedding = FakeBackend(capabilities=Capabilities(generation=False, embeddings=True, embedding_dimensions=8))
    return {"local": ThreeChunks(), "embedding": embedding}


def _settings(*rules: FaultRule, header: bool = False, **fields: Any) -> Settings:
    return Settings(port=0, faults=list(rules), faults_from_header=header, **fields)


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    """Faults by header only."""
    with serve(_settings(header=True), backends=_backends()) as running:
        yield running


class Attempts:
    """When each request reached the fault draw, at the server."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.times: list[float] = []
        draw = faults_module.Faults.draw

        def timed(faults: faults_module.Faults, model: str, key: str | None) -> faults_module.Fault | None:
            self.times.append(time.monotonic())
            return draw(faults, model, key)

        monkeypatch.setattr(faults_module.Faults, "draw", timed)

    def gaps(self) -> list[float]:
        return [later - earlier for earlier, later in itertools.pairwise(self.times)]


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Attempts:
    return Attempts(monkeypatch)


# ---------------------------------------------------------------------------------------- the wire

SURFACES = ["openai", "native"]


def _request(server: RunningServer, surface: str, *, stream: bool, fault: str | None = None) -> httpx.Response:
    """One request, read whole (a cut raises httpx.RemoteProtocolError)."""
    headers = AUTH | ({"x-openvertex-fault": fault} if fault is not None else {})
    if surface == "openai":
        body: dict[str, Any] = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": "hi"}]}
        return httpx.post(server.chat_url, json=body | {"stream": stream}, headers=headers, timeout=30)
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    url = f"{server.url}{VERTEX}/{MODEL}:{method}"
    return httpx.post(
        url, json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, headers=headers, timeout=30
    )


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    lines = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    error: dict[str, Any] = body[0]["error"] if isinstance(body, list) else body["error"]
    return error


def _text(surface: str, events: list[dict[str, Any]]) -> str:
    if surface == "openai":
        return "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices"))
    return "".join(p.get("text", "") for e in events for c in e.get("candidates", []) for p in c["content"]["parts"])


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
@pytest.mark.parametrize(
    "expected", [(429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"), (500, "INTERNAL")], ids=["429", "503", "500"]
)
def test_an_error_before_the_answer(
    server: RunningServer, surface: str, stream: bool, expected: tuple[int, str]
) -> None:
    code, status = expected
    fault = str(code)
    response = _request(server, surface, stream=stream, fault=f"{fault};retry_after_s=7")
    assert response.status_code == code, response.text
    error = _error(response)
    assert (error["code"], error["status"]) == (code, status)
    if code in (429, 503):
        assert response.headers["retry-after"] == "7"
        if surface == "native":  # Gemini's RetryInfo, as the native surface writes details
            assert error["details"] == [{"@type": RETRY_INFO, "retryDelay": "7s"}]
    else:
        assert "retry-after" not in response.headers


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_deadline_exceeded_after_its_delay(server: RunningServer, surface: str, stream: bool) -> None:
    started = time.monotonic()
    response = _request(server, surface, stream=stream, fault="deadline;delay_s=0.3")
    assert time.monotonic() - started >= 0.29
    assert response.status_code == 504
    assert _error(response)["status"] == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("surface", SURFACES)
def test_an_error_event_after_n_chunks(server: RunningServer, surface: str) -> None:
    response = _request(server, surface, stream=True, fault="stream_error;after_chunks=2")
    assert response.status_code == 200
    events = _events(response)
    assert _text(surface, events[:-1]) == "one two "
    assert events[-1]["error"]["status"] == "INTERNAL"
    assert "[DONE]" not in response.text


@pytest.mark.parametrize("surface", SURFACES)
def test_a_stream_error_on_a_whole_answer_is_the_error(server: RunningServer, surface: str) -> None:
    response = _request(server, surface, stream=False, fault="stream_error")
    assert response.status_code == 500
    assert _error(response)["status"] == "INTERNAL"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_a_slow_first_byte(server: RunningServer, surface: str, stream: bool) -> None:
    started = time.monotonic()
    with _streamed(server, surface, stream, "slow_first_byte;delay_s=0.4") as response:
        pieces = response.iter_bytes()
        received = next(pieces)
        waited = time.monotonic() - started
        received += b"".join(pieces)
    assert response.status_code == 200 and waited >= 0.39
    assert b"three" in received


def test_slow_chunks(server: RunningServer) -> None:
    arrived = []
    with _streamed(server, "native", True, "slow_chunks;delay_s=0.25") as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrived.append(time.monotonic())
    assert len(arrived) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrived)]
    assert all(gap >= 0.2 for gap in gaps), gaps


def _streamed(server: RunningServer, surface: str, stream: bool, fault: str) -> AbstractContextManager[httpx.Response]:
    """A request whose answer is read as it arrives."""
    headers = AUTH | {"x-openvertex-fault": fault}
    if surface == "openai":
        body = {"model": f"google/{MODEL}", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return httpx.stream("POST", server.chat_url, json=body, headers=headers, timeout=30)
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    return httpx.stream("POST", f"{server.url}{VERTEX}/{MODEL}:{method}", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("after", [0, 2])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("surface", SURFACES)
def test_a_cut_connection(server: RunningServer, surface: str, stream: bool, after: int) -> None:
    """The client reads an incomplete response, not an HTTP error; the server answers the next."""
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        _streamed(server, surface, stream, f"cut;after_chunks={after}") as response,
    ):
        assert response.status_code == 200
        for piece in response.iter_bytes():
            received += piece
    if stream and after:
        assert received.count(b"data: ") == after and b"[DONE]" not in received
    assert _request(server, surface, stream=stream).status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_safety_block_natively(server: RunningServer, stream: bool) -> None:
    response = _request(server, "native", stream=stream, fault="safety;after_chunks=1")
    assert response.status_code == 200
    answers = _events(response) if stream else [response.json()]
    last = answers[-1]["candidates"][0]
    assert last["finishReason"] == "SAFETY" and "content" not in last
    assert any(rating.get("blocked") for rating in last["safetyRatings"])
    assert _text("native", answers[:-1]) == ("one " if stream else "")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_safety_block_on_chat_completions(server: RunningServer, stream: bool) -> None:
    response = _request(server, "openai", stream=stream, fault="safety;after_chunks=0")
    assert response.status_code == 200
    if stream:
        events = _events(response)
        assert _text("openai", events) == ""
        assert [e["choices"][0].get("finish_reason") for e in events if e.get("choices")][-1] == "content_filter"
    else:
        assert response.json()["choices"][0]["finish_reason"] == "content_filter"


def test_ok_by_header_answers(server: RunningServer) -> None:
    assert _text("native", [_request(server, "native", stream=False, fault="ok").json()]) == "one two three"


# ------------------------------------------------------------------------------------- the header


@pytest.mark.parametrize(
    "value", ["teapot", "429;retry_after_s=abc", "cut;after_chunks=1.5", "slow_chunks;speed=3", "503;delay_s=-1"]
)
def test_a_malformed_header_is_a_400_naming_it(server: RunningServer, value: str) -> None:
    response = _request(server, "openai", stream=False, fault=value)
    assert response.status_code == 400
    assert _error(response)["message"].startswith("x-openvertex-fault: ")


def test_the_header_where_it_is_not_allowed_is_a_400_naming_it() -> None:
    with serve(_settings(), backends=_backends()) as server:
        for surface in SURFACES:
            response = _request(server, surface, stream=False, fault="429")
            assert response.status_code == 400, response.text
            error = _error(response)
            assert "x-openvertex-fault" in error["message"] and "faults_from_header" in error["message"]
        assert _request(server, "native", stream=False).status_code == 200


def test_a_fault_asked_of_a_self_deployed_endpoint_is_a_400_naming_the_header() -> None:
    with upstream_server(Upstream()) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60)
        with serve(_settings(header=True, endpoints={"7": endpoint}), backends=_backends()) as server:
            url = f"{server.url}/v1beta1/projects/p/locations/l/endpoints/7/chat/completions"
            body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            headers = {"Authorization": "Bearer k"}
            refused = httpx.post(url, json=body, headers={**headers, "x-openvertex-fault": "429"})
            assert refused.status_code == 400 and refused.json()[0]["error"]["message"].startswith(
                "x-openvertex-fault:"
            )
            assert upstream.bodies == []  # nothing went up
            assert httpx.post(url, json=body, headers=headers).status_code == 200


def test_a_fault_asked_of_count_tokens_is_a_400_naming_the_header(server: RunningServer) -> None:
    url = f"{server.url}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:countTokens"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    headers = {"Authorization": "Bearer k"}
    refused = httpx.post(url, json=body, headers={**headers, "x-openvertex-fault": "503"})
    assert refused.status_code == 400 and refused.json()["error"]["message"].startswith("x-openvertex-fault:")
    assert httpx.post(url, json=body, headers=headers).status_code == 200


def test_embeddings_take_the_errors_but_not_the_stream_faults(server: RunningServer) -> None:
    body = {"model": "text-embedding-005", "input": "hello"}
    url = f"{server.url}/v1/embeddings"
    limited = httpx.post(url, json=body, headers=AUTH | {"x-openvertex-fault": "429"})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    assert httpx.post(url, json=body, headers=AUTH | {"x-openvertex-fault": "deadline;delay_s=0"}).status_code == 504
    cut = httpx.post(url, json=body, headers=AUTH | {"x-openvertex-fault": "cut"})
    assert cut.status_code == 400 and "does not apply to embeddings" in _error(cut)["message"]
    native = f"{server.url}{VERTEX}/text-embedding-005:embedContent"
    unavailable = httpx.post(
        native, json={"content": {"parts": [{"text": "hi"}]}}, headers=AUTH | {"x-openvertex-fault": "503"}
    )
    assert unavailable.status_code == 503
    assert httpx.post(url, json=body, headers=AUTH).status_code == 200


# --------------------------------------------------------------------------------------- the rules


def test_fail_twice_then_answer() -> None:
    rule = FaultRule(sequence=["429", "503", "ok"], retry_after_s=2)
    with serve(_settings(rule), backends=_backends()) as server:
        codes = [_request(server, "native", stream=False).status_code for _ in range(5)]
    assert codes == [429, 503, 200, 200, 200]


def test_a_repeated_sequence_cycles() -> None:
    rule = FaultRule(sequence=["500", "ok"], repeat=True)
    with serve(_settings(rule), backends=_backends()) as server:
        codes = [_request(server, "openai", stream=True).status_code for _ in range(5)]
    assert codes == [500, 200, 500, 200, 500]


def test_a_stream_fault_by_rule_after_an_error() -> None:
    rule = FaultRule(sequence=["503", "stream_error"], after_chunks=1)
    with serve(_settings(rule), backends=_backends()) as server:
        assert _request(server, "native", stream=True).status_code == 503
        events = _events(_request(server, "native", stream=True))
        assert _text("native", events[:1]) == "one " and events[-1]["error"]["code"] == 500
        assert _text("native", _events(_request(server, "native", stream=True))) == "one two three"


def test_rules_by_model_and_by_key() -> None:
    alpha, beta = configured_key_name("alpha"), configured_key_name("beta")
    rules = [
        FaultRule(model="gemini-2.5-pro", fault="503"),
        FaultRule(key=alpha, fault="429"),
        FaultRule(sequence=["500"]),  # everyone else's first request, counted per key
    ]
    with serve(_settings(*rules, api_keys=["alpha", "beta"]), backends=_backends()) as server:

        def post(model: str, key: str) -> int:
            url = f"{server.url}{VERTEX}/{model}:generateContent"
            body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
            return httpx.post(url, json=body, headers={"x-goog-api-key": key}).status_code

        assert post("gemini-2.5-pro", "beta") == 503
        assert [post(MODEL, "alpha") for _ in range(2)] == [429, 429]
        assert [post(MODEL, "beta") for _ in range(2)] == [500, 200]
    assert beta != alpha


def test_a_seeded_probability_draws_the_same_on_every_run() -> None:
    rule = FaultRule(fault="503", probability=0.5, seed=26)
    runs = []
    for _ in range(2):
        with serve(_settings(rule), backends=_backends()) as server:
            runs.append([_request(server, "native", stream=False).status_code for _ in range(16)])
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 503}


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"fault": "429", "sequence": ["429"]},
        {"sequence": []},
        {"sequence": ["429"], "probability": 0.5},
        {"fault": "429", "repeat": True},
        {"fault": "teapot"},
    ],
)
def test_a_rule_that_says_nothing_clear_is_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        FaultRule(**fields)


# ----------------------------------------------------------------------------------------- the SDKs


def test_openai_retries_a_429_twice_after_retry_after(attempts: Attempts) -> None:
    """openai's max_retries=2 against "429, 429, answer": it answers, each wait ≥ Retry-After."""
    rule = FaultRule(sequence=["429", "429", "ok"], retry_after_s=1)
    with serve(_settings(rule), backends=_backends()) as server:
        client = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=2)
        answer = client.chat.completions.create(model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "one two three"
    assert len(attempts.times) == 3
    assert all(gap >= 0.9 for gap in attempts.gaps()), attempts.gaps()


def test_openai_gives_up_after_its_retries(attempts: Attempts) -> None:
    rule = FaultRule(sequence=["503", "503", "503", "ok"], retry_after_s=0.2)
    with serve(_settings(rule), backends=_backends()) as server:
        client = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=2)
        with pytest.raises(openai.InternalServerError) as failed:
            client.chat.completions.create(model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}])
    assert failed.value.status_code == 503
    assert len(attempts.times) == 3
    assert all(gap >= 0.18 for gap in attempts.gaps()), attempts.gaps()  # retry-after-ms: 200


def _vertex(server: RunningServer, retry: types.HttpRetryOptions | None) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="p",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="test"),
        http_options=types.HttpOptions(base_url=server.url, retry_options=retry),
    )


def test_google_genai_retries_429_and_503_by_its_own_backoff(attempts: Attempts) -> None:
    """google-genai (HttpRetryOptions) retries 408, 429, 500, 502, 503 and 504 by default, waiting
    its own exponential backoff: it does not read Retry-After (nor RetryInfo). Retry-After here is
    10 s, and the retries come after 0.2 s and 0.4 s."""
    rule = FaultRule(sequence=["429", "503", "ok"], retry_after_s=10)
    retry = types.HttpRetryOptions(attempts=3, initial_delay=0.2, exp_base=2, jitter=0, max_delay=5)
    with serve(_settings(rule), backends=_backends()) as server:
        client = _vertex(server, retry)
        answer = client.models.generate_content(model=MODEL, contents="hi")
        client.close()
    assert answer.text == "one two three"
    assert len(attempts.times) == 3
    first, second = attempts.gaps()
    assert 0.19 <= first < 5 and 0.39 <= second < 5, attempts.gaps()


def test_google_genai_retries_a_stream_before_its_first_chunk(attempts: Attempts) -> None:
    rule = FaultRule(sequence=["503", "ok"])
    retry = types.HttpRetryOptions(attempts=2, initial_delay=0.1, jitter=0)
    with serve(_settings(rule), backends=_backends()) as server:
        client = _vertex(server, retry)
        chunks = list(client.models.generate_content_stream(model=MODEL, contents="hi"))
        client.close()
    assert "".join(chunk.text or "" for chunk in chunks) == "one two three"
    assert len(attempts.times) == 2


def test_google_genai_without_retry_options_does_not_retry(attempts: Attempts) -> None:
    rule = FaultRule(sequence=["429", "ok"], retry_after_s=3)
    with serve(_settings(rule), backends=_backends()) as server:
        client = _vertex(server, None)
        with pytest.raises(genai_errors.ClientError) as limited:
            client.models.generate_content(model=MODEL, contents="hi")
        client.close()
    assert limited.value.code == 429 and limited.value.status == "RESOURCE_EXHAUSTED"
    assert limited.value.details["error"]["details"] == [{"@type": RETRY_INFO, "retryDelay": "3s"}]
    assert len(attempts.times) == 1


def test_a_cut_stream_raises_in_the_sdks_and_the_server_stays_up() -> None:
    """openai raises APIConnectionError; google-genai lets its HTTP client's RemoteProtocolError
    through (which its retry options do not retry)."""
    rule = FaultRule(sequence=["cut", "cut", "ok"], after_chunks=1)
    with serve(_settings(rule), backends=_backends()) as server:
        client = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=0)
        received = []
        with pytest.raises(openai.APIConnectionError):
            for chunk in client.chat.completions.create(
                model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}], stream=True
            ):
                received.append(chunk.choices[0].delta.content)
        assert received == ["one "]
        vertex = _vertex(server, types.HttpRetryOptions(attempts=3, initial_delay=0.1, jitter=0))
        texts = []
        with pytest.raises(Exception) as cut:
            for answer in vertex.models.generate_content_stream(model=MODEL, contents="hi"):
                texts.append(answer.text)
        assert texts == ["one "]
        assert type(cut.value).__name__ == "RemoteProtocolError", repr(cut.value)
        assert vertex.models.generate_content(model=MODEL, contents="hi").text == "one two three"
        vertex.close()


def test_openai_retries_a_whole_answer_cut_mid_body(attempts: Attempts) -> None:
    rule = FaultRule(sequence=["cut", "ok"])
    with serve(_settings(rule), backends=_backends()) as server:
        client = openai.OpenAI(base_url=server.sdk_base_url, api_key="t", max_retries=1)
        answer = client.chat.completions.create(model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "one two three"
    assert len(attempts.times) == 2


def test_openai_raises_an_error_event_mid_stream(server: RunningServer) -> None:
    client = openai.OpenAI(
        base_url=server.sdk_base_url,
        api_key="t",
        max_retries=0,
        default_headers={"x-openvertex-fault": "stream_error;after_chunks=1"},
    )
    received = []
    with pytest.raises(openai.APIError) as failed:
        for chunk in client.chat.completions.create(
            model=f"google/{MODEL}", messages=[{"role": "user", "content": "hi"}], stream=True
        ):
            received.append(chunk.choices[0].delta.content)
    assert received == ["one "]
    assert "internal error" in failed.value.message
