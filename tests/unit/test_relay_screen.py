"""The blocklist on relayed chat completions (relay/screen.py): prompts, streams cut anywhere, and
whole answers; what passes is byte for byte what came."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openvertex.relay.screen import AnswerScreen, StreamScreen, blocked_prompt
from openvertex.service.blocklist import Blocklist
from openvertex.settings import BlocklistSettings

BLOCKLIST = Blocklist(BlocklistSettings(terms=["forbidden fruit"], patterns=[r"\bcode-\d{4}\b"]))


def _frame(index: int = 0, finish: str | None = None, **delta: Any) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunk["choices"] = [{"index": index, "delta": delta, "finish_reason": finish}]
    return f"data: {json.dumps(chunk)}\n\n".encode()


def _stream(frames: list[bytes], cuts: list[int] | None = None) -> bytes:
    body = b"".join(frames)
    screen = StreamScreen(BLOCKLIST)
    out = bytearray()
    last = 0
    for cut in sorted(cuts or []):
        out += screen.feed(body[last:cut])
        last = cut
    out += screen.feed(body[last:])
    return bytes(out + screen.finish())


def _events(body: bytes) -> list[dict[str, Any]]:
    lines = [line[6:] for line in body.decode().split("\n") if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def _said(body: bytes) -> str:
    return "".join(c["delta"].get("content") or "" for e in _events(body) for c in e["choices"] if "delta" in c)


SPLIT = [
    _frame(role="assistant", content=""),
    _frame(content="It was a "),
    _frame(content="forbid"),
    _frame(content="den"),
    _frame(content=" fruit, and more."),
    _frame(finish="stop"),
    b"data: [DONE]\n\n",
]


@given(st.lists(st.integers(min_value=0, max_value=len(b"".join(SPLIT))), max_size=6))
def test_a_phrase_split_across_frames_is_stopped_however_the_bytes_arrive(cuts: list[int]) -> None:
    body = _stream(SPLIT, cuts)
    assert "forbid" not in body.decode()
    assert _said(body) == "It was a "  # what came before the hit went out
    finishes = [c.get("finish_reason") for e in _events(body) for c in e["choices"]]
    assert [f for f in finishes if f] == ["content_filter"]
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_clean_stream_passes_byte_for_byte() -> None:
    frames = [_frame(content="A clean "), b": keep-alive\n\n", _frame(content="answer."), _frame(finish="stop")]
    assert _stream([*frames, b"data: [DONE]\n\n"], [5, 40]) == b"".join(frames) + b"data: [DONE]\n\n"


def test_reasoning_and_tool_call_arguments_are_searched() -> None:
    reasoning = _stream(
        [_frame(reasoning_content="the code-"), _frame(reasoning_content="1234 is"), _frame(finish="stop")]
    )
    assert "1234" not in reasoning.decode()
    call = {"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": '{"q": "Forbidden '}}
    more = {"index": 0, "function": {"arguments": 'fruit"}'}}
    arguments = _stream([_frame(tool_calls=[call]), _frame(tool_calls=[more]), _frame(finish="tool_calls")])
    assert "Forbidden" not in arguments.decode()
    assert [c.get("finish_reason") for e in _events(arguments) for c in e["choices"]][-1] == "content_filter"


def test_one_choice_stops_the_others_go_on() -> None:
    frames = [
        _frame(0, content="forbidden "),
        _frame(1, content="Apples "),
        _frame(0, content="fruit"),
        _frame(1, content="are fine."),
        _frame(0, finish="stop"),
        _frame(1, finish="stop"),
    ]
    events = _events(_stream(frames))
    by_choice: dict[int, str] = {}
    for event in events:
        for choice in event["choices"]:
            by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (choice["delta"].get("content") or "")
    assert by_choice == {0: "", 1: "Apples are fine."}
    finishes = {c["index"]: c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")}
    assert finishes == {0: "content_filter", 1: "stop"}


def test_a_whole_answer_is_screened_at_its_end() -> None:
    answer = {
        "id": "c",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "The Forbidden\n Fruit."},
                "finish_reason": "stop",
            },
            {"index": 1, "message": {"role": "assistant", "content": "Apples."}, "finish_reason": "stop"},
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    raw = json.dumps(answer).encode()
    screen = AnswerScreen(BLOCKLIST)
    assert screen.feed(raw[:10]) + screen.feed(raw[10:]) == b""  # held to the end
    screened = json.loads(screen.finish())
    assert screened["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": None},
        "finish_reason": "content_filter",
        "logprobs": None,
    }
    assert screened["choices"][1] == answer["choices"][1] and screened["usage"] == answer["usage"]
    clean = json.dumps({"choices": [{"index": 0, "message": {"content": "Apples."}}]}).encode()
    screen = AnswerScreen(BLOCKLIST)
    assert screen.feed(clean) + screen.finish() == clean


@pytest.mark.parametrize(
    ("messages", "blocked"),
    [
        ([{"role": "user", "content": "Tell me of the forbidden fruit."}], True),
        ([{"role": "user", "content": [{"type": "text", "text": "my code-1234"}]}], True),
        ([{"role": "assistant", "content": "forbidden fruit"}, {"role": "user", "content": "ok"}], False),
        ([{"role": "user", "content": "forbidden fruits"}], False),
        ("not a list", False),
    ],
)
def test_the_prompt_is_searched_in_its_user_turns(messages: Any, blocked: bool) -> None:
    assert blocked_prompt({"messages": messages}, BLOCKLIST) is blocked


def test_tool_call_arguments_are_read_as_json_and_held_to_the_end() -> None:
    """An escape inside a JSON string cannot hide a term, nor can two strings of one call."""
    for arguments in ['{"q": "forbidden\\u0020fruit"}', '{"a": "forbidden", "b": "fruit"}']:
        call = {"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": arguments[:9]}}
        more = {"index": 0, "function": {"arguments": arguments[9:]}}
        body = _stream([_frame(tool_calls=[call]), _frame(tool_calls=[more]), _frame(finish="tool_calls")])
        assert "forbidden" not in body.decode()
        assert [c.get("finish_reason") for e in _events(body) for c in e["choices"]] == ["content_filter"]
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "t", "function": {"arguments": arguments}}],
        }
        whole = json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}]}).encode()
        screen = AnswerScreen(BLOCKLIST)
        assert json.loads(screen.feed(whole) + screen.finish())["choices"][0]["finish_reason"] == "content_filter"
    clean = {"index": 0, "id": "t", "type": "function", "function": {"name": "f", "arguments": '{"q": "apples"}'}}
    frames = [_frame(tool_calls=[clean]), _frame(finish="tool_calls")]
    screen = StreamScreen(BLOCKLIST)
    assert screen.feed(frames[0]) == b""  # a call is held until its choice ends
    assert screen.feed(frames[1]) + screen.finish() == b"".join(frames)


def test_frames_an_upstream_shapes_oddly_pass() -> None:
    odd = [b'data: {"choices": null}\n\n', b'data: {"choices": [1, "x"]}\n\n', b"data: not json\n\n"]
    assert _stream([*odd, _frame(content="fine"), _frame(finish="stop")]).startswith(b"".join(odd))


def test_a_message_s_text_parts_are_read_joined() -> None:
    parts = [{"type": "text", "text": "tell me of the forbidden"}, {"type": "text", "text": "fruit"}]
    assert blocked_prompt({"messages": [{"role": "user", "content": parts}]}, BLOCKLIST)


def test_a_term_in_a_key_of_the_arguments_is_caught() -> None:
    message = {"tool_calls": [{"function": {"arguments": '{"forbidden fruit": 1}'}}]}
    whole = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
    screen = AnswerScreen(BLOCKLIST)
    assert json.loads(screen.feed(whole) + screen.finish())["choices"][0]["finish_reason"] == "content_filter"
