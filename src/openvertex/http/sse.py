"""Server-sent events framing for chat.completion.chunk streams (spec §5)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from pydantic import BaseModel

from openvertex.errors import ApiError, InternalError
from openvertex.http.errors import error_body

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


async def sse_stream(first: BaseModel, rest: AsyncIterator[BaseModel]) -> AsyncIterator[bytes]:
    """Frame a stream; an error after it started is one `data: {"error": …}` event, then the end."""
    try:
        yield sse_event(first)
        async for item in rest:
            yield sse_event(item)
    except ApiError as error:
        yield b"data: " + json.dumps(error_body(error)).encode() + b"\n\n"
        return
    except Exception:
        log.exception("internal error during a stream")
        yield b"data: " + json.dumps(error_body(InternalError("Internal error encountered."))).encode() + b"\n\n"
        return
    yield DONE
