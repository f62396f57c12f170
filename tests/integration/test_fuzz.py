"""Fuzzing the live server with generated chat-completion requests: never a 5xx, always up, memory flat.

Hypothesis generates the bodies (tests/support/request_strategies.py); four keep-alive connections
send them to a real server running the real model, so requests also overlap in the engine as they
would in production. Bodies are derandomized: a failure reproduces, and the run is the same in CI.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from openvertex.settings import LocalBackendSettings, Settings
from tests.support.request_strategies import request_bodies
from tests.support.server import RunningServer, serve

WARM_UP = 200
REQUESTS = 1800  # 2,000 in all
CLIENTS = 4
TIMEOUT = 30  # per request: a hang is a failure, not a stalled run
MAX_RSS_GROWTH = 150 * 1024 * 1024


def _settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.generate],  # no shrinking: each example costs a request; failures are kept whole
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )


def _rss_bytes() -> int:
    """Resident memory of this process, which runs the server (and the model) in a thread."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0  # 200: the request reached the model
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int, failure: str | None) -> None:
        with self.lock:
            self.sent += 1
            self.answered += status == 200
            if failure is not None:
                self.failures.append(failure)


def _stream_failure(response: httpx.Response) -> str | None:
    """A stream that started with 200 may still end in an error event: it must not be a 5xx either."""
    for line in response.iter_lines():
        if line.startswith("data: {"):
            try:
                event = json.loads(line[6:])
            except json.JSONDecodeError:
                return f"malformed event {line[:200]!r}"
            error = event.get("error")
            if isinstance(error, dict) and int(error.get("code", 0)) >= 500:
                return f"stream error event {error}"
    return None


def _send(client: httpx.Client, url: str, body: bytes, tally: Tally) -> None:
    status, failure = 0, None
    try:
        with client.stream("POST", url, content=body) as response:
            status = response.status_code
            if status >= 500:
                response.read()
                failure = f"{status} {response.text[:300]}"
            elif status == 200 and response.headers.get("content-type", "").startswith("text/event-stream"):
                failure = _stream_failure(response)
            else:
                response.read()
    except httpx.HTTPError as error:
        failure = f"{type(error).__name__}: {error}"
    if failure is not None:
        failure += f"\n  body: {body[:400]!r}"
    tally.record(status, failure)


def _draw(examples: int, *, warm_up: bool) -> list[bytes]:
    """`examples` bodies from Hypothesis, drawn before any is sent: the server's threads use the
    `random` module, and Hypothesis refuses draws during which its state changes."""
    bodies: list[bytes] = []

    # A separate function per phase, so that derandomized runs draw different bodies for each.
    def warm_up_body(body: bytes) -> None:
        bodies.append(body)

    def fuzz_body(body: bytes) -> None:
        bodies.append(body)

    _settings(examples)(given(request_bodies())(warm_up_body if warm_up else fuzz_body))()
    return bodies


def _send_all(client: httpx.Client, url: str, bodies: list[bytes], tally: Tally) -> None:
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:  # at most CLIENTS requests at a time
        for _ in pool.map(lambda body: _send(client, url, body, tally), bodies):
            pass


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    # A small context; dynamic thinking (budget -1) kept short, as every other budget the bodies ask for.
    local = LocalBackendSettings(n_ctx=512, n_parallel=4, dynamic_thinking_budget=16)
    small = Settings(port=0, backends={"local": local})
    with serve(small) as server:
        yield server


def test_generated_requests_never_get_a_5xx_and_memory_stays_flat(fuzz_server: RunningServer) -> None:
    tally = Tally()
    warm_up, bodies = _draw(WARM_UP, warm_up=True), _draw(REQUESTS, warm_up=False)
    headers = {"Authorization": "Bearer test", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    with httpx.Client(headers=headers, timeout=TIMEOUT, limits=limits) as client:
        _send_all(client, fuzz_server.chat_url, warm_up, tally)
        before = _rss_bytes()
        _send_all(client, fuzz_server.chat_url, bodies, tally)
        after = _rss_bytes()
        alive = client.get(f"{fuzz_server.url}/healthz")
    assert not tally.failures, f"{len(tally.failures)} of {tally.sent} failed:\n" + "\n".join(tally.failures[:10])
    assert tally.sent >= WARM_UP + REQUESTS
    # A fuzz run that never reaches the model tests only the parser.
    assert tally.answered >= 0.2 * tally.sent, f"only {tally.answered} of {tally.sent} answered 200"
    assert alive.status_code == 200
    growth = after - before
    assert growth < MAX_RSS_GROWTH, f"resident memory grew {growth / 2**20:.0f} MiB over {REQUESTS} requests"
