"""Server-sent events for chat.completion.chunk streams (spec §5): framing, and the response that sends them."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from openvertex.errors import ApiError, InternalError
from openvertex.http.disconnect import ClientDisconnected, until_disconnect
from openvertex.http.errors import error_body

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"


def sse_event(payload: BaseModel) -> bytes:
    return b"data: " + payload.model_dump_json().encode() + b"\n\n"


async def _close(iterator: AsyncIterator[object]) -> None:
    # Typed as an iterator by its producer, but an async generator: closing it runs its
    # `finally`, which is what frees the backend's sequences.
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


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
    finally:
        await _close(rest)  # also when this generator is closed while suspended at a `yield`
    yield DONE


class EventStreamResponse(StreamingResponse):
    """An SSE response that stops its producer as soon as the client leaves.

    Starlette notices a disconnect only when it sends (ASGI spec 2.4) or through a listener
    that does not reach the producer; a stream that sends nothing for a while (hidden
    thoughts) would keep generating. Here the sending itself is cancelled, and the events
    generator closed, the moment `http.disconnect` arrives.
    """

    def __init__(self, events: AsyncIterator[bytes], headers: Mapping[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientDisconnected):
            await until_disconnect(receive, self._send_all(send))

    async def _send_all(self, send: Send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for chunk in self._events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await _close(self._events)
