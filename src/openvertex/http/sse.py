"""Streamed responses: how each surface frames its events, and the response that sends them.

- OpenAI-compatible (spec §5): `data: <json>\\n\\n` events, then `data: [DONE]`.
- Native with `alt=sse`: `data: <json>\\r\\n\\r\\n` events only (no comments, no `event:`, no
  terminator): google-genai rejects any other line.
- Native without `alt`: one JSON array, written element by element.
An error after the stream began is one more event (array element) whose first key is `error`.
A connection cut on purpose (service/faults.py) sends what was made and then no end at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from openvertex.errors import ApiError, InternalError, UnavailableError
from openvertex.http.disconnect import ClientDisconnected, until_disconnect
from openvertex.service.faults import ConnectionCut
from openvertex.service.pipeline import Streamed

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Framing:
    media_type: str
    start: bytes  # before the first event
    prefix: bytes  # before each event's JSON
    separator: bytes  # between events
    suffix: bytes  # after each event's JSON
    end: bytes  # after the last event of a stream that ended well
    end_after_error: bytes


OPENAI_SSE = Framing("text/event-stream", b"", b"data: ", b"", b"\n\n", b"data: [DONE]\n\n", b"")
NATIVE_SSE = Framing("text/event-stream", b"", b"data: ", b"", b"\r\n\r\n", b"", b"")
JSON_ARRAY = Framing("application/json", b"[", b"", b",\r\n", b"", b"]", b"]")


# Streams are never cached, nor buffered by a proxy (nginx honours x-accel-buffering).
STREAM_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class Framed(Generic[T]):
    """A surface's stream framed for the wire. `start()` pulls its first items before the answer
    starts, so errors found while starting get a real HTTP status; after that an error is the
    stream's last event. The terminator, once the stream ended, is `tail`: it goes out with the
    response's last message instead of a write of its own."""

    def __init__(
        self,
        streamed: Streamed[T],
        framing: Framing,
        *,
        dump: Callable[[T], bytes],
        error_body: Callable[[ApiError], dict[str, Any]],
    ) -> None:
        self._streamed, self._framing = streamed, framing
        self._dump, self._error_body = dump, error_body
        self._first: list[T] = []
        self._ended = False  # the first items were pulled to the stream's end
        self.tail = b""
        self.events = self._frame()

    async def start(self) -> None:
        streamed = self._streamed
        try:
            async for response in streamed.chunks:  # left open: the rest is read by `events`
                self._first = streamed.translation.feed(response)
                if self._first:
                    return
            self._ended = True
            self._first = streamed.translation.finish()
        except BaseException as error:
            await self.aclose()
            if isinstance(error, ApiError):
                raise streamed.rename(error) from None
            raise
        if not self._first:
            raise UnavailableError("The backend ended the stream without a response.")

    async def aclose(self) -> None:
        """Stop the stream, the pipeline and its backend included, whether it was framed or not."""
        await self.events.aclose()
        await self._streamed.chunks.aclose()

    def _framed(self, items: list[T], *, first: bool = False) -> bytes:
        framing, dump = self._framing, self._dump
        events = [framing.prefix + dump(item) + framing.suffix for item in items]
        return (framing.start if first else framing.separator) + framing.separator.join(events)

    async def _frame(self) -> AsyncGenerator[bytes, None]:
        streamed = self._streamed
        try:
            yield self._framed(self._first, first=True)
            if not self._ended:
                async for response in streamed.chunks:
                    items = streamed.translation.feed(response)
                    if items:
                        yield self._framed(items)
                items = streamed.translation.finish()
                if items:
                    yield self._framed(items)
            self.tail = self._framing.end
        except ConnectionCut:
            raise  # the response is to end without its end
        except Exception as exc:
            if isinstance(exc, ApiError):
                exc = streamed.rename(exc)
            else:
                log.exception("internal error during a stream")
                exc = InternalError("Internal error encountered.")
            framing = self._framing
            body = json.dumps(self._error_body(exc)).encode()
            self.tail = framing.separator + framing.prefix + body + framing.suffix + framing.end_after_error
        finally:
            await streamed.chunks.aclose()  # also when this generator is closed while suspended at a `yield`


class EventStreamResponse(StreamingResponse):
    """A streamed response that stops its producer as soon as the client leaves.

    Starlette notices a disconnect only when it sends (ASGI spec 2.4) or through a listener
    that does not reach the producer; a stream that sends nothing for a while (hidden
    thoughts) would keep generating. Here the sending itself is cancelled, and the events
    generator closed, the moment `http.disconnect` arrives.
    """

    def __init__(self, framed: Framed[Any], headers: Mapping[str, str], media_type: str) -> None:
        super().__init__(framed.events, media_type=media_type, headers=headers)
        self._framed = framed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with contextlib.suppress(ClientDisconnected):
            await until_disconnect(receive, self._send_all(send))

    async def _send_all(self, send: Send) -> None:
        events = self._framed.events
        writer = _Writer(send)
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            try:
                async for chunk in events:
                    await writer.put(chunk)
            except ConnectionCut:
                await writer.finish(None)  # what was made goes out; the server then drops the connection
                return
            await writer.finish(self._framed.tail)
        finally:
            writer.stop()
            await self._framed.aclose()  # also when it never started: the client left before the headers


class _Writer:
    """Sends a stream's chunks from a task of its own, joined: whatever the producer made before it
    next waited goes out in one write. An upstream's events that arrive together (one read holds
    a whole short answer) then cost one system call, not one each; a chunk made alone still goes
    at once, when the producer waits for the next."""

    HIGH_WATER = 1 << 20  # bytes held while the client reads slowly; the producer waits beyond

    def __init__(self, send: Send) -> None:
        self._send = send
        self._pending: list[bytes] = []
        self._size = 0
        self._more = True
        self._cut = False
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    async def put(self, chunk: bytes) -> None:
        if self._task.done():
            self._task.result()  # the sending failed: raise it here
            raise RuntimeError("stream writer stopped")
        self._pending.append(chunk)
        self._size += len(chunk)
        self._wake.set()
        if self._size > self.HIGH_WATER:
            self._drained.clear()
            await self._drained.wait()

    async def finish(self, tail: bytes | None) -> None:
        """Send what is pending and `tail` as the response's last message; None: what is pending,
        and no last message (the response is left unfinished)."""
        self._pending.append(tail or b"")
        self._more = False
        self._cut = tail is None
        self._wake.set()
        await self._task

    def stop(self) -> None:
        if not self._task.done():
            self._task.cancel()
        elif not self._task.cancelled() and self._task.exception() is not None:
            log.info("a stream's sending failed: %s", self._task.exception())  # retrieved: no warning later

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            body, more = b"".join(self._pending), self._more
            self._pending.clear()
            self._size = 0
            self._drained.set()
            if body or more or not self._cut:  # cut: what is pending, and never the end
                await self._send({"type": "http.response.body", "body": body, "more_body": more or self._cut})
            if not more:
                return
