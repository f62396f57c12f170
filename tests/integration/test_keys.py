"""API keys issued with `openvertex keys`, and their quotas, on the embedded database: a key
is stored only as its hash, works at once, is refused once revoked or expired, may be limited to
some models, and is held to its requests, tokens and requests in flight per minute (429 with
Retry-After exactly at the limit). Usage per key and model is written for `openvertex usage`."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.cli import main
from openvertex.protocol import generate_content as gc
from openvertex.settings import Settings
from openvertex.store.database import DATABASE_FILE
from tests.support.server import RunningServer, serve

REFRESH_S = 0.2


class SlowBackend(FakeBackend):
    """The echo, after a pause: a request that stays in flight for a while."""

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        await asyncio.sleep(1.0)
        async for chunk in super().stream(request, model=model):
            yield chunk


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPENVERTEX_STATE_DIR", str(tmp_path / "state"))  # the session's would win over the file
    path = tmp_path / "openvertex.toml"
    path.write_text(f'state_dir = "{tmp_path / "state"}"\n')
    return path


@pytest.fixture
def server(config: Path, tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(port=0, state_dir=tmp_path / "state", keys_refresh_s=REFRESH_S)
    with serve(settings, backends={"local": SlowBackend()}) as running:
        yield running


def _cli(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    main([args[0], "--config", str(config), *args[1:]])
    return capsys.readouterr().out


def _create(server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str], name: str, *options: str) -> str:
    """A new key, once the server knows it: until then the server has no key and takes any token;
    from then on an unknown one is a 401 (which spends no quota)."""
    key = _cli(config, capsys, "keys", "create", name, *options).strip()
    assert key.startswith("ov-") and len(key) > 40
    _wait_for(lambda: _ask(server, "ov-unknown").status_code == 401)
    time.sleep(2 * REFRESH_S)  # a later key: the server reads it at its next refresh (probing it would spend quota)
    return key


def _ask(server: RunningServer, key: str, model: str = "google/gemini-2.5-flash", text: str = "hi") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return httpx.post(server.chat_url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _wait_for(check: object, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def _not_at_a_minute_boundary(seconds_needed: float = 10.0) -> None:
    """Quotas count per clock minute: start a check early enough in a minute to finish in it."""
    if 60 - time.time() % 60 < seconds_needed:
        time.sleep(60 - time.time() % 60 + 0.05)


def test_an_issued_key_lives_until_revoked_and_is_stored_only_as_a_hash(
    server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    key = _create(server, config, capsys, "ci-bot")
    assert _ask(server, key).status_code == 200
    assert _ask(server, key[:-1] + ("A" if key[-1] != "A" else "B")).status_code == 401
    assert _ask(server, "ov-" + "x" * 43).status_code == 401
    listed = _cli(config, capsys, "keys", "list")
    assert "ci-bot" in listed and "active" in listed and key not in listed
    database = (tmp_path / "state" / DATABASE_FILE).read_bytes()
    assert key.encode() not in database and key[3:].encode() not in database
    _cli(config, capsys, "keys", "revoke", "ci-bot")
    _wait_for(lambda: _ask(server, key).status_code == 401)
    assert "revoked" in _cli(config, capsys, "keys", "list")
    with pytest.raises(SystemExit, match="exists already"):
        _cli(config, capsys, "keys", "create", "ci-bot")  # names are not reused


def test_an_expired_key_is_refused(server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _create(server, config, capsys, "short-lived", "--expires-in-days", str(3 / 86400))  # three seconds
    assert _ask(server, key).status_code == 200
    _wait_for(lambda: _ask(server, key).status_code == 401)


def test_a_key_limited_to_some_models(server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _create(server, config, capsys, "flash-only", "--models", "google/gemini-2.5-flash*")
    assert _ask(server, key).status_code == 200
    refused = _ask(server, key, model="google/gemini-2.5-pro")
    assert refused.status_code == 403
    error = refused.json()[0]["error"]
    assert error["status"] == "PERMISSION_DENIED" and "google/gemini-2.5-pro" in error["message"]
    # Globs match the id the request was routed by (`google/*` here), not the bare name as well.
    bare = _create(server, config, capsys, "bare-glob", "--models", "gemini-2.5-flash*")
    assert _ask(server, bare).status_code == 403


def test_requests_per_minute_exactly_at_the_limit(
    server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _create(server, config, capsys, "three-a-minute", "--rpm", "3")
    _not_at_a_minute_boundary()
    statuses = [_ask(server, key).status_code for _ in range(3)]
    refused = _ask(server, key)
    assert statuses == [200, 200, 200] and refused.status_code == 429
    error = refused.json()[0]["error"]
    assert error["status"] == "RESOURCE_EXHAUSTED" and "3 requests a minute" in error["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60


def test_tokens_per_minute_counted_from_usage(
    server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = _create(server, config, capsys, "frugal", "--tpm", "10")
    _not_at_a_minute_boundary()
    _ask(server, key, text="one two three four five six")  # 6 prompt + 6 output tokens: past 10
    refused = _ask(server, key)
    assert refused.status_code == 429 and "10 tokens a minute" in refused.json()[0]["error"]["message"]


def test_requests_in_flight(server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _create(server, config, capsys, "one-at-a-time", "--concurrent", "1")
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(_ask(server, key).status_code))
    thread.start()
    time.sleep(0.4)  # the first is in flight (its backend takes a second)
    second = _ask(server, key)
    thread.join()
    assert first == [200] and second.status_code == 429 and second.headers["retry-after"] == "1"
    assert _ask(server, key).status_code == 200  # its place came back


def test_usage_per_key_and_model(server: RunningServer, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = _create(server, config, capsys, "reporter")
    assert _ask(server, key, text="a b c").status_code == 200
    assert _ask(server, key, text="d e").status_code == 200

    def reported() -> list[str]:
        lines = [line.split("\t") for line in _cli(config, capsys, "usage").splitlines()]
        return next((line for line in lines if line[:2] == ["reporter", "google/gemini-2.5-flash"]), [])

    _wait_for(lambda: reported()[2:3] == ["2"])  # written every keys_refresh_s
    assert reported()[3:] == ["5", "5"]  # the fake counts a word a token, prompt and answer


def test_a_key_sees_only_its_own_context_caches(
    config: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    settings = Settings(port=0, state_dir=tmp_path / "state", keys_refresh_s=REFRESH_S)
    with serve(settings, backends={"local": FakeBackend()}) as server:
        mine = _create(server, config, capsys, "mine")
        theirs = _create(server, config, capsys, "theirs")
        parent = f"{server.url}/v1beta1/projects/p/locations/l/cachedContents"
        model = "projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
        contents = [{"role": "user", "parts": [{"text": "a long document to keep"}]}]

        def call(method: str, url: str, key: str, **kwargs: object) -> httpx.Response:
            return httpx.request(method, url, headers={"Authorization": f"Bearer {key}"}, timeout=30, **kwargs)  # type: ignore[arg-type]

        created = call("POST", parent, mine, json={"model": model, "contents": contents})
        assert created.status_code == 200, created.text
        name = created.json()["name"]
        resource = f"{server.url}/v1beta1/{name}"
        assert call("GET", resource, mine).status_code == 200
        assert [c["name"] for c in call("GET", parent, mine).json()["cachedContents"]] == [name]
        assert call("GET", resource, theirs).status_code == 404
        assert call("GET", parent, theirs).json().get("cachedContents", []) == []
        assert call("PATCH", resource, theirs, json={"ttl": "60s"}).status_code == 404
        assert call("DELETE", resource, theirs).status_code == 404
        question = {"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "and?"}]}]}
        generate = f"{server.url}/v1beta1/{model}:generateContent"
        assert call("POST", generate, theirs, json=question).status_code == 404
        assert call("POST", generate, mine, json=question).status_code == 200
        assert call("DELETE", resource, mine).status_code == 200
