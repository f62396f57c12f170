"""Shared state on a real PostgreSQL server (started by the tests from Debian's binaries, on a
Unix socket): two `openvertex serve` processes with one `database_url` behave as one. A key
issued once works on both and a revocation reaches both; requests and tokens per minute hold
across them; a context cache made on one is used on the other; they sign with one secret."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from openvertex.cli import main
from openvertex.service.signatures import SECRET_BYTES
from openvertex.store.postgres import MIGRATIONS, PostgresDatabase
from openvertex.store.secrets import shared_secret
from tests.support.postgres import binaries, fresh_database, postgres_server
from tests.support.server import serving

pytestmark = pytest.mark.skipif(
    binaries() is None, reason="PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does)"
)
MODEL = "google/gemini-2.5-flash"


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture
def database_url(server_url: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    url = fresh_database(server_url, re.sub(r"\W", "_", request.node.name)[:60].lower())
    monkeypatch.setenv("OPENVERTEX_DATABASE_URL", url)  # for `openvertex keys` run here
    return url


def _config(tmp_path: Path, name: str, database_url: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'state_dir = "{tmp_path / name}"\ndatabase_url = "{database_url}"\nkeys_refresh_s = 0.2\n'
        '[backends.local]\ntype = "fake"\n'
    )
    return path


@pytest.fixture
def replicas(tmp_path: Path, database_url: str) -> Iterator[tuple[str, str]]:
    with (
        serving(_config(tmp_path, "a", database_url)) as (_, a),
        serving(_config(tmp_path, "b", database_url)) as (_, b),
    ):
        yield a, b


def _create(capsys: pytest.CaptureFixture[str], replicas: tuple[str, str], name: str, *options: str) -> str:
    main(["keys", "create", name, *options])
    key = capsys.readouterr().out.strip()
    for url in replicas:  # each reads the new key within its refresh (an unknown one is then a 401)
        _wait_for(lambda url=url: _chat(url, "ov-unknown").status_code == 401)  # type: ignore[misc]
    return key


def _chat(url: str, key: str, text: str = "hi") -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    path = "/v1/projects/p/locations/l/endpoints/openapi/chat/completions"
    return httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _wait_for(check: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.05)


def _early_in_a_minute(seconds_needed: float = 15.0) -> None:
    if 60 - time.time() % 60 < seconds_needed:
        time.sleep(60 - time.time() % 60 + 0.05)


def test_a_key_and_its_requests_per_minute_hold_across_replicas(
    replicas: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas
    key = _create(capsys, replicas, "shared", "--rpm", "3")
    _early_in_a_minute()
    assert [_chat(url, key).status_code for url in (a, b, a)] == [200, 200, 200]
    refused = _chat(b, key)
    assert refused.status_code == 429 and "3 requests a minute" in refused.text
    assert _chat(a, key).status_code == 429
    main(["keys", "revoke", "shared"])
    _wait_for(lambda: _chat(a, key).status_code == 401 and _chat(b, key).status_code == 401)


def test_tokens_per_minute_hold_across_replicas(replicas: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    a, b = replicas
    key = _create(capsys, replicas, "frugal", "--tpm", "10")
    _early_in_a_minute()
    assert _chat(a, key, "one two three four five six").status_code == 200  # 12 tokens (the fake: a word each)
    _wait_for(lambda: _chat(b, key).status_code == 429)  # once a's count is written (keys_refresh_s)


def test_a_context_cache_made_on_one_replica_is_used_on_the_other(
    replicas: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas
    key = _create(capsys, replicas, "cacher")
    headers = {"Authorization": f"Bearer {key}"}
    resource = "projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
    contents = [{"role": "user", "parts": [{"text": "a document worth keeping"}]}]
    created = httpx.post(
        f"{a}/v1beta1/projects/p/locations/l/cachedContents",
        json={"model": resource, "contents": contents},
        headers=headers,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    assert httpx.get(f"{b}/v1beta1/{name}", headers=headers, timeout=30).status_code == 200
    question = {"cachedContent": name, "contents": [{"role": "user", "parts": [{"text": "so?"}]}]}
    answered = httpx.post(f"{b}/v1beta1/{resource}:generateContent", json=question, headers=headers, timeout=30)
    assert answered.status_code == 200, answered.text
    # b applied the cache a made (the fake counts only the question's words as the prompt: 1).
    assert answered.json()["usageMetadata"]["cachedContentTokenCount"] == 1


def test_usage_is_reported_from_the_shared_database(
    replicas: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = replicas
    key = _create(capsys, replicas, "counted")
    assert _chat(a, key, "a b").status_code == _chat(b, key, "c d e").status_code == 200

    def requests() -> str:
        main(["usage"])
        line = next((x for x in capsys.readouterr().out.splitlines() if x.startswith("counted\t")), "")
        return line.split("\t")[2] if line else ""

    _wait_for(lambda: requests() == "2")


def test_migrations_apply_once_and_replicas_share_the_signing_secret(database_url: str) -> None:
    first, second = PostgresDatabase(database_url), PostgresDatabase(database_url)
    first.open()
    second.open()  # the schema is there: nothing applied again
    try:
        version = first.call(lambda db: db.execute("SELECT version FROM schema_version").fetchall())
        assert version == [(len(MIGRATIONS),)]
        secret = shared_secret(first, "thought_signature", SECRET_BYTES)
        assert len(secret) == SECRET_BYTES
        assert shared_secret(second, "thought_signature", SECRET_BYTES) == secret
    finally:
        first.close()
        second.close()
