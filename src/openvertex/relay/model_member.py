"""The edit made to every request body on its way upstream: its top-level `model` dropped or rewritten
(a stream's `stream_options` may be another: relay/usage.py; and, where the endpoint asks for it,
`cache_salt`: `with_cache_salt`).

Everything else goes out byte for byte (spec native-gemini §G.2): the top-level members are located
by position, and only the `model` member's bytes change. Stock vLLM answers 404 for a model name it
does not serve (`google/…`, the caller's own alias), hence the rewrite to the served name; dropping
it makes the container use its default model.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

_MODEL = "model"
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class Member:
    key: str
    start: int  # the key's opening quote
    value_start: int
    end: int  # just past the value


@dataclass(frozen=True, slots=True)
class TopLevel:
    open_brace: int
    close_brace: int
    members: list[Member]


def with_model(body: bytes, model: str | None) -> bytes:
    """`body` with its top-level `model` set to `model`, or without one when `model` is None.

    A body that is not a JSON object goes out unchanged: the upstream answers it as it would."""
    if model is None and b'"model"' not in body and b"\\u" not in body:
        return body  # nothing to drop (a key spelled with escapes would contain `\u`)
    try:
        text = body.decode()
        top = top_level_members(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return body
    if model is not None:
        return with_member(text, top, _MODEL, json.dumps(model)).encode()
    return _dropped(text, top).encode() if any(member.key == _MODEL for member in top.members) else body


def upstream_true(value: Any) -> bool:
    """Whether an OpenAI-compatible server reads a flag as set: vLLM's pydantic models take
    1, "true", "yes", "on" and the like for true, not only JSON's `true`."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in {"1", "true", "t", "yes", "y", "on"}


def with_cache_salt(body: bytes, tenant: str) -> bytes:
    """`body` with vLLM's `cache_salt` set to the tenant's own: vLLM reuses a prefix's KV only
    between requests of one salt, so one tenant's cached tokens (and time to first token) tell
    nothing of another's prompts. The salt need not be secret: whatever `cache_salt` a client
    sends is replaced, so no client can take another tenant's."""
    try:
        text = body.decode()
        top = top_level_members(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return body  # not a JSON object: the upstream answers it as it would
    salt = hashlib.sha256(b"openvertex cache salt\0" + tenant.encode()).hexdigest()
    return with_member(text, top, "cache_salt", json.dumps(salt)).encode()


def top_level_members(text: str) -> TopLevel:
    """The positions of a JSON object's members; ValueError when `text` does not start with one."""
    at = _skip(text, 0)
    _expect(text, at, "{")
    open_brace, at = at, _skip(text, at + 1)
    members: list[Member] = []
    if text.startswith("}", at):
        return TopLevel(open_brace, at, members)
    while True:
        _expect(text, at, '"')
        key, after_key = _DECODER.raw_decode(text, at)
        colon = _skip(text, after_key)
        _expect(text, colon, ":")
        value_start = _skip(text, colon + 1)
        _, end = _DECODER.raw_decode(text, value_start)
        members.append(Member(key, at, value_start, end))
        at = _skip(text, end)
        if not text.startswith(",", at):
            _expect(text, at, "}")
            return TopLevel(open_brace, at, members)
        at = _skip(text, at + 1)


def _skip(text: str, at: int) -> int:
    match = _WHITESPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _expect(text: str, at: int, char: str) -> None:
    if not text.startswith(char, at):
        raise ValueError(f"expected {char!r} at {at}")


def with_member(text: str, top: TopLevel, key: str, value: str) -> str:
    """`text` with the member `key` set to the JSON `value`; only that member's bytes change."""
    named = [member for member in top.members if member.key == key]
    if not named:  # added first, so a reader of the body sees it at once
        insert = top.open_brace + 1
        return f"{text[:insert]}{json.dumps(key)}:{value}{',' if top.members else ''}{text[insert:]}"
    for member in reversed(named):  # every occurrence: parsers differ on which duplicate wins
        text = text[: member.value_start] + value + text[member.end :]
    return text


def _dropped(text: str, top: TopLevel) -> str:
    """Each `model` member cut out with one of the commas around it; the rest as it was."""
    members = top.members
    cuts: list[tuple[int, int]] = []
    for i, member in enumerate(members):
        if member.key != _MODEL:
            continue
        if i + 1 < len(members):
            cuts.append((member.start, members[i + 1].start))  # up to the next member
            continue
        kept = [earlier for earlier in members[:i] if earlier.key != _MODEL]
        # The last member: from the end of the last one kept, or everything when none is.
        cuts.append((kept[-1].end, member.end) if kept else (top.open_brace + 1, top.close_brace))
    result, position = [], 0
    for start, end in _merged(cuts):
        result.append(text[position:start])
        position = end
    return "".join(result) + text[position:]


def _merged(cuts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(cuts):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged
