"""The one HTTP client every endpoint shares: a pool of kept-alive connections to the replicas.

aiohttp rather than httpx: against the same zero-cost upstream it managed 7.5k requests/s where
httpx managed 2.0k (issue 11, shared/bench/gateway). Opened inside the event loop, closed at shutdown.
"""

from __future__ import annotations

import aiohttp


class UpstreamClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No limit on connections: the clients' own connections bound how many are in flight.
            # Idle connections are dropped after 4 s, before the servers' own keep-alive (uvicorn: 5 s) ends them.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
            # No Accept-Encoding: an upstream that compresses may hold SSE frames back to fill a block,
            # and relayed bytes would have to be decompressed anyway.
            self._session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("Accept-Encoding",))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
