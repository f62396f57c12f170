"""Reading a request body: size limit, JSON within bounds, and validation errors named by parameter path."""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from openvertex.errors import InvalidArgumentError
from openvertex.http.disconnect import ClientDisconnected

ModelT = TypeVar("ModelT", bound=BaseModel)

# Bodies up to this size parse on the event loop; larger ones on a worker thread, so one
# 20 MB body does not stall every stream while it parses.
INLINE_PARSE_BYTES = 64 * 1024
_INVALID = "Invalid JSON payload received."
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds on the shape of a JSON body, checked before anything else looks at it."""

    max_depth: int = 64  # arrays and objects nested in one another, the body itself included
    max_number_length: int = 100  # characters in one number literal


class _Refused(Exception):
    """Raised from json.loads hooks; carries the client-facing reason."""


def _too_large(limit: int) -> InvalidArgumentError:
    return InvalidArgumentError(f"Request payload size exceeds the limit: {limit} bytes.")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ClientDisconnected() from None  # a hang-up mid-body is no server error
    return b"".join(chunks)


def _is_branch_label(segment: str | int) -> bool:
    """pydantic puts union-member labels (`str`, `list[...]`, `NamedToolChoice`) into error paths."""
    if isinstance(segment, int):
        return False
    return not segment.isidentifier() or segment in {"str", "int", "float", "bool", "none"} or segment[0].isupper()


def format_path(loc: tuple[str | int, ...]) -> str:
    path = ""
    for segment in loc:
        if _is_branch_label(segment):
            continue
        path += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if path else segment)
    return path


def _validation_to_error(error: ValidationError) -> InvalidArgumentError:
    details = error.errors(include_url=False)
    # The deepest path is the most specific of the union members' complaints.
    detail = max(details, key=lambda d: len(format_path(d["loc"])))
    path = format_path(detail["loc"])
    if detail["type"] == "extra_forbidden":
        parent, _, name = path.rpartition(".")
        return InvalidArgumentError(
            f"Invalid JSON payload received. Unknown name \"{name}\" at '{parent}': Cannot find field."
        )
    message = detail["msg"].removeprefix("Value error, ")
    return InvalidArgumentError(message, param=path or None)


def _depth_error(limits: JsonLimits) -> InvalidArgumentError:
    return InvalidArgumentError(f"{_INVALID} Nesting depth exceeds the limit of {limits.max_depth}.")


def _refuse_constant(literal: str) -> NoReturn:
    # Python's json reads NaN and Infinity; JSON (RFC 8259) has no such values.
    raise _Refused(f"Unexpected token {literal}: NaN and Infinity are not JSON numbers.")


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
    try:
        data = json.loads(body, **_number_hooks(limits))
    except RecursionError:
        # The C parser recurses per level; input this deep is far past any limit.
        raise _depth_error(limits) from None
    except _Refused as refused:
        raise InvalidArgumentError(f"{_INVALID} {refused}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(f"{_INVALID} {error}") from None
    _check_shape(data, limits)
    return data


def parse_json(body: bytes, model: type[ModelT], limits: JsonLimits | None = None) -> ModelT:
    data = load_json(body, limits or JsonLimits())
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{_INVALID} Expected a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_to_error(error) from None


async def read_json(body: bytes, model: type[ModelT], limits: JsonLimits | None = None) -> ModelT:
    """parse_json, on a worker thread when the body is large enough to hold up the event loop."""
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_json(body, model, limits)
    return await asyncio.to_thread(parse_json, body, model, limits)
