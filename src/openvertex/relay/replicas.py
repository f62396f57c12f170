"""The replicas of one endpoint: which one takes the next request, and which are in service.

A replica is taken out after `max_failures` failures in a row (connections refused or reset,
timeouts, failed health checks) and brought back by its next passing health check. Until its
first check, a replica is presumed healthy, so an endpoint answers as soon as the server starts.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

# What a relayed request asks of a replica: the path under its base URL (OpenAI's).
Operation = Literal["chat/completions", "embeddings"]
CHAT_PATH = "/chat/completions"
EMBEDDINGS_PATH = "/embeddings"


@dataclass(eq=False, slots=True)
class Replica:
    url: str  # the base URL as configured, before /chat/completions
    chat_url: str
    embeddings_url: str
    origin: str  # scheme://host[:port]
    health_url: str
    outstanding: int = 0  # requests sent and not yet answered in full
    failures: int = 0  # in a row
    in_service: bool = True

    @property
    def public_origin(self) -> str:
        """scheme://host[:port] without the credentials a URL may carry: what may be shown."""
        parts = urlsplit(self.url)
        host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
        try:
            port = parts.port
        except ValueError:  # not a number: the URL would not have connected either
            port = None
        return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")

    def url_for(self, operation: Operation) -> str:
        return self.embeddings_url if operation == "embeddings" else self.chat_url

    @classmethod
    def at(cls, url: str, health_path: str) -> Replica:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream URL needs http:// or https:// and a host: {url!r}")
        base = url.rstrip("/")
        origin = f"{parts.scheme}://{parts.netloc}"
        return cls(base, base + CHAT_PATH, base + EMBEDDINGS_PATH, origin, origin + "/" + health_path.lstrip("/"))


class ReplicaSet:
    def __init__(self, replicas: Sequence[Replica], *, max_failures: int) -> None:
        self.replicas = list(replicas)
        self.max_failures = max_failures
        self._turn = 0  # where the search starts, so ties go round

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def pick(self, exclude: Collection[Replica] = ()) -> Replica | None:
        """The replica in service with the fewest outstanding requests, skipping `exclude`."""
        count = len(self.replicas)
        start, self._turn = self._turn, (self._turn + 1) % count
        best: Replica | None = None
        for i in range(count):
            replica = self.replicas[(start + i) % count]
            if not replica.in_service or replica in exclude:
                continue
            if best is None or replica.outstanding < best.outstanding:
                best = replica
        return best

    def in_service(self) -> bool:
        return any(replica.in_service for replica in self.replicas)

    def succeeded(self, replica: Replica) -> None:
        replica.failures = 0

    def failed(self, replica: Replica, reason: str) -> None:
        replica.failures += 1
        if replica.in_service and replica.failures >= self.max_failures:
            replica.in_service = False
            log.warning("upstream %s taken out after %d failures in a row (%s)", replica.url, replica.failures, reason)

    def checked(self, replica: Replica, healthy: bool, reason: str = "") -> None:
        """A health check's outcome: a pass brings the replica back; a failure counts as one."""
        if not healthy:
            self.failed(replica, reason or "health check failed")
            return
        if not replica.in_service:
            log.warning("upstream %s back in service: its health check passed", replica.url)
        replica.in_service = True
        replica.failures = 0
