"""Record once, replay offline: the Gemini backend records through a record backend, its upstream
a second openvertex on loopback (a paced scripted backend behind it: the model is not the point);
then, that upstream stopped, a replay backend answers the same requests byte for byte on both
surfaces, streamed and not."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from openvertex.backends.fake import FakeBackend
from openvertex.cassettes import Cassettes, normalise
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.settings import (
    FakeBackendSettings,
    GeminiBackendSettings,
    ModelRoute,
    RecordBackendSettings,
    ReplayBackendSettings,
    Settings,
)
from tests.support.server import RunningServer, serve

MODEL = "gemini-2.5-flash"
UPSTREAM_KEY = "upstream-key-never-recorded"
AUTH = {"Authorization": "Bearer test"}
GAP_S = 0.12  # between the upstream's streamed words
NATIVE_STREAM = f"/v1beta1/projects/p/locations/us-central1/publishers/google/models/{MODEL}:streamGenerateContent"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}),
)
PIXEL = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


class PacedUpstream(FakeBackend):
    """The upstream's model: the last user text back, a word a chunk, GAP_S apart; a question about
    the weather gets a call to get_weather, and the call's result an answer. Its answers are not
    signed by it: the upstream openvertex signs and checks them, as Gemini does its own."""

    def __init__(self) -> None:
        super().__init__()
        self._capabilities = dataclasses.replace(self._capabilities, thought_signatures=False)

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        self.requests.append(request)
        last = request.contents[-1].parts[-1]
        text = (request.user_texts() or [""])[-1]
        if last.function_response is not None:
            yield _chunk([gc.Part(text="It is 20C in Paris.")], finish=True)
        elif "weather" in text:
            call = gc.FunctionCall(name="get_weather", args={"city": "Paris"})
            yield _chunk([gc.Part(function_call=call)], finish=True)
        elif "refuse" in text:
            raise InvalidArgumentError("the upstream refuses this prompt", param="contents[0].parts[0].text")
        else:
            words = text.split()
            for index, word in enumerate(words):
                if index:
                    await asyncio.sleep(GAP_S)
                yield _chunk([gc.Part(text=word + " ")], finish=index == len(words) - 1)


def _chunk(parts: list[gc.Part], *, finish: bool) -> gc.GenerateContentResponse:
    candidate = gc.Candidate(
        index=0, content=gc.Content(role="model", parts=parts), finish_reason="STOP" if finish else None
    )
    usage = gc.UsageMetadata(prompt_token_count=5, candidates_token_count=len(parts), total_token_count=5 + len(parts))
    return gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage if finish else None)


class Capture:
    """An httpx client that keeps each response's body (read whole: bytes, not timing, compared)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.client = httpx.Client(event_hooks={"response": [self._keep]}, timeout=30)

    def _keep(self, response: httpx.Response) -> None:
        response.read()
        self.bodies.append(response.content)

    def last(self) -> bytes:
        return self.bodies[-1]


@pytest.fixture
def capture() -> Iterator[Capture]:
    kept = Capture()
    yield kept
    kept.client.close()


def _genai(server: RunningServer, capture: Capture) -> genai.Client:
    token = google.oauth2.credentials.Credentials(token="test")
    options = types.HttpOptions(base_url=server.url, httpx_client=capture.client)
    return genai.Client(vertexai=True, project="p", location="us-central1", credentials=token, http_options=options)


def _openai(server: RunningServer, capture: Capture) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.sdk_base_url, api_key="test", max_retries=0, http_client=capture.client)


def _settings(state_dir: Path, backends: dict[str, Any], route_to: str) -> Settings:
    return Settings(
        port=0,
        state_dir=state_dir,
        backends=backends,
        routes=[ModelRoute(model="google/*", backend=route_to)],
        request_timeout_s=60,
    )


# ---------------------------------------------------------------------- the conversation, played twice


def _weather_turns(client: genai.Client) -> tuple[types.Content, types.GenerateContentResponse]:
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    first = client.models.generate_content(model=MODEL, contents=[question], config=config)
    called = first.candidates[0].content if first.candidates else None
    assert called is not None and called.parts and called.parts[0].function_call is not None
    result = types.Part.from_function_response(name="get_weather", response={"temperature": "20C"})
    second = client.models.generate_content(
        model=MODEL, contents=[question, called, types.Content(role="user", parts=[result])], config=config
    )
    return called, second


Play = Callable[[genai.Client, openai.OpenAI], Any]

PLAYS: dict[str, Play] = {
    "native whole": lambda g, o: g.models.generate_content(
        model=MODEL, contents="Say hello to the tape.", config=types.GenerateContentConfig(max_output_tokens=32)
    ),
    "native stream": lambda g, o: list(
        g.models.generate_content_stream(model=MODEL, contents="Count one two three four.")
    ),
    "native media": lambda g, o: g.models.generate_content(
        model=MODEL, contents=[types.Part.from_bytes(data=PIXEL, mime_type="image/png"), "What is in the picture?"]
    ),
    "openai whole": lambda g, o: o.chat.completions.create(
        model=f"google/{MODEL}", messages=[{"role": "user", "content": "Tell a short tale."}]
    ),
    "openai stream": lambda g, o: list(
        o.chat.completions.create(
            model=f"google/{MODEL}", messages=[{"role": "user", "content": "Stream these five words."}], stream=True
        )
    ),
    "weather turns": lambda g, o: _weather_turns(g),
}


def _play(server: RunningServer) -> dict[str, list[bytes]]:
    """Each play's response bodies, in order."""
    capture = Capture()
    native, chat = _genai(server, capture), _openai(server, capture)
    bodies = {}
    for name, play in PLAYS.items():
        before = len(capture.bodies)
        play(native, chat)
        bodies[name] = capture.bodies[before:]
    with pytest.raises(errors.ClientError) as refused:
        native.models.generate_content(model=MODEL, contents="Please refuse this.")
    bodies["refused"] = [capture.last()]
    assert refused.value.code == 400
    paced = httpx.post(
        server.url + NATIVE_STREAM + "?alt=sse",
        json={"contents": [{"role": "user", "parts": [{"text": "slow one two three four"}]}]},
        headers=AUTH,
    )
    bodies["paced"] = [paced.content]
    capture.client.close()
    return bodies


@dataclasses.dataclass
class Recorded:
    cassettes: Path
    bodies: dict[str, list[bytes]]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """Everything played once through the recording gateway; then the upstream is stopped."""
    cassettes = tmp_path_factory.mktemp("cassettes")
    upstream_settings = _settings(
        tmp_path_factory.mktemp("upstream"), {"paced": FakeBackendSettings(type="fake")}, "paced"
    )
    with serve(upstream_settings, backends={"paced": PacedUpstream()}) as upstream:
        gemini = GeminiBackendSettings(
            type="gemini",
            api="vertex",
            project="upstream-project",
            location="us-central1",
            api_key=UPSTREAM_KEY,
            base_url=upstream.url,
            max_retries=0,
        )
        recording = RecordBackendSettings(type="record", backend="gemini", cassettes=cassettes)
        settings = _settings(tmp_path_factory.mktemp("gateway"), {"gemini": gemini, "rec": recording}, "rec")
        with serve(settings) as gateway:
            bodies = _play(gateway)
    return Recorded(cassettes, bodies)


@pytest.fixture(scope="module")
def replaying(recorded: Recorded, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    replay = ReplayBackendSettings(type="replay", cassettes=recorded.cassettes)
    with serve(_settings(tmp_path_factory.mktemp("replay"), {"replay": replay}, "replay")) as server:
        yield server


# ---------------------------------------------------------------------- replay


def test_replay_is_byte_identical_on_both_surfaces_streamed_and_not(
    recorded: Recorded, replaying: RunningServer
) -> None:
    replayed = _play(replaying)
    for name, bodies in recorded.bodies.items():
        assert replayed[name] == bodies, name
    # What was compared is what it claims: Gemini's ids and times came through, SSE and JSON alike.
    whole = json.loads(recorded.bodies["native whole"][0])
    assert whole["responseId"] and whole["createTime"]
    assert recorded.bodies["native stream"][0].count(b"data: ") == 5
    assert json.loads(recorded.bodies["refused"][0])["error"]["status"] == "INVALID_ARGUMENT"


def test_cassettes_hold_media_once_and_no_credentials(recorded: Recorded) -> None:
    files = list(recorded.cassettes.glob("*.json"))
    assert len(files) == 9  # every play's exchange: the weather's two turns, the refusal, the paced stream
    media = list((recorded.cassettes / "media").iterdir())
    assert [path.read_bytes() for path in media] == [PIXEL]
    texts = [path.read_text() for path in files]
    assert not any(UPSTREAM_KEY in text or "Bearer" in text for text in texts)
    assert any(media[0].name in text for text in texts)


def test_a_native_recording_answers_the_openai_surface(replaying: RunningServer, capture: Capture) -> None:
    with _openai(replaying, capture) as chat:
        completion = chat.chat.completions.create(
            model=f"google/{MODEL}", messages=[{"role": "user", "content": "Say hello to the tape."}], max_tokens=32
        )
    assert completion.choices[0].message.content == "Say hello to the tape. "


def test_recorded_thought_signatures_go_back_and_the_next_turn_replays(
    replaying: RunningServer, capture: Capture
) -> None:
    client = _genai(replaying, capture)
    called, second = _weather_turns(client)
    assert called.parts and called.parts[0].thought_signature  # the upstream's, recorded
    assert second.text == "It is 20C in Paris."
    forged = called.model_copy(deep=True)
    assert forged.parts
    forged.parts[0].thought_signature = b"forged"
    question = types.Content(role="user", parts=[types.Part(text="What is the weather in Paris?")])
    result = types.Part.from_function_response(name="get_weather", response={"temperature": "20C"})
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(
            model=MODEL,
            contents=[question, forged, types.Content(role="user", parts=[result])],
            config=types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])]),
        )
    assert missing.value.code == 400 and missing.value.status == "FAILED_PRECONDITION"
    assert "contents[1].parts[0].thoughtSignature" in str(missing.value.message)


def test_a_request_never_recorded_names_its_digest_and_the_difference(
    replaying: RunningServer, capture: Capture
) -> None:
    client = _genai(replaying, capture)
    with pytest.raises(errors.ClientError) as missing:
        client.models.generate_content(
            model=MODEL, contents="Say hello to the tape.", config=types.GenerateContentConfig(max_output_tokens=33)
        )
    request = gc.GenerateContentRequest(
        contents=[gc.Content(role="user", parts=[gc.Part(text="Say hello to the tape.")])],
        generation_config=gc.GenerationConfig(max_output_tokens=33),
    )
    message = str(missing.value.message)
    assert missing.value.code == 400 and missing.value.status == "FAILED_PRECONDITION"
    assert normalise(request, f"google/{MODEL}").digest in message
    assert "generationConfig.maxOutputTokens: recorded 32, requested 33" in message
    with pytest.raises(errors.ClientError) as uncounted:
        client.models.count_tokens(model=MODEL, contents="Say hello to the tape.")
    assert uncounted.value.status == "FAILED_PRECONDITION" and "fallback" in str(uncounted.value.message)


def test_fallback_answers_what_was_not_recorded_and_a_damaged_file_is_refused(
    recorded: Recorded, tmp_path: Path, capture: Capture
) -> None:
    cassettes = tmp_path / "cassettes"
    shutil.copytree(recorded.cassettes, cassettes)
    replay = ReplayBackendSettings(type="replay", cassettes=cassettes, fallback="fake")
    backends = {"replay": replay, "fake": FakeBackendSettings(type="fake")}
    with serve(_settings(tmp_path / "state", backends, "replay")) as server:
        client = _genai(server, capture)
        echoed = client.models.generate_content(model=MODEL, contents="Never recorded, echoed.")
        assert echoed.text == "Never recorded, echoed."
        assert client.models.count_tokens(model=MODEL, contents="four words are here").total_tokens == 4
        config = types.GenerateContentConfig(max_output_tokens=32)
        assert client.models.generate_content(model=MODEL, contents="Say hello to the tape.", config=config).text
        request = gc.GenerateContentRequest(
            contents=[gc.Content(role="user", parts=[gc.Part(text="Say hello to the tape.")])],
            generation_config=gc.GenerationConfig(max_output_tokens=32),
        )
        path = Cassettes(cassettes).path(normalise(request, f"google/{MODEL}").digest, "whole")
        path.write_text(path.read_text().replace("Say hello to the tape. ", "Say goodbye to the tape. "))
        with pytest.raises(errors.ClientError) as damaged:
            client.models.generate_content(model=MODEL, contents="Say hello to the tape.", config=config)
    assert damaged.value.status == "FAILED_PRECONDITION"
    assert path.name in str(damaged.value.message) and "checksum" in str(damaged.value.message)


def _arrivals(server: RunningServer) -> list[float]:
    """When each event of the paced stream arrived, from the request's start."""
    started = time.monotonic()
    arrivals = []
    body = {"contents": [{"role": "user", "parts": [{"text": "slow one two three four"}]}]}
    with httpx.stream("POST", server.url + NATIVE_STREAM + "?alt=sse", json=body, headers=AUTH, timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic() - started)
    return arrivals


def test_original_timing_keeps_the_recorded_gaps(recorded: Recorded, replaying: RunningServer, tmp_path: Path) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "slow one two three four"}]}]}
    key = normalise(gc.GenerateContentRequest.model_validate(body), f"google/{MODEL}")
    exchange = Cassettes(recorded.cassettes).find(key.digest, "stream")
    assert exchange is not None and exchange.chunks is not None and len(exchange.chunks) == 5
    span = exchange.chunks[-1].offset_s - exchange.chunks[0].offset_s
    assert span >= 4 * GAP_S * 0.9
    replay = ReplayBackendSettings(type="replay", cassettes=recorded.cassettes, timing="original")
    with serve(_settings(tmp_path, {"replay": replay}, "replay")) as server:
        paced = _arrivals(server)
    at_once = _arrivals(replaying)
    assert len(paced) == len(at_once) == 5
    assert paced[-1] - paced[0] >= span * 0.8  # bounded: the gaps are kept, not measured
    assert at_once[-1] - at_once[0] < span * 0.8
