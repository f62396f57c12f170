"""Running openvertex for a team: request ids and one log line per request, the drain on SIGTERM
(a stream in flight finishes, nothing new is taken, the process exits in time) and the reload of
keys and routes on SIGHUP, with `openvertex serve` as users run it."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.logs import JsonFormatter, TextFormatter, printable
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve, serving

SERVE = [sys.executable, "-m", "openvertex", "serve", "--port", "0"]
KEY = "team-key-0123456789"


@pytest.fixture
def keyed_server(fake: FakeBackend) -> Iterator[RunningServer]:
    with serve(Settings(port=0, api_keys=[KEY]), backends={"local": fake}) as server:
        yield server


def _chat(server: RunningServer, *, stream: bool = False, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return httpx.post(
        server.chat_url, json=body, headers={"Authorization": f"Bearer {KEY}", **(headers or {})}, timeout=30
    )


def _request_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "openvertex.request"]


def test_each_request_has_an_id_and_one_log_line(keyed_server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="openvertex.request")
    answered = _chat(keyed_server)
    streamed = _chat(keyed_server, stream=True, headers={"x-request-id": "trace-42"})
    refused = httpx.post(keyed_server.chat_url, json={}, headers={"x-request-id": "not allowed: spaces"}, timeout=30)
    assert answered.status_code == streamed.status_code == 200 and refused.status_code == 401
    ids = [answered.headers["x-request-id"], streamed.headers["x-request-id"], refused.headers["x-request-id"]]
    assert ids[1] == "trace-42"  # a caller's own id is kept
    assert len(ids[0]) == 24 and len(ids[2]) == 24 and ids[0] != ids[2]  # others are made here
    time.sleep(0.2)  # the line is written once the response is sent
    lines = {r.request["request_id"]: r.request for r in _request_lines(caplog)}  # type: ignore[attr-defined]
    assert set(ids) <= set(lines)
    done, stream, unauthenticated = (lines[i] for i in ids)
    assert done["status"] == 200 and done["route"] == "chat_completions" and done["backend"] == "local"
    assert done["model"] == "google/gemini-2.5-flash" and done["prompt_tokens"] and done["output_tokens"]
    assert done["key"].startswith("key-") and KEY not in json.dumps(done)
    assert stream["time_to_first_token_ms"] is not None and stream["duration_ms"] >= stream["time_to_first_token_ms"]
    assert unauthenticated["status"] == 401 and unauthenticated["key"] is None
    record = next(r for r in _request_lines(caplog) if r.request["request_id"] == ids[0])  # type: ignore[attr-defined]
    parsed = json.loads(JsonFormatter().format(record))
    assert parsed["level"] == "info" and parsed["status"] == 200 and parsed["request_id"] == ids[0]
    assert f"request_id={ids[0]}" in TextFormatter().format(record)


def test_an_unexpected_error_is_a_500_with_its_id_and_line(
    fake: FakeBackend, keyed_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="openvertex.request")
    fake.add([RuntimeError("a bug")])
    failed = _chat(keyed_server)
    assert failed.status_code == 500
    assert failed.json()[0]["error"]["status"] == "INTERNAL" and "a bug" not in failed.text
    request_id = failed.headers["x-request-id"]
    time.sleep(0.2)
    line = next(r.request for r in _request_lines(caplog) if r.request["request_id"] == request_id)  # type: ignore[attr-defined]
    assert line["status"] == 500
    assert _chat(keyed_server).status_code == 200  # and the server goes on


def test_a_text_log_line_cannot_be_forged() -> None:
    forged = "/v1/x\n2026-01-01 INFO openvertex.request: GET / 200 key=admin"
    record = logging.LogRecord("openvertex.request", logging.INFO, __file__, 1, "%s", (printable(forged),), None)
    record.request = {"path": forged, "model": "a b"}
    text = TextFormatter().format(record)
    assert "\n" not in text  # one line, whatever the client put in its path
    assert ' path="/v1/x\\n2026' in text and ' model="a b"' in text


def test_readyz_is_503_while_draining(fake: FakeBackend) -> None:
    with serve(Settings(port=0), backends={"local": fake}) as server:
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        server.app.state.lifecycle.drain()
        response = httpx.get(f"{server.url}/readyz")
        assert response.status_code == 503
        assert response.json()["error"]["status"] == "UNAVAILABLE"


def test_sigterm_drains_with_readyz_503_while_a_stream_finishes(tmp_path: Path) -> None:
    config = tmp_path / "openvertex.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\ndrain_timeout_s = 60\ndrain_grace_s = 0.5\n')
    with serving(config) as (process, url):
        body = {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Count from one to one hundred in words."}],
            # An array of at least 3,000 numbers, cut at 600 tokens: still running when the grace has passed.
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "N",
                    "schema": {"type": "array", "items": {"type": "integer"}, "minItems": 3000},
                },
            },
            "max_tokens": 600,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=60
        ) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if line.startswith("data: {"))  # the stream is under way
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)  # past the grace: the stream in flight keeps the listener open
            ready = httpx.get(f"{url}/readyz", timeout=5)  # the load balancer is told, not refused
            assert ready.status_code == 503 and ready.json()["error"]["status"] == "UNAVAILABLE"
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"  # and the stream in flight finished
        assert '"finish_reason"' in rest[-2]
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)  # then, with nothing in flight, it exits
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=5)


def test_sighup_reloads_keys_and_routes(tmp_path: Path) -> None:
    config = tmp_path / "openvertex.toml"
    state = f'state_dir = "{tmp_path / "state"}"\n'
    config.write_text(state + 'api_keys = ["old-key"]\n')
    with serving(config) as (process, url):

        def status(key: str, model: str = "smollm2") -> int:
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
            headers = {"Authorization": f"Bearer {key}"}
            return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code

        assert (status("old-key"), status("new-key")) == (200, 401)
        routes = '[[routes]]\nmodel = "team/*"\nbackend = "local"\n'
        config.write_text(state + 'api_keys = ["new-key"]\n' + routes)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status("new-key", "team/small") != 200:
            assert time.monotonic() < deadline, "not reloaded"
            time.sleep(0.1)
        assert status("old-key") == 401
        assert (status("new-key", "team/small"), status("new-key", "smollm2")) == (200, 404)
        config.write_text(state + 'api_keys = ["x"]\n[[routes]]\nmodel = "*"\nbackend = "nowhere"\n')
        process.send_signal(signal.SIGHUP)  # a bad edit is refused whole: what runs stays
        time.sleep(1)
        assert status("new-key", "team/small") == 200
        config.write_text(state)  # no keys at all: the server stays closed, it does not open
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while status("new-key") != 401:
            assert time.monotonic() < deadline, "not reloaded"
            time.sleep(0.1)
        assert status("anything") == 401
