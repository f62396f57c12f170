"""How a stream reaches the ASGI server: chunks made together go out in one message, a chunk made
alone goes at once, a hang-up stops the producer, a slow client holds the producer back, and a
stream's deadline ends it (real asyncio, a recording `send`/`receive` pair in place of uvicorn)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from openvertex.errors import ApiError
from openvertex.http.sse import OPENAI_SSE, EventStreamResponse, Framed
from openvertex.protocol import generate_content as gc
from openvertex.service.pipeline import Streamed

SCOPE: dict[str, Any] = {"type": "http"}


class Client:
    """Records what the server sends; `receive` answers http.disconnect once `leave()` is called."""

    def __init__(self, *, slow: asyncio.Event | None = None) -> None:
        self.bodies: list[bytes] = []
        self.ended = False
        self.left = asyncio.Event()
        self.slow = slow  # while set, each body send waits (a client that does not read)

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if self.slow is not None:
                await self.slow.wait()
            self.bodies.append(message["body"])
            self.ended = not message["more_body"]

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}


def _error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"message": error.message}}


class _Texts:
    """A surface whose items are the chunks' response ids."""

    def feed(self, response: gc.GenerateContentResponse) -> list[str]:
        return [response.response_id or ""]

    def finish(self) -> list[str]:
        return []


async def _response(first: str, rest: AsyncIterator[str]) -> EventStreamResponse:
    async def chunks() -> AsyncGenerator[gc.GenerateContentResponse, None]:
        yield gc.GenerateContentResponse(response_id=first)
        async with contextlib.aclosing(rest) as texts:  # type: ignore[type-var]
            async for text in texts:
                yield gc.GenerateContentResponse(response_id=text)

    framed = Framed(Streamed(chunks(), _Texts()), OPENAI_SSE, dump=str.encode, error_body=_error_body)
    await framed.start()
    return EventStreamResponse(framed, headers={}, media_type=OPENAI_SSE.media_type)


def _event(text: str) -> bytes:
    return b"data: " + text.encode() + b"\n\n"


def test_chunks_made_together_go_in_one_message() -> None:
    asyncio.run(_chunks_made_together_go_in_one_message())


async def _chunks_made_together_go_in_one_message() -> None:
    async def rest() -> AsyncIterator[str]:
        for text in ("b", "c", "d"):
            yield text  # no wait between them: one burst

    client = Client()
    await (await _response("a", rest()))(SCOPE, client.receive, client.send)
    assert client.bodies == [b"".join(_event(t) for t in "abcd") + b"data: [DONE]\n\n"]
    assert client.ended


def test_a_chunk_made_alone_goes_before_the_next_is_made() -> None:
    asyncio.run(_a_chunk_made_alone_goes_before_the_next_is_made())


async def _a_chunk_made_alone_goes_before_the_next_is_made() -> None:
    sent_before_next: list[list[bytes]] = []
    client = Client()

    async def rest() -> AsyncIterator[str]:
        for text in ("b", "c"):
            await asyncio.sleep(0.01)  # the producer waits: what it made so far must be out
            sent_before_next.append(list(client.bodies))
            yield text

    await (await _response("a", rest()))(SCOPE, client.receive, client.send)
    assert sent_before_next == [[_event("a")], [_event("a"), _event("b")]]
    assert client.bodies[-1] == _event("c") + b"data: [DONE]\n\n"


def test_a_hang_up_stops_a_silent_producer() -> None:
    asyncio.run(_a_hang_up_stops_a_silent_producer())


async def _a_hang_up_stops_a_silent_producer() -> None:
    closed = asyncio.Event()

    async def rest() -> AsyncIterator[str]:
        try:
            await asyncio.sleep(30)  # hidden thoughts: nothing to send for a while
            yield "never"
        finally:
            closed.set()

    client = Client()
    answering = asyncio.ensure_future((await _response("a", rest()))(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.01)
    client.left.set()
    await asyncio.wait_for(answering, 2)
    assert closed.is_set()
    assert not client.ended


def test_a_client_that_does_not_read_holds_the_producer_back() -> None:
    asyncio.run(_a_client_that_does_not_read_holds_the_producer_back())


async def _a_client_that_does_not_read_holds_the_producer_back() -> None:
    made = 0
    big = "x" * (256 << 10)

    async def rest() -> AsyncIterator[str]:
        nonlocal made
        for _ in range(64):
            made += 1
            yield big
            await asyncio.sleep(0)

    blocked = asyncio.Event()
    client = Client(slow=blocked)
    answering = asyncio.ensure_future((await _response(big, rest()))(SCOPE, client.receive, client.send))
    await asyncio.sleep(0.05)
    assert made < 16  # about 1 MiB held, not all 16 MiB
    blocked.set()
    await asyncio.wait_for(answering, 5)
    assert made == 64 and client.ended
    assert sum(len(body) for body in client.bodies) > 64 * len(big)


def test_an_error_after_the_first_chunk_is_the_last_event() -> None:
    asyncio.run(_an_error_after_the_first_chunk_is_the_last_event())


async def _an_error_after_the_first_chunk_is_the_last_event() -> None:
    async def rest() -> AsyncIterator[str]:
        yield "b"
        raise ApiError("it broke")

    client = Client()
    await (await _response("a", rest()))(SCOPE, client.receive, client.send)
    sent = b"".join(client.bodies)
    assert sent == _event("a") + _event("b") + b'data: {"error": {"message": "it broke"}}\n\n'
    assert client.ended
