"""The process's long-lived HTTP client sessions (aiohttp), owned in one place.

A component that calls out over HTTP says, when it is built, what session it needs (a
`SessionSpec`: connections, timeouts, a socket factory that guards addresses, headers left out)
and gets an `HttpClient` back; the app's lifespan opens every session at its start and closes
them all at its end. No component opens or closes a session itself. Outside the app, the owner
is an async context manager:

    async with HttpClients() as clients:
        reader = MediaReader(settings, clients)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp

SocketFactory = Callable[[Any], socket.socket]  # an address info → the socket to connect


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """How one session is made; each default is aiohttp's own."""

    timeout: aiohttp.ClientTimeout | None = None  # None: aiohttp's (5 min in all, 30 s to connect)
    limit: int = 100  # connections at once; 0: no limit
    keepalive_timeout: float = 15.0  # an idle connection is dropped after this
    socket_factory: SocketFactory | None = None  # sees each address before it is connected to
    use_dns_cache: bool = True
    trust_env: bool = False  # proxies and .netrc from the environment
    skip_auto_headers: tuple[str, ...] = ()


class HttpClient:
    """One component's session: open between its owner's `open()` and `close()`."""

    def __init__(self, spec: SessionSpec) -> None:
        self.spec = spec
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the HTTP clients are not open: open them first (HttpClients.open, or `async with`)")
        return self._session

    def _open(self) -> None:
        spec = self.spec
        connector = aiohttp.TCPConnector(
            limit=spec.limit,
            keepalive_timeout=spec.keepalive_timeout,
            socket_factory=spec.socket_factory,
            use_dns_cache=spec.use_dns_cache,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=spec.timeout,
            trust_env=spec.trust_env,
            skip_auto_headers=spec.skip_auto_headers,
        )

    async def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


class HttpClients:
    """Every session the process holds; opened and closed together, inside the event loop."""

    def __init__(self) -> None:
        self._clients: list[HttpClient] = []
        self._open = False

    def add(self, spec: SessionSpec) -> HttpClient:
        """A session made to `spec`: opened with the others, or now if they already are."""
        client = HttpClient(spec)
        self._clients.append(client)
        if self._open:
            client._open()
        return client

    async def open(self) -> None:
        if not self._open:
            for client in self._clients:
                client._open()
            self._open = True

    async def close(self) -> None:
        """Close every session, whichever fails to close (each is tried; the first error is raised)."""
        self._open = False
        results = await asyncio.gather(*(client._close() for client in self._clients), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def __aenter__(self) -> HttpClients:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
