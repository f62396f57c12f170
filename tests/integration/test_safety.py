"""Safety settings enforced in front of a backend that does not filter itself: the shipped
classifier (alt-profanity-check, for real), the operator's blocklist and a moderation model on a
local server; prompts blocked before generation, answers blocked as they are produced (whole and
streamed), on both surfaces; what cannot be enforced is a 400. A backend that filters itself
(Gemini) gets the settings untouched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from openvertex.backends.base import Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import BlocklistSettings, ModerationSettings, SafetyConfig, Settings
from tests.support.server import RunningServer, serve
from tests.support.stub import Reply, stub_server

AUTH = {"Authorization": "Bearer test"}
NATIVE = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
INSULT = "You are a stupid worthless idiot and everybody hates you."
BLOCK_HARASSMENT = [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_MEDIUM_AND_ABOVE"}]


def _unfiltered() -> FakeBackend:
    return FakeBackend(capabilities=Capabilities(function_calling=True))


@pytest.fixture
def fake() -> FakeBackend:
    return _unfiltered()


@pytest.fixture
def server(fake: FakeBackend) -> Iterator[RunningServer]:
    safety = SafetyConfig(
        window_chars=24, blocklist=BlocklistSettings(terms=["forbidden fruit", "badword"], patterns=[r"\bcode-\d{4}\b"])
    )
    with serve(Settings(port=0, safety=safety), backends={"local": fake}) as running:
        yield running


def _answer(*texts: str, index: int = 0, usage_at_end: bool = False) -> list[gc.GenerateContentResponse]:
    """One chunk per text, the last finishing, each with the usage so far (or only the last, as
    the embedded backend does)."""
    chunks = []
    for number, text in enumerate(texts, 1):
        last = number == len(texts)
        candidate = gc.Candidate(
            index=index,
            content=gc.Content(role="model", parts=[gc.Part(text=text)]),
            finish_reason="STOP" if last else None,
        )
        usage = gc.UsageMetadata(prompt_token_count=5, candidates_token_count=number, total_token_count=5 + number)
        chunks.append(
            gc.GenerateContentResponse(
                candidates=[candidate], usage_metadata=usage if last or not usage_at_end else None
            )
        )
    return chunks


def _native(server: RunningServer, text: str, settings: Any = None, *, stream: bool = False) -> httpx.Response:
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if settings is not None:
        body["safetySettings"] = settings
    method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    return httpx.post(f"{server.url}{NATIVE}{method}", json=body, headers=AUTH, timeout=60)


def _chat(server: RunningServer, text: str, settings: Any = None, **extra: Any) -> httpx.Response:
    body: dict[str, Any] = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": text}]}
    if settings is not None:
        body["extra_body"] = {"google": {"safety_settings": settings}}
    return httpx.post(server.chat_url, json={**body, **extra}, headers=AUTH, timeout=60)


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def test_a_blocked_prompt_never_reaches_the_model(server: RunningServer, fake: FakeBackend) -> None:
    native = _native(server, INSULT, BLOCK_HARASSMENT)
    assert native.status_code == 200, native.text
    body = native.json()
    assert "candidates" not in body
    feedback = body["promptFeedback"]
    assert feedback["blockReason"] == "SAFETY"
    rating = next(r for r in feedback["safetyRatings"] if r["category"] == "HARM_CATEGORY_HARASSMENT")
    assert rating["blocked"] is True and rating["probability"] in ("MEDIUM", "HIGH")
    assert body["usageMetadata"]["promptTokenCount"] == body["usageMetadata"]["totalTokenCount"] > 0
    assert "candidatesTokenCount" not in body["usageMetadata"]

    chat = _chat(server, INSULT, BLOCK_HARASSMENT)
    assert chat.status_code == 200, chat.text
    choice = chat.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
    assert chat.json()["usage"]["completion_tokens"] == 0

    events = _events(_chat(server, INSULT, BLOCK_HARASSMENT, stream=True))
    assert [e["choices"][0].get("finish_reason") for e in events if e["choices"]] == ["content_filter"]
    streamed = _events(_native(server, INSULT, BLOCK_HARASSMENT, stream=True))
    assert len(streamed) == 1 and streamed[0]["promptFeedback"]["blockReason"] == "SAFETY"
    assert fake.requests == []  # nothing was generated


def test_a_harmless_prompt_passes_with_its_ratings(server: RunningServer, fake: FakeBackend) -> None:
    fake.add(_answer("The capital of France is Paris."))
    response = _native(server, "What is the capital of France?", BLOCK_HARASSMENT)
    assert response.status_code == 200, response.text
    candidate = response.json()["candidates"][0]
    assert candidate["finishReason"] == "STOP" and candidate["content"]["parts"][0]["text"].endswith("Paris.")
    assert candidate["safetyRatings"] == [
        {
            "category": "HARM_CATEGORY_HARASSMENT",
            "probability": "NEGLIGIBLE",
            "probabilityScore": candidate["safetyRatings"][0]["probabilityScore"],
            "severity": "HARM_SEVERITY_NEGLIGIBLE",
            "severityScore": candidate["safetyRatings"][0]["severityScore"],
        }
    ]
    assert candidate["safetyRatings"][0]["probabilityScore"] < 0.25


def test_a_blocked_answer_loses_its_content(server: RunningServer, fake: FakeBackend) -> None:
    fake.add(_answer("Well. ", INSULT))
    native = _native(server, "Tell me what you think of me.", BLOCK_HARASSMENT)
    assert native.status_code == 200, native.text
    candidate = native.json()["candidates"][0]
    assert candidate["finishReason"] == "SAFETY" and "content" not in candidate
    assert any(r.get("blocked") for r in candidate["safetyRatings"])

    fake.add(_answer("Well. ", INSULT))
    chat = _chat(server, "Tell me what you think of me.", BLOCK_HARASSMENT)
    choice = chat.json()["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None

    fake.add(_answer("Well. ", INSULT))  # not asked to block harassment: the answer goes through
    assert _chat(server, "Tell me.").json()["choices"][0]["message"]["content"] == "Well. " + INSULT


def test_a_stream_stops_at_the_first_blocked_window(server: RunningServer, fake: FakeBackend) -> None:
    clean = ["The weather today ", "is mild and sunny, ", "a good day for a walk. "]
    fake.add(_answer(*clean, INSULT, "And more text that is never sent."))
    events = _events(_native(server, "How is the weather?", BLOCK_HARASSMENT, stream=True))
    sent = "".join(
        p.get("text", "")
        for e in events
        for c in e.get("candidates", [])
        for p in c.get("content", {}).get("parts", [])
    )
    # Windows of at most 24 characters, cut at whitespace: "The weather today is ", "mild and
    # sunny, a good ", "day for a walk. You are " were rated clean and went out; the next,
    # "a stupid worthless ", is blocked and is not sent, nor anything after it.
    assert sent == "".join(clean) + "You are "
    last = events[-1]["candidates"][0]
    assert last["finishReason"] == "SAFETY" and "content" not in last
    assert any(r.get("blocked") for r in last["safetyRatings"])
    assert events[-1]["usageMetadata"]["promptTokenCount"] == 5

    fake.add(_answer(*clean, INSULT, "And more text that is never sent."))
    chunks = _events(_chat(server, "How is the weather?", BLOCK_HARASSMENT, stream=True))
    content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert content == "".join(clean) + "You are "
    finishes = [
        c["choices"][0].get("finish_reason") for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")
    ]
    assert finishes == ["content_filter"]
    assert chunks[-1]["usage"]["prompt_tokens"] == 5


def _sent_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        p.get("text", "")
        for e in events
        for c in e.get("candidates", [])
        for p in c.get("content", {}).get("parts", [])
    )


def test_no_text_is_sent_before_it_is_rated(server: RunningServer, fake: FakeBackend) -> None:
    # The first chunk fills a window and then some: only its first window (up to its last
    # whitespace) is rated and goes out, once the blocklist has read its longest match (31
    # characters, "forbidden fruit" with up to 16 spaces) past it.
    fake.add(_answer("one two three four five six seven eight nine ten badword", " six", " end.", usage_at_end=True))
    events = _events(_native(server, "Count.", stream=True))
    assert _sent_text(events) == "one two three four five "
    assert events[-1]["candidates"][0]["finishReason"] == "BLOCKLIST"
    # Stopped before the backend's last chunk: the usage is counted here, not left out.
    usage = events[-1]["usageMetadata"]
    assert usage["promptTokenCount"] > 0 and usage["candidatesTokenCount"] > 0

    # Two candidates: one's window coming due sends nothing of the other's unrated text.
    first = _answer("alpha beta gamma delta epsilon zeta eta theta iota", " kappa.", index=0)
    second = _answer("a badword", " here.", index=1)
    fake.add([first[0], second[0], first[1], second[1]])
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Two."}]}],
        "generationConfig": {"candidateCount": 2},
    }
    response = httpx.post(f"{server.url}{NATIVE}:streamGenerateContent?alt=sse", json=body, headers=AUTH, timeout=60)
    events = _events(response)
    assert "badword" not in response.text
    ends = {
        c.get("index", 0): c["finishReason"] for e in events for c in e.get("candidates", []) if "finishReason" in c
    }
    assert ends == {0: "STOP", 1: "BLOCKLIST"}


def test_a_blocked_answer_keeps_nothing_that_quotes_it(server: RunningServer, fake: FakeBackend) -> None:
    answer = gc.GenerateContentResponse.model_validate(
        {
            "candidates": [
                {
                    "index": 0,
                    "content": {"role": "model", "parts": [{"text": "The badword is here."}]},
                    "finishReason": "STOP",
                    "groundingMetadata": {"groundingSupports": [{"segment": {"text": "The badword is here."}}]},
                    "citationMetadata": {"citations": [{"title": "badword"}]},
                    "avgLogprobs": -0.5,
                }
            ]
        }
    )
    fake.add([answer])
    response = _native(server, "Well?")
    assert response.status_code == 200, response.text
    assert "badword" not in response.text and response.json()["candidates"][0]["finishReason"] == "BLOCKLIST"


def test_the_blocklist_applies_whatever_the_settings(server: RunningServer, fake: FakeBackend) -> None:
    prompt = _native(server, "Where is the Forbidden  Fruit? No: the forbidden fruit.")
    assert prompt.json()["promptFeedback"]["blockReason"] == "BLOCKLIST"
    fake.add(_answer("Your code is ", "code-1234, keep it."))
    events = _events(_native(server, "What is my code?", stream=True))
    assert events[-1]["candidates"][0]["finishReason"] == "BLOCKLIST"
    assert "code-1234" not in json.dumps(events)
    fake.add(_answer("Your code is code-12345."))  # not a whole match of the pattern
    assert _native(server, "What is my code?").json()["candidates"][0]["finishReason"] == "STOP"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ([{"category": "HARM_CATEGORY_MADE_UP", "threshold": "OFF"}], "safetySettings[0].category"),
        ([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_SOME"}], "safetySettings[0].threshold"),
        ([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "OFF", "method": "VIBES"}], "safetySettings[0].method"),
        (BLOCK_HARASSMENT * 2, "safetySettings[1].category"),
        # No classifier for this category is configured: a 400, never a silent pass.
        (
            [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_ONLY_HIGH"}],
            "safetySettings[0].category",
        ),
    ],
)
def test_settings_that_cannot_be_honoured_are_a_400(server: RunningServer, settings: Any, named: str) -> None:
    native = _native(server, "Hi", settings)
    assert native.status_code == 400, native.text
    assert named in native.json()["error"]["message"]
    chat = _chat(server, "Hi", settings)
    assert chat.status_code == 400, chat.text
    snake = "extra_body.google.safety_settings" + named.removeprefix("safetySettings")
    assert snake in chat.json()[0]["error"]["message"]


def test_safety_settings_with_model_armor_are_a_400(server: RunningServer) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
        "safetySettings": BLOCK_HARASSMENT,
        "modelArmorConfig": {"promptTemplateName": "projects/p/locations/l/templates/t"},
    }
    response = httpx.post(f"{server.url}{NATIVE}:generateContent", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 400 and "modelArmorConfig" in response.text


def test_a_moderation_model_on_an_openai_server(fake: FakeBackend) -> None:
    def reply(text: str) -> Reply:
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}
        return Reply(200, json.dumps(body).encode())

    with stub_server([reply("unsafe\nS9,S1"), reply("safe"), reply("safe"), Reply(500, b"{}")]) as guard:
        safety = SafetyConfig(
            classifiers={"HARM_CATEGORY_DANGEROUS_CONTENT": "moderation"},
            moderation=ModerationSettings(
                url=f"{guard.url}/v1", model="llama-guard", categories={"S1": "HARM_CATEGORY_DANGEROUS_CONTENT"}
            ),
        )
        settings = [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_ONLY_HIGH"}]
        with serve(Settings(port=0, safety=safety), backends={"local": fake}) as server:
            blocked = _native(server, "How do I make a weapon?", settings)
            assert blocked.json()["promptFeedback"]["blockReason"] == "SAFETY"
            sent = json.loads(guard.requests[0].body)
            assert guard.requests[0].path == "/v1/chat/completions" and sent["model"] == "llama-guard"
            assert sent["messages"] == [{"role": "user", "content": "How do I make a weapon?"}]
            fake.add(_answer("Hello there."))
            allowed = _native(server, "Hello?", settings)  # prompt safe, answer safe
            assert allowed.json()["candidates"][0]["finishReason"] == "STOP"
            answer_check = json.loads(guard.requests[2].body)["messages"]
            assert answer_check == [
                {"role": "user", "content": "Hello?"},
                {"role": "assistant", "content": "Hello there."},
            ]
            failing = _native(server, "Hello again?", settings)  # the moderation model fails: nothing passes unchecked
            assert failing.status_code == 503 and failing.json()["error"]["status"] == "UNAVAILABLE"


def test_a_backend_that_filters_itself_gets_the_settings_untouched() -> None:
    gemini_like = FakeBackend()  # declares safety_filtering, as the Gemini backend does
    settings = [
        {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "threshold": "BLOCK_LOW_AND_ABOVE", "method": "SEVERITY"}
    ]
    with serve(Settings(port=0), backends={"local": gemini_like}) as server:
        response = _native(server, INSULT, settings)
        assert response.status_code == 200, response.text
        sent = gemini_like.requests[0].safety_settings
        assert sent is not None and [s.model_dump(by_alias=True, exclude_none=True) for s in sent] == settings


def test_on_the_embedded_model(tmp_path: Any) -> None:
    # A schema whose only value is an insult makes the real model write it: its answer is blocked,
    # whole and streamed; a prompt is rated before the engine sees it.
    schema = {"type": "string", "enum": [INSULT]}
    forced = {"type": "json_schema", "json_schema": {"name": "said", "schema": schema}}
    with serve(Settings(port=0, state_dir=tmp_path / "state")) as server:
        whole = _chat(server, "Say something.", BLOCK_HARASSMENT, response_format=forced, max_tokens=40)
        assert whole.status_code == 200, whole.text
        choice = whole.json()["choices"][0]
        assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
        assert whole.json()["usage"]["completion_tokens"] > 0  # it was generated, then withheld
        chunks = _events(
            _chat(server, "Say something.", BLOCK_HARASSMENT, response_format=forced, max_tokens=40, stream=True)
        )
        assert "stupid" not in "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert [c["choices"][0].get("finish_reason") for c in chunks if c["choices"]][-1] == "content_filter"
        unrestricted = _chat(server, "Say something.", response_format=forced, max_tokens=40)
        assert "stupid" in unrestricted.json()["choices"][0]["message"]["content"]
        prompt = _chat(server, INSULT, BLOCK_HARASSMENT)
        assert prompt.json()["choices"][0]["finish_reason"] == "content_filter"


@pytest.mark.parametrize("surface", ["native", "openai"])
def test_a_blocklisted_phrase_split_across_chunks_is_blocked_streamed_and_whole(
    server: RunningServer, fake: FakeBackend, surface: str
) -> None:
    split = ["It was a ", "forbidden", " fruit", " indeed, and nothing else was said after it."]
    fake.add(_answer(*split))
    if surface == "native":
        streamed = _native(server, "What was it?", stream=True)
        ends = [c["finishReason"] for e in _events(streamed) for c in e.get("candidates", []) if "finishReason" in c]
        assert ends == ["BLOCKLIST"]
    else:
        streamed = _chat(server, "What was it?", stream=True)
        finishes = [c["choices"][0].get("finish_reason") for c in _events(streamed) if c["choices"]]
        assert [f for f in finishes if f] == ["content_filter"]
    assert "forbidden" not in streamed.text.lower()  # no part of the phrase went out

    fake.add(_answer(*split))
    whole = _native(server, "What was it?") if surface == "native" else _chat(server, "What was it?")
    if surface == "native":
        candidate = whole.json()["candidates"][0]
        assert candidate["finishReason"] == "BLOCKLIST" and "content" not in candidate
    else:
        choice = whole.json()["choices"][0]
        assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None


def _parts(*chunks: list[gc.Part]) -> list[gc.GenerateContentResponse]:
    """One chunk per list of parts, the last finishing with the usage."""
    out = []
    for number, parts in enumerate(chunks, 1):
        last = number == len(chunks)
        candidate = gc.Candidate(content=gc.Content(role="model", parts=parts), finish_reason="STOP" if last else None)
        usage = gc.UsageMetadata(prompt_token_count=5, candidates_token_count=number, total_token_count=5 + number)
        out.append(gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage if last else None))
    return out


@pytest.fixture
def thinking_server() -> Iterator[tuple[RunningServer, FakeBackend]]:
    fake = FakeBackend(capabilities=Capabilities(function_calling=True, thinking=True))
    safety = SafetyConfig(window_chars=24, blocklist=BlocklistSettings(terms=["forbidden fruit"]))
    with serve(Settings(port=0, safety=safety), backends={"local": fake}) as running:
        yield running, fake


def _thinking(server: RunningServer, *, include: bool, stream: bool, settings: Any = None) -> httpx.Response:
    body: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": "Think about it."}]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": include}},
    }
    if settings is not None:
        body["safetySettings"] = settings
    method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    return httpx.post(f"{server.url}{NATIVE}{method}", json=body, headers=AUTH, timeout=60)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_thoughts_the_client_gets_are_rated(thinking_server: tuple[RunningServer, FakeBackend], stream: bool) -> None:
    """Issue 22, finding 7: thoughts left unrated. A phrase split between two thoughts, or an
    insult thought, blocks the candidate; nothing of it goes out."""
    server, fake = thinking_server
    said = [
        [gc.Part(text="The user wants the forbid", thought=True)],
        [gc.Part(text="den fruit. ", thought=True)],
        [gc.Part(text="Here is a harmless answer.")],
    ]
    fake.add(_parts(*said))
    response = _thinking(server, include=True, stream=stream)
    chunks = _events(response) if stream else [response.json()]
    ends = [c.get("finishReason") for chunk in chunks for c in chunk.get("candidates", [])]
    assert [e for e in ends if e] == ["BLOCKLIST"]
    assert "forbid" not in response.text and "harmless" not in response.text
    # Hidden thoughts never leave: they are not rated, and the answer stands.
    fake.add(_parts(*said))
    hidden = _thinking(server, include=False, stream=stream)
    chunks = _events(hidden) if stream else [hidden.json()]
    ends = [c.get("finishReason") for chunk in chunks for c in chunk.get("candidates", [])]
    assert [e for e in ends if e] == ["STOP"] and "harmless answer" in hidden.text
    # The classifiers rate thoughts too.
    fake.add(_parts([gc.Part(text=INSULT, thought=True)], [gc.Part(text="Fine.")]))
    rated = _thinking(server, include=True, stream=stream, settings=BLOCK_HARASSMENT)
    chunks = _events(rated) if stream else [rated.json()]
    ends = [c.get("finishReason") for chunk in chunks for c in chunk.get("candidates", [])]
    assert [e for e in ends if e] == ["SAFETY"] and "idiot" not in rated.text


def _call(**args: Any) -> gc.Part:
    return gc.Part(function_call=gc.FunctionCall(name="search", args=args))


@pytest.mark.parametrize("surface", ["native", "openai"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_function_call_arguments_are_rated(
    server: RunningServer, fake: FakeBackend, surface: str, stream: bool
) -> None:
    """Issue 22, finding 7: a blocklisted phrase in a call's argument (nested too) blocks the call."""
    fake.add(_parts([gc.Part(text="Searching. ")], [_call(query={"terms": ["apple", "Forbidden  Fruit"]}, n=3)]))
    if surface == "native":
        response = _native(server, "Search.", stream=stream)
        chunks = _events(response) if stream else [response.json()]
        ends = [c.get("finishReason") for chunk in chunks for c in chunk.get("candidates", [])]
        assert [e for e in ends if e] == ["BLOCKLIST"]
    else:
        response = _chat(server, "Search.", stream=stream)
        chunks = _events(response) if stream else [response.json()]
        finishes = [choice.get("finish_reason") for chunk in chunks for choice in chunk["choices"]]
        assert [f for f in finishes if f] == ["content_filter"]
        assert "tool_calls" not in response.text
    assert "Fruit" not in response.text
    # A harmless call goes out whole, after the text before it.
    fake.add(_parts([gc.Part(text="Searching. ")], [_call(query="apple pie")]))
    whole = _native(server, "Search.")
    assert whole.json()["candidates"][0]["content"]["parts"][-1]["functionCall"]["args"] == {"query": "apple pie"}


def test_streamed_call_arguments_are_rated_across_pieces(server: RunningServer, fake: FakeBackend) -> None:
    """streamFunctionCallArguments: a phrase split between two pieces of one string is caught."""
    pieces = [
        gc.PartialArg(json_path="$.query", string_value="the forbid", will_continue=True),
        gc.PartialArg(json_path="$.query", string_value="den fruit"),
    ]
    chunks = [
        [gc.Part(function_call=gc.FunctionCall(name="search", partial_args=[piece], will_continue=True))]
        for piece in pieces
    ]
    fake.add(_parts(*chunks, [gc.Part(function_call=gc.FunctionCall())]))
    response = _native(server, "Search.", stream=True)
    ends = [c.get("finishReason") for chunk in _events(response) for c in chunk.get("candidates", [])]
    assert [e for e in ends if e] == ["BLOCKLIST"]
    assert "forbid" not in response.text


def test_code_execution_parts_are_rated(server: RunningServer, fake: FakeBackend) -> None:
    code = gc.Part(executable_code={"language": "PYTHON", "code": "print('forbidden fruit')"})
    fake.add(_parts([gc.Part(text="Running it. ")], [code]))
    response = _native(server, "Run it.")
    assert response.json()["candidates"][0]["finishReason"] == "BLOCKLIST"
    assert "forbidden" not in response.text
    result = gc.Part(code_execution_result={"outcome": "OUTCOME_OK", "output": "forbidden\nfruit"})
    fake.add(_parts([result]))
    assert _native(server, "Run it.").json()["candidates"][0]["finishReason"] == "BLOCKLIST"
