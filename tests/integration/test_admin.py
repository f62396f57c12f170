"""The admin API: only the admin keys open it; keys issued through it work at once and are
shown once, revoked ones are refused, bad input is a 400 naming the field, usage is reported (in
total, and over time per key) and the configuration reloads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.settings import Settings
from openvertex.store.database import DATABASE_FILE, SqliteDatabase
from openvertex.store.usage import UsageRow, UsageStore
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


def _add_usage(state_dir: Path, rows: list[UsageRow]) -> None:
    database = SqliteDatabase(state_dir / DATABASE_FILE)
    database.open()
    try:
        asyncio.run(UsageStore(database).add(rows))
    finally:
        database.close()


def _series(server: RunningServer, query: str) -> dict[str, Any]:
    answered = httpx.get(f"{server.url}/admin/usage/series?{query}", headers=ADMIN)
    assert answered.status_code == 200, answered.text
    return dict(answered.json())


def test_usage_series_per_key_and_step(server: RunningServer, tmp_path: Path) -> None:
    base = int(time.time() // 3600) * 60 - 120  # the minute two whole hours before this one's
    _add_usage(
        tmp_path / "state",
        [
            UsageRow("a", "m1", base + 1, 1, 10, 20),
            UsageRow("a", "m2", base + 3, 2, 1, 1),  # another model, the same step: summed
            UsageRow("a", "m1", base + 61, 1, 5, 5),
            UsageRow("b", "m1", base + 7, 4, 4, 4),
            UsageRow("a", "m1", base - 40 * 24 * 60, 9, 9, 9),  # 40 days ago: in no window
        ],
    )

    def point(minute: int, requests: int, prompt: int, output: int) -> dict[str, int]:
        return {"t": minute * 60, "requests": requests, "prompt_tokens": prompt, "output_tokens": output}

    by_5_minutes = _series(server, "hours=3&step=300")
    assert by_5_minutes["series"] == [
        {"key": "a", "points": [point(base, 3, 11, 21), point(base + 60, 1, 5, 5)]},
        {"key": "b", "points": [point(base + 5, 4, 4, 4)]},
    ]
    assert by_5_minutes["step_s"] == 300 and by_5_minutes["since"] % 300 == 0
    assert time.time() - 3 * 3600 - 300 < by_5_minutes["since"] <= time.time() - 3 * 3600
    by_minute = _series(server, "hours=3")  # up to 3 hours: by the minute
    assert by_minute["step_s"] == 60
    assert [p["t"] // 60 for p in by_minute["series"][0]["points"]] == [base + 1, base + 3, base + 61]
    by_hour = _series(server, "hours=744")  # past 48 hours: by the hour
    assert by_hour["step_s"] == 3600
    assert by_hour["series"] == [
        {"key": "a", "points": [point(base, 3, 11, 21), point(base + 60, 1, 5, 5)]},
        {"key": "b", "points": [point(base, 4, 4, 4)]},
    ]
    assert _series(server, "hours=24")["step_s"] == 300
    assert _series(server, "hours=0.01")["series"] == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        *[("hours=0", "hours"), ("hours=745", "hours"), ("hours=nan", "hours"), ("hours=day", "hours")],
        *[("step=120", "step"), ("step=60.0", "step"), ("hours=1&step=", "step")],
    ],
)
def test_usage_series_bounds(server: RunningServer, query: str, named: str) -> None:
    answered = httpx.get(f"{server.url}/admin/usage/series?{query}", headers=ADMIN)
    assert answered.status_code == 400
    assert answered.json()["error"]["message"].startswith(f"{named}:")
    assert httpx.get(f"{server.url}/admin/usage/series").status_code == 401
