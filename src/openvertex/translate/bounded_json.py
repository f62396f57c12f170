"""JSON text within bounds: nesting depth, number literals, NaN/Infinity and lone surrogates are
refused with a 400 in Google's words before anything else looks at the values (pure, no I/O)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from typing import Any, NoReturn

from openvertex.errors import InvalidArgumentError

_INVALID = "Invalid JSON payload received."
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds on the shape of a JSON body, checked before anything else looks at it."""

    max_depth: int = 64  # arrays and objects nested in one another, the body itself included
    max_number_length: int = 100  # characters in one number literal


class _Refused(Exception):
    """Raised from json.loads hooks; carries the client-facing reason."""


def _depth_error(limits: JsonLimits) -> InvalidArgumentError:
    return InvalidArgumentError(f"{_INVALID} Nesting depth exceeds the limit of {limits.max_depth}.")


def _refuse_constant(literal: str) -> NoReturn:
    # Python's json reads NaN and Infinity; JSON (RFC 8259) has no such values.
    raise _Refused(f"Unexpected token {literal}: NaN and Infinity are not JSON numbers.")


@cache
def _decoder(limits: JsonLimits) -> json.JSONDecoder:
    return json.JSONDecoder(**_number_hooks(limits))


def _number_hooks(limits: JsonLimits) -> dict[str, Any]:
    def checked(literal: str) -> str:
        if len(literal) > limits.max_number_length:
            raise _Refused(f"Found a number longer than {limits.max_number_length} characters: {literal[:20]}…")
        return literal

    def parse_float(literal: str) -> float:
        value = float(checked(literal))
        if math.isinf(value):  # 1e999: not representable, and would serialize as Infinity
            raise _Refused(f"Number out of range: {literal}")
        return value

    return {
        "parse_int": lambda literal: int(checked(literal)),
        "parse_float": parse_float,
        "parse_constant": _refuse_constant,
    }


def _check_text(text: str) -> None:
    # "\ud800" parses, then fails wherever the text is encoded as UTF-8.
    if not text.isascii() and _LONE_SURROGATE.search(text):
        raise InvalidArgumentError(f"{_INVALID} Invalid \\u escape: a lone UTF-16 surrogate.")


def _check_shape(data: Any, limits: JsonLimits) -> None:
    """Depth and text validity, walked one level at a time (deep input cannot recurse here)."""
    level: list[Any] = [data]
    depth = 0
    while level:
        depth += 1
        below: list[Any] = []
        for value in level:
            if isinstance(value, str):
                _check_text(value)
                continue
            if not isinstance(value, dict | list):
                continue
            if depth > limits.max_depth:
                raise _depth_error(limits)
            if isinstance(value, dict):
                for key in value:
                    _check_text(key)
            items = value.values() if isinstance(value, dict) else value
            below.extend(item for item in items if isinstance(item, str | dict | list))
        level = below


def load_json(body: bytes, limits: JsonLimits) -> Any:
    """JSON text → Python values, within `limits`; anything else is a 400 in Google's words."""
    encoding = json.detect_encoding(body)
    try:  # as json.loads reads bytes, with a decoder built once
        data = _decoder(limits).decode(body.decode(encoding, "surrogatepass"))
    except RecursionError:
        # The C parser recurses per level; input this deep is far past any limit.
        raise _depth_error(limits) from None
    except _Refused as refused:
        raise InvalidArgumentError(f"{_INVALID} {refused}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{_INVALID} {error}") from None
    # UTF-8 with neither a \u escape nor an 0xED byte (how a surrogate is written in UTF-8) holds
    # no lone surrogate, and with fewer brackets than the limit nothing nests deeper: most bodies
    # need no walk.
    if (
        encoding != "utf-8"
        or b"\\u" in body
        or b"\xed" in body
        or body.count(b"{") + body.count(b"[") > limits.max_depth
    ):
        _check_shape(data, limits)
    return data
