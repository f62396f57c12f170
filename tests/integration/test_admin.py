"""The admin API: only the admin keys open it; keys issued through it work at once and are
shown once, revoked ones are refused, bad input is a 400 naming the field, usage is reported and
the configuration reloads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve

ADMIN = {"Authorization": "Bearer admin-secret-1"}


@pytest.fixture
def reloaded(tmp_path: Path) -> list[Settings]:
    return []


@pytest.fixture
def server(tmp_path: Path, reloaded: list[Settings]) -> Iterator[RunningServer]:
    settings = Settings(port=0, state_dir=tmp_path / "state", admin_keys=["admin-secret-1"], keys_refresh_s=0.2)

    def reload() -> Settings:
        fresh = settings.model_copy(update={"api_keys": ["from-the-reload"]})
        reloaded.append(fresh)
        return fresh

    with serve(settings, backends={"local": FakeBackend()}, reload=reload) as running:
        yield running


def _chat(server: RunningServer, key: str) -> int:
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "one two"}]}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(server.chat_url, json=body, headers=headers, timeout=30).status_code


def test_only_admin_keys_open_it(server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/admin/keys").status_code == 401
    assert httpx.get(f"{server.url}/admin/keys", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{server.url}/admin/keys", headers=ADMIN).json() == {"keys": []}


def test_without_admin_keys_there_is_no_admin_api(fake: FakeBackend, tmp_path: Path) -> None:
    with serve(Settings(port=0, state_dir=tmp_path / "state"), backends={"local": fake}) as plain:
        assert httpx.get(f"{plain.url}/admin/keys", headers=ADMIN).status_code == 404


def test_issue_use_list_and_revoke(server: RunningServer) -> None:
    created = httpx.post(f"{server.url}/admin/keys", json={"name": "svc", "requests_per_minute": 100}, headers=ADMIN)
    assert created.status_code == 200, created.text
    key = created.json()["key"]
    assert _chat(server, key) == 200  # at once on this replica
    assert _chat(server, "anything-else") == 401  # a key exists now: every request needs one
    again = httpx.post(f"{server.url}/admin/keys", json={"name": "svc"}, headers=ADMIN)
    assert again.status_code == 409 and again.json()["error"]["status"] == "ALREADY_EXISTS"
    listed = httpx.get(f"{server.url}/admin/keys", headers=ADMIN)
    assert [k["name"] for k in listed.json()["keys"]] == ["svc"] and key not in listed.text
    assert listed.json()["keys"][0]["status"] == "active"
    assert httpx.delete(f"{server.url}/admin/keys/svc", headers=ADMIN).status_code == 200
    assert _chat(server, key) == 401
    assert httpx.delete(f"{server.url}/admin/keys/svc", headers=ADMIN).status_code == 404


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"name": "../etc"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "ok", "requests_per_minute": 0}, "requests_per_minute"),
        ({"name": "ok", "models": ["x"] * 65}, "models"),
        ({"name": "ok", "surprise": 1}, "surprise"),
    ],
)
def test_a_bad_key_is_a_400_naming_the_field(server: RunningServer, body: dict[str, object], named: str) -> None:
    response = httpx.post(f"{server.url}/admin/keys", json=body, headers=ADMIN)
    assert response.status_code == 400 and named in response.text


def test_usage_and_reload(server: RunningServer, reloaded: list[Settings]) -> None:
    key = httpx.post(f"{server.url}/admin/keys", json={"name": "counted"}, headers=ADMIN).json()["key"]
    assert _chat(server, key) == 200
    deadline = time.monotonic() + 10
    while not (usage := httpx.get(f"{server.url}/admin/usage?hours=1", headers=ADMIN).json()["usage"]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert usage == [
        {"key": "counted", "model": "google/gemini-2.5-flash", "requests": 1, "prompt_tokens": 2, "output_tokens": 2}
    ]
    assert httpx.get(f"{server.url}/admin/usage?hours=-1", headers=ADMIN).status_code == 400
    assert httpx.post(f"{server.url}/admin/reload", headers=ADMIN).status_code == 200
    assert len(reloaded) == 1 and _chat(server, "from-the-reload") == 200
