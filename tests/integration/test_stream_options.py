"""Streaming envelope details over real HTTP, with scripted Gemini chunks."""

from __future__ import annotations

import json
from typing import Any

import httpx

from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from tests.support.server import RunningServer

AUTH = {"Authorization": "Bearer test"}


def _chunks(fake_server: RunningServer, **fields: Any) -> list[dict[str, Any]]:
    body = {
        "model": "google/gemini-2.5-flash",
        "messages": [{"role": "user", "content": "one two"}],
        "stream": True,
        **fields,
    }
    with httpx.stream("POST", fake_server.chat_url, json=body, headers=AUTH) as response:
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_usage_on_the_last_chunk_unless_include_usage_is_false(fake_server: RunningServer) -> None:
    for options in ({}, {"stream_options": {"include_usage": True}}):
        chunks = _chunks(fake_server, **options)
        assert chunks[-1]["usage"]["total_tokens"] == 4  # the echo backend counts words
        assert chunks[-1]["choices"] and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    chunks = _chunks(fake_server, stream_options={"include_usage": False})
    assert all("usage" not in chunk for chunk in chunks)


def test_thoughts_are_not_returned_unless_asked(fake_server: RunningServer, fake: FakeBackend) -> None:
    thought = gc.Candidate(index=0, content=gc.Content(role="model", parts=[gc.Part(text="hmm", thought=True)]))
    answer = gc.Candidate(index=0, content=gc.Content(role="model", parts=[gc.Part(text="4")]), finish_reason="STOP")
    fake.add([gc.GenerateContentResponse(candidates=[thought]), gc.GenerateContentResponse(candidates=[answer])])
    chunks = _chunks(fake_server, extra_body={"google": {"thought_tag_marker": "think"}})
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "4"


def test_thought_tags_and_flags_cross_the_wire(fake_server: RunningServer, fake: FakeBackend) -> None:
    def part_chunk(part: gc.Part, finish: str | None = None) -> gc.GenerateContentResponse:
        candidate = gc.Candidate(index=0, content=gc.Content(role="model", parts=[part]), finish_reason=finish)
        return gc.GenerateContentResponse(
            candidates=[candidate], usage_metadata=gc.UsageMetadata(thoughts_token_count=3)
        )

    fake.add([part_chunk(gc.Part(text="hmm", thought=True)), part_chunk(gc.Part(text="4"), "STOP")])
    thoughts = {"thought_tag_marker": "think", "thinking_config": {"include_thoughts": True}}
    chunks = _chunks(fake_server, extra_body={"google": thoughts})
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["<think>hmm", "</think>\n\n4"]
    assert chunks[0]["choices"][0]["delta"]["extra_content"] == {"google": {"thought": True}}
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 3}
    # The marker reached the translation of the request too: history with tags is split back.
    fake.add([part_chunk(gc.Part(text="ok"), "STOP")])
    history = [
        {"role": "user", "content": "2+2"},
        {"role": "assistant", "content": "<think>hmm</think>\n\n4"},
        {"role": "user", "content": "and 3+3"},
    ]
    _chunks(fake_server, messages=history, extra_body={"google": {"thought_tag_marker": "think"}})
    parts = fake.requests[-1].contents[1].parts
    assert [(p.text, p.thought) for p in parts] == [("hmm", True), ("4", None)]
