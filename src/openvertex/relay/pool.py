"""One endpoint's forwarding: pick a replica, add the upstream's auth, send the body, and hand back
the answer with its headers read. A connection that fails before the answer's status line arrived
is tried on another replica, once each: nothing reached the client yet, and a chat completion or an
embedding has no effect beyond its answer, so running it again is safe (a replica shutting down
resets the requests sent on its idle keep-alive connections). The answer, once it started, is the
client's, whatever its status.

Gateway failures raised here (rendered in Google's shape by the HTTP edge):
    UnavailableError       503  no replica in service, none reachable, or a malformed answer
    DeadlineExceededError  504  no byte from the upstream for `timeout_s`
"""

from __future__ import annotations

import logging
import time

import aiohttp

from openvertex.errors import ApiError, DeadlineExceededError, UnavailableError
from openvertex.http_clients import HttpClient
from openvertex.relay.replicas import Operation, Replica, ReplicaSet
from openvertex.relay.stats import RelayStats
from openvertex.relay.upstream_auth import UpstreamAuth, upstream_auth
from openvertex.settings import EndpointSettings

log = logging.getLogger(__name__)

RELAYED_HEADERS = ("content-type", "cache-control", "retry-after")


class RelayPool:
    def __init__(self, endpoint_id: str, settings: EndpointSettings, client: HttpClient) -> None:
        self.endpoint_id = endpoint_id
        self.settings = settings
        self.client = client
        self.replicas = ReplicaSet(
            [Replica.at(url, settings.health_path) for url in settings.upstreams], max_failures=settings.max_failures
        )
        self.auth: UpstreamAuth = upstream_auth(settings)
        self.stats = RelayStats()
        # Bounded waits: to connect, and between any two bytes of an answer (a long stream is fine).
        self.timeout = aiohttp.ClientTimeout(  # `connect` bounds the DNS lookup too
            total=None,
            connect=settings.connect_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.timeout_s,
        )

    @property
    def model(self) -> str | None:
        """What `model` becomes on the way up: the served name, or None to drop it."""
        return self.settings.model

    async def forward(
        self, body: bytes, content_type: str, *, operation: Operation = "chat/completions"
    ) -> UpstreamAnswer:
        self.stats.requests += 1
        started = time.monotonic()
        tried: list[Replica] = []
        while (replica := self.replicas.pick(exclude=tried)) is not None:
            if tried:
                self.stats.retries += 1
            tried.append(replica)
            answer = await self._send(replica, replica.url_for(operation), body, content_type, started)
            if answer is not None:
                return answer
        self.stats.errors += 1
        if tried:
            raise UnavailableError(f"No replica of endpoint `{self.endpoint_id}` could be reached.")
        raise UnavailableError(f"Endpoint `{self.endpoint_id}` has no healthy replica.")

    async def _send(
        self, replica: Replica, url: str, body: bytes, content_type: str, started: float
    ) -> UpstreamAnswer | None:
        """The answer, or None when the connection failed and another replica may take the request."""
        try:
            headers = {"Content-Type": content_type, **await self.auth.headers(replica)}
        except ApiError:
            self.stats.errors += 1
            raise
        replica.outstanding += 1
        try:
            response = await self.client.session.post(url, data=body, headers=headers, timeout=self.timeout)
        except aiohttp.ConnectionTimeoutError:
            self._connection_failed(replica, f"no connection within {self.settings.connect_timeout_s:g} s")
            return None
        except aiohttp.ServerTimeoutError:
            self._gave_up(replica, "timeout")
            raise DeadlineExceededError(
                f"Endpoint `{self.endpoint_id}` did not answer within {self.settings.timeout_s:g} s."
            ) from None
        except aiohttp.ClientConnectionError as error:  # refused, reset or closed before any answer
            self._connection_failed(replica, str(error) or type(error).__name__)
            return None
        except aiohttp.ClientResponseError as error:  # not HTTP
            self._gave_up(replica, f"malformed answer: {error.message}")
            raise UnavailableError(f"Endpoint `{self.endpoint_id}` sent an answer that is not valid HTTP.") from None
        except BaseException:
            replica.outstanding -= 1
            raise
        self.replicas.succeeded(replica)
        if response.status >= 500:
            self.stats.errors += 1  # relayed as the container wrote it, but an error all the same
        return UpstreamAnswer(response, replica, self, started)

    def _connection_failed(self, replica: Replica, reason: str) -> None:
        replica.outstanding -= 1
        log.info("endpoint %s: upstream %s failed to connect: %s", self.endpoint_id, replica.url, reason)
        self.replicas.failed(replica, reason)

    def _gave_up(self, replica: Replica, reason: str) -> None:
        replica.outstanding -= 1
        self.stats.errors += 1
        log.warning("endpoint %s: upstream %s: %s", self.endpoint_id, replica.url, reason)
        self.replicas.failed(replica, reason)

    def finished(self, replica: Replica, started: float) -> None:
        replica.outstanding -= 1
        self.stats.seconds += time.monotonic() - started


class UpstreamAnswer:
    """An upstream's answer with its status and headers read; the body is read as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse, replica: Replica, pool: RelayPool, started: float) -> None:
        self.status = response.status
        self.headers = [(name, value) for name in RELAYED_HEADERS if (value := response.headers.get(name)) is not None]
        self._response = response
        self._replica = replica
        self._pool = pool
        self._started = started
        self._complete = False
        self._closed = False

    async def read(self) -> bytes:
        """The next bytes as they came, or b"" once the answer is complete."""
        try:
            chunk = await self._response.content.readany()
        except aiohttp.ServerTimeoutError:
            self._cut_short("timeout")
            raise DeadlineExceededError(
                f"Endpoint `{self._pool.endpoint_id}` sent nothing for {self._pool.settings.timeout_s:g} s."
            ) from None
        except aiohttp.ClientError as error:
            self._cut_short(str(error) or type(error).__name__)
            raise UnavailableError(f"Endpoint `{self._pool.endpoint_id}` closed the answer before its end.") from None
        if not chunk:
            self._complete = True
        return chunk

    def close(self) -> None:
        """Release the connection for reuse after a complete answer; otherwise close it, which is how
        the upstream learns that nobody is reading (a client gone, an answer cut short)."""
        if self._closed:
            return
        self._closed = True
        if self._complete:
            self._response.release()
        else:
            self._response.close()
        self._pool.finished(self._replica, self._started)

    def _cut_short(self, reason: str) -> None:
        log.warning(
            "endpoint %s: upstream %s cut its answer short: %s", self._pool.endpoint_id, self._replica.url, reason
        )
        self._pool.stats.errors += 1
