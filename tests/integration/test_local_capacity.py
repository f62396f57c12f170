"""Backpressure, deadlines, cancellation and /metrics on the real engine."""

from __future__ import annotations

import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_errors import assert_google_error
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"
# The grammar forces at least 3000 array items: minutes of decoding unless stopped.
ENDLESS = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Numbers please."}],
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "Many", "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 3000}},
    },
}


def metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def wait_for_metric(server: RunningServer, name: str, value: float, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while metric(server, name) != value:
        assert time.monotonic() < deadline, f"{name} stayed at {metric(server, name)}"
        time.sleep(0.02)


def _one_slot(timeout_s: float) -> Settings:
    local = LocalBackendSettings(n_parallel=1, max_waiting=1, n_ctx=1024)
    return Settings(port=0, request_timeout_s=timeout_s, backends={"local": local})


def test_a_full_queue_answers_429_with_retry_after() -> None:
    with serve(_one_slot(timeout_s=60)) as server, ThreadPoolExecutor(max_workers=1) as pool:
        url = server.chat_url
        with httpx.stream("POST", url, json={**ENDLESS, "stream": True}, headers=AUTH, timeout=60) as running:
            lines = running.iter_lines()  # held: a dropped iterator closes the response
            next(line for line in lines if line.startswith("data: {"))
            queued = pool.submit(httpx.post, url, json={**ENDLESS, "max_tokens": 4}, headers=AUTH, timeout=60)
            wait_for_metric(server, "openvertex_requests_waiting", 1)
            response = httpx.post(url, json=ENDLESS, headers=AUTH, timeout=60)
            assert_google_error(response, 429, "RESOURCE_EXHAUSTED", "try again later")
            assert response.headers["retry-after"] == "1"
        # The running stream left; the queued request gets the slot and finishes.
        assert queued.result().status_code == 200
        wait_for_metric(server, "openvertex_sequences_running", 0)


def test_a_request_past_its_deadline_ends_with_504() -> None:
    with serve(_one_slot(timeout_s=2)) as server:
        response = httpx.post(server.chat_url, json=ENDLESS, headers=AUTH, timeout=30)
        assert_google_error(response, 504, "DEADLINE_EXCEEDED", "did not finish within 2 s")
        with httpx.stream("POST", server.chat_url, json={**ENDLESS, "stream": True}, headers=AUTH, timeout=30) as r:
            events = [line.removeprefix("data: ") for line in r.iter_lines() if line]
        assert json.loads(events[-1])["error"]["status"] == "DEADLINE_EXCEEDED"
        wait_for_metric(server, "openvertex_sequences_running", 0)


def test_cancelled_streams_free_their_slots(local_server: RunningServer) -> None:
    rng = random.Random(3)
    for _ in range(24):
        body = {**ENDLESS, "stream": True, "n": rng.choice([1, 2])}
        with httpx.stream("POST", local_server.chat_url, json=body, headers=AUTH, timeout=60) as response:
            lines = response.iter_lines()
            for _ in range(rng.randint(1, 6)):
                next(lines)
    wait_for_metric(local_server, "openvertex_sequences_running", 0)
    wait_for_metric(local_server, "openvertex_requests_waiting", 0)


def test_metrics_exposition(local_server: RunningServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "stream": True}
    with httpx.stream("POST", local_server.chat_url, json=body, headers=AUTH, timeout=60) as response:
        list(response.iter_lines())
    text = httpx.get(f"{local_server.url}/metrics").text
    assert 'openvertex_requests_total{code="200",route="chat_completions"}' in text
    assert metric(local_server, "openvertex_tokens_generated_total") >= 6
    assert metric(local_server, "openvertex_prompt_tokens_computed_total") > 0
    assert metric(local_server, "openvertex_time_to_first_token_seconds_count") >= 1
    assert metric(local_server, "openvertex_time_per_output_token_seconds_count") >= 1
    assert "# TYPE openvertex_time_to_first_token_seconds histogram" in text
