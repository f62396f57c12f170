"""Engine faults on the real model: a request's fault stays its own, a failed decode ends only its
batch, and a dead engine thread turns /readyz red, fails requests fast with 503 and is replaced."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import llama_cpp
import pytest

from openvertex.backends.local import supervisor as local_supervisor
from openvertex.backends.local.backend import LocalBackend
from openvertex.backends.local.engine import Engine, Slot
from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_errors import assert_google_error
from tests.integration.test_local_capacity import AUTH, ENDLESS, MODEL, metric, wait_for_metric
from tests.support.server import RunningServer, serve

SHORT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4}
# Runs for many seconds: still decoding while the test does what it must around it.
LONG = {**ENDLESS, "max_tokens": 2000, "stream": True}
FAULTY_SEED = 666


class EngineCrash(BaseException):
    """Escapes the engine's own error handling, as an interpreter-level failure would."""


@contextmanager
def local_server(**local: Any) -> Iterator[tuple[RunningServer, LocalBackend]]:
    settings = LocalBackendSettings(n_ctx=2048, n_threads=1, **local)  # one thread: steadier on a busy machine
    backend = LocalBackend(settings)
    with serve(Settings(port=0, backends={"local": settings}), backends={"local": backend}) as server:
        yield server, backend


def data_lines(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: {"):
            event: dict[str, Any] = json.loads(line.removeprefix("data: "))
            yield event


def wait_for_readyz(server: RunningServer, code: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := httpx.get(f"{server.url}/readyz", timeout=10).status_code) != code:
        assert time.monotonic() < deadline, f"/readyz stayed at {status}"
        time.sleep(0.05)


def test_one_requests_sampling_fault_ends_that_request_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    sample = Engine._sample

    def faulty(engine: Engine, slot: Slot, index: int) -> None:
        if slot.sequence is not None and slot.sequence.job.sampling.seed == FAULTY_SEED:
            raise RuntimeError("injected sampling fault")
        sample(engine, slot, index)

    monkeypatch.setattr(Engine, "_sample", faulty)
    with local_server(n_parallel=3) as (server, _):
        with httpx.stream("POST", server.chat_url, json=LONG, headers=AUTH, timeout=60) as running:
            events = data_lines(running.iter_lines())
            next(events)
            failed = httpx.post(server.chat_url, json={**SHORT, "n": 2, "seed": FAULTY_SEED}, headers=AUTH, timeout=60)
            assert_google_error(failed, 500, "INTERNAL", "failed while generating")
            # Both its candidates are freed; the stream that shared their batches keeps its slot...
            wait_for_metric(server, "openvertex_sequences_running", 1)
            # ...and goes on generating (the only one left that can), without an error.
            before = metric(server, "openvertex_tokens_generated_total")
            for count, event in enumerate(events):
                assert "error" not in event
                if count % 8 == 0 and metric(server, "openvertex_tokens_generated_total") > before + 16:
                    break
            else:
                pytest.fail("the stream ended")
        ok = httpx.post(server.chat_url, json=SHORT, headers=AUTH, timeout=60)
        assert ok.status_code == 200, ok.text


def test_a_failed_decode_ends_its_batch_and_the_engine_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    with local_server(n_parallel=2) as (server, backend):
        decode, failures = llama_cpp.llama_decode, [-3]
        assert backend._supervisor.engine is not None
        ours = backend._supervisor.engine._ctx  # an engine of an earlier test may still be winding down

        def failing_once(ctx: Any, batch: Any) -> int:
            return failures.pop() if failures and ctx is ours else int(decode(ctx, batch))

        monkeypatch.setattr(llama_cpp, "llama_decode", failing_once)
        failed = httpx.post(server.chat_url, json=SHORT, headers=AUTH, timeout=60)
        assert_google_error(failed, 500, "INTERNAL", "llama_decode returned -3")
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        # The failed sequences' KV was dropped: the same prompt again is computed afresh and answers.
        ok = httpx.post(server.chat_url, json={**SHORT, "temperature": 0}, headers=AUTH, timeout=60)
        assert ok.status_code == 200, ok.text
        assert (ok.json()["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) == 0


def test_a_dead_engine_thread_turns_readyz_red_and_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    gate, real_engine = threading.Event(), local_supervisor.Engine

    def gated_engine(*args: Any, **kwargs: Any) -> Engine:
        gate.wait(timeout=120)  # the replacement waits until the test has seen the red state
        return real_engine(*args, **kwargs)

    def crash() -> None:
        raise EngineCrash

    with local_server(n_parallel=1, max_waiting=2) as (server, backend), ThreadPoolExecutor(max_workers=1) as pool:
        try:
            monkeypatch.setattr(local_supervisor, "Engine", gated_engine)
            engine = backend._supervisor.engine
            assert engine is not None
            with httpx.stream("POST", server.chat_url, json=LONG, headers=AUTH, timeout=60) as r:
                events = data_lines(r.iter_lines())
                next(events)
                queued = pool.submit(httpx.post, server.chat_url, json=SHORT, headers=AUTH, timeout=60)
                wait_for_metric(server, "openvertex_requests_waiting", 1)
                monkeypatch.setattr(engine, "_step", crash)  # the next decode step kills the thread
                # The running stream ends with UNAVAILABLE, and so does the request waiting for its slot.
                assert [event for event in events if "error" in event][-1]["error"]["status"] == "UNAVAILABLE"
            assert_google_error(queued.result(), 503, "UNAVAILABLE", "restarting")
            wait_for_readyz(server, 503)
            new = httpx.post(server.chat_url, json=SHORT, headers=AUTH, timeout=60)
            assert_google_error(new, 503, "UNAVAILABLE", "restarting")
            assert new.headers["retry-after"] == "1"
        finally:
            gate.set()
        wait_for_readyz(server, 200)
        assert backend._supervisor.engine is not engine
        ok = httpx.post(server.chat_url, json=SHORT, headers=AUTH, timeout=60)
        assert ok.status_code == 200, ok.text
