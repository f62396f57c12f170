"""Reading a request body: size limit, JSON within bounds, and validation errors named by parameter path."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_snake
from starlette.requests import ClientDisconnect, Request

from openvertex.errors import InvalidArgumentError
from openvertex.http.disconnect import ClientDisconnected
from openvertex.protocol.generate_content import Dialect, GeminiModel
from openvertex.translate.bounded_json import JsonLimits, load_json

ModelT = TypeVar("ModelT", bound=BaseModel)

# Bodies up to this size parse on the event loop; larger ones on a worker thread, so one
# 20 MB body does not stall every stream while it parses.
INLINE_PARSE_BYTES = 64 * 1024
_INVALID = "Invalid JSON payload received."


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
        # Google names fields in its parser's errors by their proto (snake_case) names.
        written, _, name = path.rpartition(".")
        parent = ".".join(to_snake(segment) for segment in written.split(".")) if written else ""
        where = f" at '{parent}'" if parent else ""
        return InvalidArgumentError(
            f'Invalid JSON payload received. Unknown name "{name}"{where}: Cannot find field.',
            field=f"{parent}.{name}" if parent else name,
        )
    message = detail["msg"].removeprefix("Value error, ")
    return InvalidArgumentError(message, param=path or None)


def parse_json(
    body: bytes, model: type[ModelT], limits: JsonLimits | None = None, *, dialect: Dialect = "vertex"
) -> ModelT:
    return validate(load_object(body, limits), model, dialect=dialect)


def load_object(body: bytes, limits: JsonLimits | None = None) -> dict[str, Any]:
    data = load_json(body, limits or JsonLimits())
    if not isinstance(data, dict):
        raise InvalidArgumentError(f"{_INVALID} Expected a JSON object.")
    return data


def validate(data: dict[str, Any], model: type[ModelT], *, dialect: Dialect = "vertex") -> ModelT:
    """`dialect`: how a native request numbers its enums, when it writes them as numbers."""
    try:
        if issubclass(model, GeminiModel):  # read as Google's parser reads it
            return model.from_wire(data, dialect=dialect)
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_to_error(error) from None


async def read_json(
    body: bytes, model: type[ModelT], limits: JsonLimits | None = None, *, dialect: Dialect = "vertex"
) -> ModelT:
    """parse_json, on a worker thread when the body is large enough to hold up the event loop."""
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_json(body, model, limits, dialect=dialect)
    return await asyncio.to_thread(functools.partial(parse_json, body, model, limits, dialect=dialect))
