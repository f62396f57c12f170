"""Every self-deployed endpoint served by replicas: their pools, the HTTP client they share, and
the health checks, started and stopped with the app.

aiohttp rather than httpx: against the same zero-cost upstream it managed 7.5k requests/s where
httpx managed 2.0k (issue 11, shared/bench/gateway).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from openvertex.http_clients import HttpClients, SessionSpec
from openvertex.relay.health import check_forever
from openvertex.relay.pool import RelayPool
from openvertex.settings import EndpointSettings

# The one session every endpoint shares: a pool of kept-alive connections to the replicas.
UPSTREAM_SESSION = SessionSpec(
    # No limit on connections: the clients' own connections bound how many are in flight.
    limit=0,
    # Idle connections are dropped after 4 s, before the servers' own keep-alive (uvicorn: 5 s) ends them.
    keepalive_timeout=4,
    # No Accept-Encoding: an upstream that compresses may hold SSE frames back to fill a block,
    # and relayed bytes would have to be decompressed anyway.
    skip_auto_headers=("Accept-Encoding",),
)


class RelayEndpoints:
    def __init__(self, configured: Mapping[str, EndpointSettings], clients: HttpClients) -> None:
        self.client = clients.add(UPSTREAM_SESSION)
        self.pools = {
            endpoint_id: RelayPool(endpoint_id, settings, self.client)
            for endpoint_id, settings in configured.items()
            if settings.upstreams
        }
        self._checks: list[asyncio.Task[None]] = []

    def get(self, endpoint_id: str) -> RelayPool | None:
        return self.pools.get(endpoint_id)

    async def start(self) -> None:
        """The health checks; the client is opened by its HttpClients, before this."""
        self._checks = [asyncio.create_task(check_forever(pool)) for pool in self.pools.values()]

    async def close(self) -> None:
        for task in self._checks:
            task.cancel()
        for task in self._checks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._checks = []
        for pool in self.pools.values():
            pool.auth.close()
