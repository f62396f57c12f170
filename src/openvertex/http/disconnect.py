"""Cancelling a request's work the moment its client hangs up.

The ASGI server reports a closed connection as an `http.disconnect` message on `receive`,
and only to whoever is waiting there. Work that sends nothing for a while (a non-streaming
answer, the first chunk of a stream, a stream whose thoughts are hidden) would otherwise
never notice, and keep its engine slots until its deadline. Cancelling the awaiting task
raises CancelledError inside the backend's async generator, whose `finally` frees the
sequences at the next decode step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from openvertex.errors import CancelledError

T = TypeVar("T")


class ClientDisconnected(CancelledError):
    """499 CANCELLED: rendered for the metrics and the log; the client is no longer there to read it."""

    def __init__(self) -> None:
        super().__init__("The client closed the connection before the response was complete.")


async def wait_for_disconnect(receive: Receive) -> None:
    """Return once the client has gone. Call only after the request body has been read."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait((task, watcher), return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()  # finished first (or with the hang-up): its outcome stands
        task.cancel()
        # Let the cancellation run through the generators' `finally` blocks before answering.
        await asyncio.wait((task,))
        raise ClientDisconnected()
    finally:
        # Also reached when this request is cancelled from outside (a deadline, shutdown).
        watcher.cancel()
        task.cancel()
