"""Where the process is in its life. After SIGTERM it drains: /readyz answers 503 so a load
balancer stops sending, the server takes no new request, and requests in flight (streams
included) finish within `drain_timeout_s` (uvicorn's graceful shutdown) before the exit."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

log = logging.getLogger(__name__)


class Lifecycle:
    def __init__(self) -> None:
        self.draining = False

    def drain(self) -> None:
        if not self.draining:
            log.info("draining: no new requests; those in flight may finish")
            self.draining = True


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling /readyz the moment a SIGTERM (or SIGINT) starts the drain."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.drain()
        super().handle_exit(sig, frame)
