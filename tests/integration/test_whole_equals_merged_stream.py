"""One pipeline for streamed and whole answers: for any way a backend cuts its answer into chunks
(text, thoughts, function calls; thought signing, grounding and the blocklist on or off), the
whole answer equals the merge of the streamed one, on both surfaces, through the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openvertex.backends.base import Capabilities, merge_chunks
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.service.signatures import Kind, ThoughtSigner
from openvertex.settings import BlocklistSettings, GroundingSettings, SafetyConfig, Settings
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
NATIVE = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
SECRET = "ab" * 32
WORDS = ["The", "Zorblax", "festival", "takes", "place", "in", "Quenton", "every", "March.", "[1]", "badword", "é"]

Piece = tuple[str, str]  # (text | thought | call, its text or the function's name)

words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(lambda chosen: " ".join(chosen) + " ")
pieces = st.lists(
    st.one_of(
        st.tuples(st.just("text"), words),
        st.tuples(st.just("thought"), words),
        st.tuples(st.just("call"), st.sampled_from(["get_weather", "get_time"])),
    ),
    min_size=1,
    max_size=8,
)


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    # No signatures, no filtering, no Google Search of its own: every stage of the pipeline runs.
    return FakeBackend(capabilities=Capabilities(function_calling=True, thinking=True))


@pytest.fixture(scope="module")
def server(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    corpus = tmp_path_factory.mktemp("corpus")
    (corpus / "festival.md").write_text("# The Zorblax festival\n\nThe Zorblax festival takes place in Quenton.\n")
    settings = Settings(
        port=0,
        state_dir=tmp_path_factory.mktemp("state"),
        thought_signature_secret=SECRET,
        safety=SafetyConfig(window_chars=24, blocklist=BlocklistSettings(terms=["badword"])),
        grounding=GroundingSettings(provider="corpus", corpus_dir=corpus),
    )
    with serve(settings, backends={"local": fake}) as running:
        yield running


def _chunks(script: list[Piece], cuts: list[bool]) -> list[gc.GenerateContentResponse]:
    """The answer's parts, a new chunk after each part where `cuts` says so; the last one finishes."""
    groups: list[list[gc.Part]] = [[]]
    for position, (kind, value) in enumerate(script):
        if kind == "call":
            part = gc.Part(function_call=gc.FunctionCall(name=value, args={"city": "Quenton"}))
        else:
            part = gc.Part(text=value, thought=True if kind == "thought" else None)
        groups[-1].append(part)
        if position < len(script) - 1 and position < len(cuts) and cuts[position]:
            groups.append([])
    chunks = []
    for number, parts in enumerate(groups, 1):
        candidate = gc.Candidate(
            index=0,
            content=gc.Content(role="model", parts=parts),
            finish_reason="STOP" if number == len(groups) else None,
        )
        usage = gc.UsageMetadata(prompt_token_count=7, candidates_token_count=number, total_token_count=7 + number)
        chunks.append(gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage))
    return chunks


def _opened(signature: str) -> str:
    """A signature by what it vouches for (each is sealed with a nonce of its own)."""
    signer = ThoughtSigner(bytes.fromhex(SECRET))
    for kind, bound in ((Kind.TEXT, ""), (Kind.FUNCTION_CALL, "get_weather"), (Kind.FUNCTION_CALL, "get_time")):
        thoughts = signer.open(signature, kind, bound)
        if thoughts is not None:
            return f"signed {kind.name} {bound}: {thoughts}"
    raise AssertionError(f"not a signature of this server: {signature}")


def _comparable(value: Any) -> Any:
    """Ids and times differ between two requests, signatures by their nonce: what they say stays.
    An index of 0 is proto3's default: Vertex leaves it out, a merge writes it."""
    if isinstance(value, dict):
        return {
            key: _opened(item) if key in ("thoughtSignature", "signature") and item else _comparable(item)
            for key, item in value.items()
            if key not in ("responseId", "createTime", "id", "created") and not (key == "index" and item == 0)
        }
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def _blocked(answer: dict[str, Any]) -> bool:
    return "BLOCKLIST" in json.dumps(answer) or "content_filter" in json.dumps(answer)


def _native(server: RunningServer, grounded: bool, thoughts: bool, method: str) -> httpx.Response:
    body: dict[str, Any] = {
        "contents": [{"role": "user", "parts": [{"text": "Where is the Zorblax festival?"}]}],
        "generationConfig": {"thinkingConfig": {"includeThoughts": thoughts}},
    }
    if grounded:
        body["tools"] = [{"googleSearch": {}}]
    return httpx.post(f"{server.url}{NATIVE}:{method}", json=body, headers=AUTH, timeout=30)


def _chat(server: RunningServer, grounded: bool, thoughts: bool, stream: bool) -> httpx.Response:
    body: dict[str, Any] = {
        "model": "google/gemini-2.5-flash",
        "messages": [{"role": "user", "content": "Where is the Zorblax festival?"}],
        "stream": stream,
        "extra_body": {"google": {"thinking_config": {"include_thoughts": thoughts}, "thought_tag_marker": "think"}},
    }
    if grounded:
        body["web_search_options"] = {}
    return httpx.post(server.chat_url, json=body, headers=AUTH, timeout=30)


def _merged_native(events: list[dict[str, Any]]) -> dict[str, Any]:
    return merge_chunks(gc.GenerateContentResponse.model_validate(event) for event in events).to_json_dict()


def _merged_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    """A streamed chat completion folded into one message, as a client would; a block withdraws
    what the answer said before it, as the pipeline's merge of a whole answer does."""
    content, calls, annotations = "", {}, None
    finish, usage, signature = None, None, None
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            delta = choice["delta"]
            content += delta.get("content") or ""
            signature = (delta.get("extra_content") or {}).get("google", {}).get("thought_signature") or signature
            annotations = delta.get("annotations") or annotations
            finish = choice.get("finish_reason") or finish
            if finish == "content_filter":  # a block withdraws what the answer said (merge_chunks' rule)
                content, calls, signature, annotations = "", {}, None, None
            for call in delta.get("tool_calls") or []:
                known = calls.setdefault(call["index"], {"name": call["function"]["name"], "arguments": ""})
                known["arguments"] += call["function"]["arguments"]
                known["signature"] = (call.get("extra_content") or {}).get("google", {}).get("thought_signature")
    return {
        "content": content or None,
        "tool_calls": list(calls.values()) or None,
        "signature": signature,
        "annotations": annotations,
        "finish_reason": finish,
        "usage": usage,
    }


def _whole_chat(completion: dict[str, Any]) -> dict[str, Any]:
    choice = completion["choices"][0]
    message = choice["message"]
    calls = [
        {
            "name": call["function"]["name"],
            "arguments": call["function"]["arguments"],
            "signature": (call.get("extra_content") or {}).get("google", {}).get("thought_signature"),
        }
        for call in message.get("tool_calls") or []
    ]
    return {
        "content": message.get("content"),
        "tool_calls": calls or None,
        "signature": (message.get("extra_content") or {}).get("google", {}).get("thought_signature"),
        "annotations": message.get("annotations"),
        "finish_reason": choice["finish_reason"],
        "usage": completion["usage"],
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(answer=st.tuples(pieces, st.lists(st.booleans(), max_size=8)), options=st.tuples(st.booleans(), st.booleans()))
def test_the_whole_answer_is_the_merged_stream_on_both_surfaces(
    server: RunningServer, fake: FakeBackend, answer: tuple[list[Piece], list[bool]], options: tuple[bool, bool]
) -> None:
    (script, cuts), (grounded, thoughts) = answer, options
    fake.add(_chunks(script, cuts))
    whole = _native(server, grounded, thoughts, "generateContent")
    assert whole.status_code == 200, whole.text
    fake.add(_chunks(script, cuts))
    merged = _merged_native(_events(_native(server, grounded, thoughts, "streamGenerateContent?alt=sse")))
    expected = whole.json()
    if _blocked(expected):  # a stream stopped at its block generated less: its usage is its own
        expected.pop("usageMetadata", None)
        merged.pop("usageMetadata", None)
    assert _comparable(merged) == _comparable(expected)

    fake.add(_chunks(script, cuts))
    completion = _chat(server, grounded, thoughts, stream=False)
    assert completion.status_code == 200, completion.text
    fake.add(_chunks(script, cuts))
    folded = _merged_chat(_events(_chat(server, grounded, thoughts, stream=True)))
    whole_chat = _whole_chat(completion.json())
    if _blocked(whole_chat):
        whole_chat.pop("usage")
        folded.pop("usage")
    assert _comparable(folded) == _comparable(whole_chat)


def test_a_whole_answer_is_shaped_as_gemini_answers(server: RunningServer, fake: FakeBackend) -> None:
    """Text runs merge into one part carrying its signature; each function call is its own part."""
    script: list[Piece] = [("thought", "Let me see. "), ("text", "The "), ("text", "Zorblax "), ("text", "festival. ")]
    fake.add(_chunks(script, [True, True, True]))
    parts = _native(server, False, True, "generateContent").json()["candidates"][0]["content"]["parts"]
    assert [p.get("text") for p in parts] == ["Let me see. ", "The Zorblax festival. "]
    assert parts[0]["thought"] is True and "thoughtSignature" not in parts[0]
    assert _opened(parts[1]["thoughtSignature"]) == "signed TEXT : Let me see. "

    calls: list[Piece] = [("text", "Checking. "), ("call", "get_weather"), ("call", "get_time")]
    fake.add(_chunks(calls, [False, False]))
    parts = _native(server, False, False, "generateContent").json()["candidates"][0]["content"]["parts"]
    assert [p.get("functionCall", {}).get("name") for p in parts] == [None, "get_weather", "get_time"]
    assert "thoughtSignature" in parts[1] and "thoughtSignature" not in parts[2]
