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
from openvertex.interrupts import Interrupt

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
    """Await `work` in this task; if the client disconnects first, cancel it and raise
    ClientDisconnected. One watcher task per call, and `work` runs here, not in a task of its
    own: both matter at thousands of requests a second."""
    hang_up = Interrupt()

    def on_disconnect(watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            hang_up.fire()  # raises CancelledError where `work` waits, through its `finally` blocks

    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if hang_up.claims():  # ours alone, not also a deadline's or shutdown's
            raise ClientDisconnected() from None
        raise
    finally:
        hang_up.armed = False  # a hang-up reported from here on is not this work's to cancel
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
        hang_up.release()  # cancelled, but `work` swallowed it or failed otherwise: the client left all the same
