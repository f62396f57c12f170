"""Where the process is in its life. On SIGTERM (or Ctrl-C) it drains: /readyz answers 503 at once
while the listener stays open and requests are still served, so that a load balancer sees the
server leave instead of a refused connection; once nothing is in flight and `drain_grace_s` has
passed, the listener closes and the process exits; requests still in flight have until
`drain_grace_s + drain_timeout_s` after the signal, at the most. A second signal stops at once."""

from __future__ import annotations

import logging
import math
import time
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False

    def drain(self) -> None:
        if not self.draining:
            log.info("draining: /readyz answers 503; requests in flight may finish")
            self.draining = True


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining on the first SIGTERM or SIGINT before it shuts down."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, *, grace_s: float, timeout_s: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self._grace_s, self._timeout_s = grace_s, timeout_s
        self._drain_started: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain_started is not None:  # the second signal: stop now, whatever is in flight
            self.should_exit = self.force_exit = True
            return
        self._drain_started = time.monotonic()
        self.lifecycle.drain()

    async def on_tick(self, counter: int) -> bool:
        started = self._drain_started
        if started is not None and not self.should_exit:
            elapsed = time.monotonic() - started
            idle = not self.server_state.tasks  # no request in flight
            self.should_exit = elapsed >= self._grace_s + self._timeout_s or (elapsed >= self._grace_s and idle)
            # uvicorn's own graceful wait, once the listener is closed: only what is left of the drain.
            self.config.timeout_graceful_shutdown = max(1, math.ceil(self._grace_s + self._timeout_s - elapsed))
        return await super().on_tick(counter)
