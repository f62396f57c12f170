"""Function calling on the local model: what a request's tools and toolConfig ask of the
decoder, and the generated text read back as Gemini parts — answer text, and `<tool_call>`
blocks as function calls, whole or (streamFunctionCallArguments) piece by piece.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from openvertex.backends.local.grammar import TOOL_CALL_END_TAG, TOOL_CALL_TAG
from openvertex.backends.local.stop import partial_suffix
from openvertex.protocol import generate_content as gc

_OPEN = TOOL_CALL_TAG  # the model may put other whitespace around the tags
_CLOSE = TOOL_CALL_END_TAG
# Deeper arguments are not read as a call (JSON that deep cannot be serialized back anyway).
MAX_ARGUMENT_DEPTH = 64
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SCALAR_CHARS = frozenset("+-0123456789.eEtruefalsn")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


@dataclass(frozen=True, slots=True)
class FunctionCalling:
    declarations: list[gc.FunctionDeclaration]  # shown to the model
    allowed: list[gc.FunctionDeclaration]  # what it may call
    lazy: bool  # AUTO: the model may answer in text; a call, once begun, follows the grammar
    stream_arguments: bool
    one_call: bool = False  # parallel_tool_calls: false: the answer ends with its first call


def plan_function_calling(request: gc.GenerateContentRequest) -> FunctionCalling | None:
    """None when the model must not call (no declarations, or mode NONE)."""
    declarations = [d for tool in request.tools or [] for d in tool.function_declarations or []]
    config = (request.tool_config.function_calling_config if request.tool_config else None) or (
        gc.FunctionCallingConfig()
    )
    if not declarations or config.mode == "NONE":
        return None
    forced = config.mode in ("ANY", "VALIDATED")
    allowed = set(config.allowed_function_names or [d.name for d in declarations])
    return FunctionCalling(
        declarations=declarations,
        allowed=[d for d in declarations if d.name in allowed],
        lazy=not forced,
        stream_arguments=bool(config.stream_function_call_arguments),
        one_call=request.one_call(),
    )


def json_path(steps: list[str | int]) -> str:
    out = "$"
    for step in steps:
        if isinstance(step, int):
            out += f"[{step}]"
        elif _IDENTIFIER.fullmatch(step):
            out += f".{step}"
        else:
            out += "['" + step.replace("\\", "\\\\").replace("'", "\\'") + "']"
    return out


@dataclass
class _Container:
    is_object: bool
    key: str | int | None = None  # the member being read
    expecting: str = "key"  # object: key, colon, value, next; array: value, next
    empty: bool = True


@dataclass
class _CallObject:
    """An incremental JSON reader over one call object `{"name": …, "arguments": {…}}` that
    reports each scalar under "arguments" as partial args while it is written."""

    name: str | None = None
    name_done: bool = False
    pieces: list[gc.PartialArg] = field(default_factory=list)
    streamable: bool = True  # an empty {} or [] has no partial-arg form: the rest comes whole
    _stack: list[_Container] = field(default_factory=list)
    _string: list[str] | None = None  # an open string's text since the last report
    _string_is_key: bool = False
    _escape: str | None = None
    _scalar: str = ""
    _started: bool = False

    def _path(self) -> list[str | int]:
        return [c.key for c in self._stack if c.key is not None]

    def _report(self, **value: Any) -> None:
        path = self._path()
        if path == ["name"] and "string_value" in value:
            self.name = (self.name or "") + value["string_value"]
            self.name_done = not value["will_continue"]
        elif len(path) > 1 and path[0] == "arguments" and self.streamable:
            self.pieces.append(gc.PartialArg(json_path=json_path(path[1:]), **value))

    @property
    def complete(self) -> bool:
        return self._started and not self._stack

    def feed(self, text: str) -> int:
        """Read up to the end of the call object; returns how much of `text` was read."""
        read = 0
        for char in text:
            if self.complete:
                break
            self._char(char)
            read += 1
        if self._string is not None and not self._string_is_key and self._string:
            self._report(string_value="".join(self._string), will_continue=True)
            self._string = []
        return read

    def _char(self, char: str) -> None:
        if self._string is not None:
            self._string_char(char)
            return
        if self._scalar and char not in _SCALAR_CHARS:
            self._end_scalar()
        if char.isspace():
            return
        top = self._stack[-1] if self._stack else None
        if top is None or (top.expecting == "value"):
            self._value_char(char, top)
        elif char == ":" and top.expecting == "colon":
            top.expecting = "value"
        elif char == ",":
            if top.is_object:
                top.expecting = "key"
            else:
                top.key = int(top.key or 0) + 1
                top.expecting = "value"
        elif char == '"' and top.expecting == "key":
            self._string, self._string_is_key = [], True
        elif char in "}]":
            self._close(top)
        elif char in _SCALAR_CHARS:
            self._scalar += char

    def _value_char(self, char: str, top: _Container | None) -> None:
        if char == "]" and top is not None and not top.is_object:
            self._close(top)  # an empty array
            return
        if top is not None:
            top.empty = False
        if top is None and char != "{":
            raise ValueError("not a call object")
        if char in "{[":
            if len(self._stack) >= MAX_ARGUMENT_DEPTH:
                raise ValueError("the arguments nest too deeply")
            self._started = True
            self._stack.append(_Container(is_object=char == "{", key=None if char == "{" else 0))
            self._stack[-1].expecting = "key" if char == "{" else "value"
        elif char == '"':
            self._string, self._string_is_key = [], False
        else:
            self._scalar += char
            if top is not None:
                top.expecting = "next"

    def _close(self, top: _Container) -> None:
        if top.empty and len(self._stack) > 1:
            self.streamable = False
        self._stack.pop()
        if self._stack:
            self._stack[-1].expecting = "next"

    def _string_char(self, char: str) -> None:
        assert self._string is not None
        if self._escape is not None:
            self._escape += char
            if self._escape[0] != "u":
                self._string.append(_ESCAPES.get(self._escape, self._escape))
                self._escape = None
            elif len(self._escape) == 5:
                self._string.append(chr(int(self._escape[1:], 16)))
                self._escape = None
        elif char == "\\":
            self._escape = ""
        elif char == '"':
            self._end_string()
        else:
            self._string.append(char)

    def _end_string(self) -> None:
        assert self._string is not None
        text, self._string = "".join(self._string), None
        top = self._stack[-1]
        if self._string_is_key:
            top.key, top.expecting = text, "colon"
            return
        self._report(string_value=text, will_continue=False)
        top.expecting = "next"

    def _end_scalar(self) -> None:
        token, self._scalar = self._scalar, ""
        if token == "null":
            self._report(null_value="NULL_VALUE")
        elif token in ("true", "false"):
            self._report(bool_value=token == "true")
        else:
            self._report(number_value=float(token))
        if self._stack:
            self._stack[-1].expecting = "next"


class CallReader:
    """Splits one candidate's text stream into text parts and function-call parts.

    Text that might be the start of a `<tool_call>` tag is held back until it is clear.
    """

    def __init__(
        self,
        *,
        stream_arguments: bool,
        names: frozenset[str] | None = None,
        forced: bool = False,
        one_call: bool = False,
    ) -> None:
        """`forced`: the grammar makes every token part of a call (mode ANY): text between calls is
        the format's, and a call that repeats an earlier one ends the turn (a small model under a
        forced call tends to call again and again). `one_call`: the first call ends the turn."""
        self._one_call = one_call
        self._stream_arguments = stream_arguments
        self._names = names  # the functions the model may call (None: any)
        self.forced = forced
        self._buffer = ""
        self._call: _CallObject | None = None  # the call being written
        self._body = ""
        self._announced = False
        self._made: set[str] = set()  # the calls made, as canonical JSON
        self.calls = 0
        self.settled = False  # its answer is complete though the model goes on: the rest is dropped
        self.cut = False  # a call cut off midway had been announced (streamed arguments)

    def feed(self, text: str) -> list[gc.Part]:
        if self.settled:
            return []
        self._buffer += text
        parts: list[gc.Part] = []
        while True:
            if self._call is None:
                start = self._buffer.find(_OPEN)
                if start < 0:
                    # Hold back what may begin a tag, and the whitespace before it: a blank
                    # line ahead of a call is the format's, not the answer's.
                    keep = len(self._buffer) - partial_suffix(self._buffer, _OPEN)
                    keep = len(self._buffer[:keep].rstrip())
                    parts += self._text(self._buffer[:keep])
                    self._buffer = self._buffer[keep:]
                    return parts
                parts += self._text(self._buffer[:start].rstrip())
                self._buffer = self._buffer[start + len(_OPEN) :]
                self._call, self._body, self._announced = _CallObject(), "", False
            try:
                parts += self._write()
                end = self._buffer.find(_CLOSE) if self._call.complete else -1
                if end < 0:
                    return parts
                self._buffer = self._buffer[end + len(_CLOSE) :]
                parts += self._end_call()
                if self.settled:  # the answer is complete: what the model writes after it is dropped
                    self._buffer = ""
                    return parts
            except (ValueError, KeyError, TypeError):
                return parts + self._not_a_call()

    def finish(self) -> list[gc.Part]:
        """The candidate ended: what is held back is text; a whole call object counts even
        without its closing tag; a call cut off midway is closed if it was announced."""
        rest, self._buffer = self._buffer, ""
        call = self._call
        if self.settled:
            return []
        if call is None:
            return self._text(rest)
        if call.complete:
            try:
                return self._end_call()
            except (ValueError, KeyError, TypeError):
                return self._not_a_call()
        self._call = None
        # The stream already announced it: its arguments end here, cut off (MAX_TOKENS).
        self.cut = self._announced
        return [gc.Part(function_call=gc.FunctionCall(name=call.name, will_continue=False))] if self._announced else []

    def _not_a_call(self) -> list[gc.Part]:
        """`<tool_call>` followed by something else (the grammar was not armed): plain text."""
        text = _OPEN + self._body + self._buffer
        self._call, self._body, self._buffer = None, "", ""
        return (
            [gc.Part(function_call=gc.FunctionCall(name=None, will_continue=False))]
            if self._announced
            else (self._text(text))
        )

    def _text(self, text: str) -> list[gc.Part]:
        # Whitespace between and after calls is the format's, not the answer's; so is any text
        # of a forced call's (a tag cut off by the limit, say).
        if self.forced:
            return []
        return [gc.Part(text=text)] if text.strip() or (text and not self.calls) else []

    def _write(self) -> list[gc.Part]:
        """Read the call object (a string may hold anything, even the closing tag) as far as
        it has been written; in a stream that asked for them, report its pieces."""
        call = self._call
        assert call is not None
        read = call.feed(self._buffer)
        self._body, self._buffer = self._body + self._buffer[:read], self._buffer[read:]
        if call.name_done and self._names is not None and call.name not in self._names:
            raise ValueError(f"{call.name!r} is not a function the model may call")
        if not self._stream_arguments or not call.name_done:
            return []
        pieces, call.pieces = call.pieces, []
        first, self._announced = not self._announced, True
        partial = gc.FunctionCall(name=call.name, partial_args=pieces, will_continue=True)
        return [gc.Part(function_call=partial)] if first or pieces else []

    def _end_call(self) -> list[gc.Part]:
        call = self._call
        assert call is not None
        self._call = None
        self.calls += 1
        whole = json.loads(self._body.strip())  # the grammar made it valid
        if self._names is not None and whole["name"] not in self._names:
            raise ValueError(f"{whole['name']!r} is not a function the model may call")
        made = json.dumps([whole["name"], whole["arguments"]], sort_keys=True)
        if self.forced and made in self._made:
            self.settled = True
            if not self._announced:  # not sent yet: the repetition is dropped, and the turn ends
                return []
        self._made.add(made)
        self.settled = self.settled or self._one_call
        final = gc.FunctionCall(name=whole["name"], args=whole["arguments"])
        if self._announced:
            final.partial_args, final.will_continue = call.pieces, False
        return [gc.Part(function_call=final)]
