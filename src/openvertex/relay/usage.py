"""The tokens a relayed answer used, for the key's tokens per minute and `openvertex usage`.

The counts are the upstream's own `usage` object: a whole answer's, or the last one a stream
carries. OpenAI-compatible servers (vLLM, llama-server, TGI) put usage in a stream only when
asked (`stream_options.include_usage`), in one more frame whose `choices` is empty. A streamed
request that does not ask goes upstream asking (`asking_for_usage`, the one edit to the body
besides `model`), and that frame is left out of what the client gets, so the client sees the
stream it asked for; every other frame passes byte for byte, as it arrives. A stream that ends
without usage (the client left before it, or the upstream reports none) counts one output token
per frame relayed, as vLLM, TGI and llama.cpp send a frame per token; its prompt is not counted.
An embeddings answer (always whole) reports `prompt_tokens` only: its output counts none.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Protocol, TypeGuard

from openvertex.relay.model_member import top_level_members, upstream_true, with_member
from openvertex.relay.replicas import Operation
from openvertex.relay.sse_frames import SseFrames, frame_data, json_object

_STREAM_OPTIONS = "stream_options"
_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_MAX_USAGE_BYTES = 64 << 10  # a usage object, its details included, is far smaller


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    output_tokens: int


class UsageMeter(Protocol):
    """Reads an answer as it is relayed: `feed` and `finish` give the bytes to send on."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...

    def usage(self, *, complete: bool) -> Usage | None:
        """What to count; `complete`: the answer reached its end (else the client left first)."""
        ...


def asking_for_usage(body: bytes) -> tuple[bytes, bool]:
    """A streamed request's body asking for usage, and whether that was added: then the client
    did not ask, and the usage-only frame is not relayed. Other bodies go out unchanged."""
    if b'"stream' not in body and b"\\u" not in body:  # a key spelled with escapes would contain `\u`
        return body, False
    try:
        text = body.decode()
        top = top_level_members(text)
        members = {member.key: json.loads(text[member.value_start : member.end]) for member in top.members}
    except (UnicodeDecodeError, ValueError, RecursionError):
        return body, False  # the upstream judges it
    options = members.get(_STREAM_OPTIONS)
    asked_already = isinstance(options, dict) and upstream_true(options.get("include_usage"))
    if not upstream_true(members.get("stream")) or asked_already:
        return body, False
    asked = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return with_member(text, top, _STREAM_OPTIONS, json.dumps(asked, separators=(",", ":"))).encode(), True


def meter_for(
    content_type: str, *, strip_usage_frame: bool, operation: Operation = "chat/completions"
) -> UsageMeter | None:
    """The meter for a successful answer of this content type; None where no usage can be read."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "text/event-stream" and operation == "chat/completions":
        return StreamUsage(strip_usage_frame=strip_usage_frame)
    if media_type == "application/json":
        return AnswerUsage(prompt_only=operation == "embeddings")
    return None


class StreamUsage:
    """An SSE stream read frame by frame as it passes: its last usage, and its frames."""

    def __init__(self, *, strip_usage_frame: bool) -> None:
        self._strip = strip_usage_frame
        self._frames_in = SseFrames()
        self._reading = True
        self._frames = 0  # frames with choices: about one token each
        self._reported: Usage | None = None

    def feed(self, chunk: bytes) -> bytes:
        if not self._reading:
            return chunk
        kept = bytearray()
        for frame in self._frames_in.feed(chunk):
            if self._read(frame) or not self._strip:
                kept += frame
        if self._frames_in.overlong:  # not a stream we can read: passed on as it is
            self._reading = False
            kept += self._frames_in.rest()
        return bytes(kept) if self._strip else chunk  # unstripped, nothing is held back

    def finish(self) -> bytes:
        """An unfinished last frame, sent as it is."""
        rest = self._frames_in.rest()
        if rest and self._reading:
            self._read(rest)
        return rest if self._strip else b""

    def usage(self, *, complete: bool) -> Usage | None:
        if self._reported is not None:
            return self._reported
        return Usage(0, self._frames) if self._frames else None

    def _read(self, frame: bytes) -> bool:
        """Count the frame; False for the usage-only frame (the one `include_usage` adds)."""
        data = frame_data(frame)
        if data is None or data.strip() == b"[DONE]":
            return True
        event = json_object(data) if _USAGE_OBJECT.search(data) else None
        reported = _usage(event.get("usage")) if event is not None else None
        if reported is not None:
            self._reported = reported
            if event is not None and event.get("choices") == []:
                return False
        self._frames += 1
        return True


class AnswerUsage:
    """A whole answer, kept as it passes (up to MAX_ANSWER_BYTES), its usage read at its end."""

    MAX_ANSWER_BYTES = 64 << 20

    def __init__(self, *, prompt_only: bool = False) -> None:
        self._body = bytearray()
        self._kept = True
        self._prompt_only = prompt_only  # an embeddings answer: `prompt_tokens` and no output

    def feed(self, chunk: bytes) -> bytes:
        if self._kept:
            self._body += chunk
            if len(self._body) > self.MAX_ANSWER_BYTES:
                self._kept = False
                self._body.clear()
        return chunk

    def finish(self) -> bytes:
        return b""

    @property
    def readable(self) -> bool:
        """Whether the answer is still kept (not past MAX_ANSWER_BYTES), its usage to be read."""
        return self._kept

    def usage(self, *, complete: bool) -> Usage | None:
        """The top-level usage of a complete answer. Found from the end without parsing the whole
        answer: chat completions and embeddings put no other object named usage in it, and inside a
        string the quotes of `"usage"` would be escaped."""
        if not complete or not self._kept:
            return None
        body = self._body
        at = len(body)
        while (at := body.rfind(b'"usage"', 0, at)) >= 0:
            if (match := _USAGE_OBJECT.match(body, at)) is not None:
                start = match.end() - 1  # its opening brace
                window = bytes(body[start : start + _MAX_USAGE_BYTES]).decode("utf-8", "replace")
                try:
                    value, _ = json.JSONDecoder().raw_decode(window)
                except ValueError:
                    return None
                return _usage(value, prompt_only=self._prompt_only)
        return None


def _usage(value: Any, *, prompt_only: bool = False) -> Usage | None:
    """An OpenAI usage object's counts; None where it is not one. `prompt_only`: an embeddings
    usage (`prompt_tokens`, `total_tokens`), whose output is none."""
    if not isinstance(value, dict):
        return None
    prompt = value.get("prompt_tokens")
    output = 0 if prompt_only else value.get("completion_tokens")
    if not _count(prompt) or not _count(output):
        return None
    return Usage(prompt, output)


def _count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
