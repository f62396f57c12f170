"""Every self-deployed endpoint served by replicas: their pools, the HTTP client they share, and
the health checks, started and stopped with the app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from openvertex.endpoints.client import UpstreamClient
from openvertex.endpoints.health import check_forever
from openvertex.endpoints.pool import EndpointPool
from openvertex.settings import EndpointSettings


class Endpoints:
    def __init__(self, configured: Mapping[str, EndpointSettings]) -> None:
        self.client = UpstreamClient()
        self.pools = {
            endpoint_id: EndpointPool(endpoint_id, settings, self.client)
            for endpoint_id, settings in configured.items()
            if settings.upstreams
        }
        self._checks: list[asyncio.Task[None]] = []

    def get(self, endpoint_id: str) -> EndpointPool | None:
        return self.pools.get(endpoint_id)

    async def start(self) -> None:
        self.client.session()  # opened here, inside the running loop
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
        await self.client.close()
