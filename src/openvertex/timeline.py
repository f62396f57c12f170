"""The server's last minutes, bucket by bucket, for the console's status: requests, errors,
latency and the tokens the backends generated. Kept in memory by each server, in a ring of
buckets (the oldest dropped as a new one starts); built on what /metrics counts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

BUCKET_S = 5
BUCKETS = 120  # ten minutes

# Tokens generated since start, by backend (BackendLoad.tokens_generated).
TokenReading = Callable[[], Mapping[str, int]]


@dataclass(slots=True)
class _Bucket:
    start: int  # epoch seconds
    tokens_before: dict[str, int]  # the backends' tokens generated when the bucket began
    requests: int = 0
    client_errors: int = 0  # 4xx
    server_errors: int = 0  # 5xx
    latency_ms_sum: float = 0.0
    latency_ms_max: float | None = None
    tokens_after: dict[str, int] = field(default_factory=dict)  # as last read within it


class Timeline:
    """Fed by the HTTP edge as each request ends (`record`) and sampled every second
    (`keep_sampling`), so each bucket's tokens are those generated within it, to a second."""

    def __init__(self, read_tokens: TokenReading, *, bucket_s: int = BUCKET_S, buckets: int = BUCKETS) -> None:
        self._read_tokens = read_tokens
        self.bucket_s = bucket_s
        self._length = buckets
        self._buckets: dict[int, _Bucket] = {}  # by start // bucket_s

    def record(self, status: int, duration_ms: float, *, now: float | None = None) -> None:
        bucket = self._current(time.time() if now is None else now)
        bucket.requests += 1
        if 400 <= status < 500:
            bucket.client_errors += 1
        elif status >= 500:
            bucket.server_errors += 1
        bucket.latency_ms_sum += duration_ms
        bucket.latency_ms_max = max(bucket.latency_ms_max or 0.0, duration_ms)

    def sample(self, *, now: float | None = None) -> None:
        """Read the backends' tokens into the current bucket."""
        bucket = self._current(time.time() if now is None else now)
        bucket.tokens_after = dict(self._read_tokens())

    async def keep_sampling(self, interval_s: float = 1.0) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval_s)

    def series(self, *, now: float | None = None) -> list[dict[str, Any]]:
        """Every bucket of the window, oldest first, up to the current one; empty ones as zeros."""
        now = time.time() if now is None else now
        self.sample(now=now)
        last = int(now // self.bucket_s)
        return [self._point(index) for index in range(last - self._length + 1, last + 1)]

    def tokens_per_second(self, *, now: float | None = None) -> dict[str, float]:
        """By backend, over the last complete bucket (the current one while it is the first)."""
        now = time.time() if now is None else now
        self.sample(now=now)
        index = int(now // self.bucket_s)
        bucket, seconds = self._buckets.get(index - 1), float(self.bucket_s)
        if bucket is None:
            bucket = self._buckets[index]
            seconds = max(now - bucket.start, 1.0)
        return {name: _generated(bucket, name) / seconds for name in bucket.tokens_after}

    def _current(self, now: float) -> _Bucket:
        index = int(now // self.bucket_s)
        bucket = self._buckets.get(index)
        if bucket is None:
            tokens = dict(self._read_tokens())
            previous = self._buckets.get(index - 1)  # what came after its last reading is this one's
            before = previous.tokens_after if previous is not None else tokens
            bucket = self._buckets[index] = _Bucket(index * self.bucket_s, before, tokens_after=tokens)
            for old in [old for old in self._buckets if old <= index - self._length]:
                del self._buckets[old]
        return bucket

    def _point(self, index: int) -> dict[str, Any]:
        bucket = self._buckets.get(index)
        if bucket is None:
            return _empty(index * self.bucket_s)
        latency_avg = bucket.latency_ms_sum / bucket.requests if bucket.requests else None
        return {
            "t": bucket.start,
            "requests": bucket.requests,
            "errors": bucket.client_errors + bucket.server_errors,
            "client_errors": bucket.client_errors,
            "server_errors": bucket.server_errors,
            "latency_ms_avg": round(latency_avg, 3) if latency_avg is not None else None,
            "latency_ms_max": bucket.latency_ms_max,
            "tokens": sum(_generated(bucket, name) for name in bucket.tokens_after),
        }


def _generated(bucket: _Bucket, backend: str) -> int:
    # Never negative: a backend's count restarts only with the process, but a reading may be of a
    # backend the previous reading lacked.
    return max(0, bucket.tokens_after.get(backend, 0) - bucket.tokens_before.get(backend, 0))


def _empty(start: int) -> dict[str, Any]:
    return {
        "t": start,
        "requests": 0,
        "errors": 0,
        "client_errors": 0,
        "server_errors": 0,
        "latency_ms_avg": None,
        "latency_ms_max": None,
        "tokens": 0,
    }
