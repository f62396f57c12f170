"""The operator's blocklist on self-deployed endpoints' chat completions, which are otherwise
relayed byte for byte.

A prompt whose user turns hold a term (a message's text parts read joined, as the upstream
joins them) is answered here, as the `openapi` endpoint answers a blocked prompt
(`finish_reason: "content_filter"`, `content: null`), and never goes upstream. An answer is read
as it passes: each choice's text (its `content`, its reasoning and its tool calls' arguments, in
the order they come, a newline between kinds) is searched a frame at a time, and a frame is held
until the blocklist has read `reach` characters past it (or its choice ended). A tool call's
frames are held until its choice ends, when its arguments are also read as JSON, their strings
decoded (an escape cannot hide a term). A choice that hits ends there with `content_filter`; its
held frames and all it sends later are dropped, and the frames before the hit went out as they
were. A whole answer is read at its end: a choice that hits loses its message. Only what cannot
be read as OpenAI chat completions (another content type, a frame over MAX_FRAME_BYTES) passes
unscreened, and the log says so.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from openvertex.relay.sse_frames import MAX_FRAME_BYTES, SseFrames, frame_data, json_object
from openvertex.service.blocklist import Blocklist, json_strings

log = logging.getLogger(__name__)

MAX_ANSWER_BYTES = 64 << 20  # a whole answer is read at its end: longer ones pass unscreened


def blocked_prompt(body: Any, blocklist: Blocklist) -> bool:
    """Whether a chat completions request's user turns hold a blocklisted term."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return False
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            parts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
            texts += ["\n".join(parts), "".join(parts)]  # as vLLM and as Gemini join them
    return any(blocklist.hit(text) for text in texts)


def blocked_prompt_answer(model: str | None, *, stream: bool) -> tuple[str, bytes]:
    """The answer to a blocked prompt: its content type and body."""
    created = int(time.time())
    head = {"id": f"chatcmpl-blocked-{created}", "created": created, "model": model or ""}
    if not stream:
        message = {"role": "assistant", "content": None}
        choice = {"index": 0, "message": message, "finish_reason": "content_filter", "logprobs": None}
        whole = {**head, "object": "chat.completion", "choices": [choice]}
        return "application/json", json.dumps(whole).encode()
    chunk = {
        **head,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "content_filter"}],
    }
    return "text/event-stream", f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()


@dataclass(slots=True)
class _Choice:
    text: str = ""
    kind: str = ""  # what the last text was: content, reasoning or arguments
    checked: int = 0  # characters of `text` searched, their frames released
    ended: bool = False  # its finish_reason came
    blocked: bool = False
    calls: dict[int, str] = field(default_factory=dict)  # each tool call's arguments so far
    judged: tuple[int, bool] = (-1, False)  # the arguments' length when last read as JSON, and the verdict

    def decoded_hit(self, blocklist: Blocklist) -> bool:
        """Whether its tool calls' arguments, read as JSON, hold a term in their strings (read
        again only when they have grown: each of a call's frames asks once its choice ends)."""
        length = sum(map(len, self.calls.values()))
        if self.judged[0] != length:
            self.judged = length, any(_decoded_hit(arguments, blocklist) for arguments in self.calls.values())
        return self.judged[1]

    def add(self, kind: str, piece: str) -> None:
        if self.kind and kind != self.kind:
            self.text += "\n"
        self.kind = kind
        self.text += piece


@dataclass(slots=True)
class _Frame:
    raw: bytes
    event: dict[str, Any] | None  # the parsed data of a chunk frame; None: another frame
    ends: dict[int, int] = field(default_factory=dict)  # choice → its text's length after this frame
    calls: set[int] = field(default_factory=set)  # the choices whose tool calls it carries


class StreamScreen:
    """An SSE stream of chat completion chunks, screened frame by frame: `feed` and `finish` give
    the bytes to send on."""

    def __init__(self, blocklist: Blocklist) -> None:
        self._blocklist = blocklist
        self._frames_in = SseFrames()
        self._held: list[_Frame] = []
        self._choices: dict[int, _Choice] = {}
        self._reading = True

    def feed(self, chunk: bytes) -> bytes:
        if not self._reading:
            return chunk
        for frame in self._frames_in.feed(chunk):
            self._hold(frame)
        out = self._release(final=False)
        if self._frames_in.overlong:
            log.warning("a relayed stream's frame is longer than %d bytes: the rest passes unscreened", MAX_FRAME_BYTES)
            self._reading = False
            out += self._release(final=True) + self._frames_in.rest()
        return out

    def finish(self) -> bytes:
        if rest := self._frames_in.rest():
            self._hold(rest)
        return self._release(final=True)

    def _hold(self, raw: bytes) -> None:
        event = _event(raw)
        frame = _Frame(raw, event)
        for choice in _choices(event):
            index = choice.get("index", 0)
            if not isinstance(index, int):
                continue
            state = self._choices.setdefault(index, _Choice())
            for kind, piece in _pieces(choice.get("delta")):
                state.add(kind, piece)
            for number, arguments in _arguments(choice.get("delta")):
                state.calls[number] = state.calls.get(number, "") + arguments
                frame.calls.add(index)
            state.ended = state.ended or choice.get("finish_reason") is not None
            frame.ends[index] = len(state.text)
        self._held.append(frame)

    def _release(self, *, final: bool) -> bytes:
        reach = self._blocklist.reach
        out = bytearray()
        while self._held:
            frame = self._held[0]
            states = {index: self._choices[index] for index in frame.ends}
            due = final or all(
                state.ended or (index not in frame.calls and len(state.text) > frame.ends[index] + reach)
                for index, state in states.items()
            )
            if not due:
                break
            self._held.pop(0)
            hits = set()
            for index, state in states.items():
                if state.blocked:
                    hits.add(index)
                elif self._blocklist.hit_within(state.text, state.checked, frame.ends[index]) or (
                    index in frame.calls and state.decoded_hit(self._blocklist)
                ):
                    state.blocked = True
                    hits.add(index)
                    out += _filtered_frame(frame.event, index)
                else:
                    state.checked = frame.ends[index]
            out += _without(frame, hits)
        return bytes(out)


class AnswerScreen:
    """A whole chat completion, held to its end and screened there."""

    def __init__(self, blocklist: Blocklist) -> None:
        self._blocklist = blocklist
        self._body = bytearray()
        self._passing = False  # too long to hold: passed on unscreened

    def feed(self, chunk: bytes) -> bytes:
        if self._passing:
            return chunk
        self._body += chunk
        if len(self._body) > MAX_ANSWER_BYTES:
            log.warning("a relayed answer is longer than %d bytes: it passes unscreened", MAX_ANSWER_BYTES)
            self._passing = True
            out = bytes(self._body)
            self._body.clear()
            return out
        return b""

    def finish(self) -> bytes:
        if self._passing:
            return b""
        body = bytes(self._body)
        try:
            answer = json.loads(body)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return body
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list):
            return body
        hit = False
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            state = _Choice()
            for kind, piece in _pieces(choice.get("message")):
                state.add(kind, piece)
            state.calls = dict(_arguments(choice.get("message")))
            if (state.text and self._blocklist.hit(state.text)) or state.decoded_hit(self._blocklist):
                hit = True
                choice["message"] = {"role": "assistant", "content": None}
                choice["finish_reason"] = "content_filter"
                choice["logprobs"] = None
        return json.dumps(answer).encode() if hit else body


def _pieces(delta: Any) -> Iterator[tuple[str, str]]:
    """The text of a delta (or message), by kind, in the order it reads."""
    if not isinstance(delta, dict):
        return
    for key in ("reasoning_content", "reasoning"):
        if isinstance(delta.get(key), str):
            yield "reasoning", delta[key]
    if isinstance(delta.get("content"), str):
        yield "content", delta["content"]
    for _, arguments in _arguments(delta):
        yield "arguments", arguments


def _arguments(delta: Any) -> Iterator[tuple[int, str]]:
    """The pieces of tool call arguments in a delta (or message), by the call's index."""
    if not isinstance(delta, dict) or not isinstance(delta.get("tool_calls"), list):
        return
    for position, call in enumerate(delta["tool_calls"]):
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            number = call.get("index", position)
            yield (number if isinstance(number, int) else position), function["arguments"]


def _decoded_hit(arguments: str, blocklist: Blocklist) -> bool:
    try:
        value = json.loads(arguments)
    except (ValueError, RecursionError):
        return False  # not JSON: it was searched as it came
    keys: list[str] = []
    values = list(json_strings(value, keys))
    return blocklist.hit("\n".join(values)) or blocklist.hit("\n".join(keys))


def _choices(event: dict[str, Any] | None) -> list[dict[str, Any]]:
    choices = event.get("choices") if event is not None else None
    return [c for c in choices if isinstance(c, dict)] if isinstance(choices, list) else []


def _event(raw: bytes) -> dict[str, Any] | None:
    data = frame_data(raw)
    return json_object(data) if data is not None and data.strip() != b"[DONE]" else None


def _filtered_frame(event: dict[str, Any] | None, index: int) -> bytes:
    """The chunk that ends a choice the blocklist stopped."""
    known: dict[str, Any] = event or {}
    head = {key: known[key] for key in ("id", "object", "created", "model") if key in known}
    choice: dict[str, Any] = {"index": index, "delta": {}, "finish_reason": "content_filter"}
    return f"data: {json.dumps({**head, 'choices': [choice]})}\n\n".encode()


def _without(frame: _Frame, blocked: set[int]) -> bytes:
    """The frame as it goes on: as it came, or without the choices that are blocked."""
    if not blocked or frame.event is None:
        return frame.raw
    kept = [c for c in _choices(frame.event) if c.get("index", 0) not in blocked]
    if not kept and "usage" not in frame.event:
        return b""
    return f"data: {json.dumps({**frame.event, 'choices': kept})}\n\n".encode()
