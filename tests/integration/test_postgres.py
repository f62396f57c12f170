"""Shared state on a real PostgreSQL server (started by the tests from Debian's binaries, on a
Unix socket): two `openvertex serve` processes with one `database_url` behave as one. A key
issued once works on both and a revocation reaches both; requests and tokens per minute hold
across them; a context cache made on one is used on the other; they sign with one secret. A
database that stops answering (a proxy in front of it that accepts and never replies) costs a
rate-limited key's requests a 503 within `database_timeout_s`, and keys without quotas nothing."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import psycopg
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.cli import main
from openvertex.service.keys import KeySpec, issue_key
from openvertex.service.signatures import SECRET_BYTES
from openvertex.settings import Settings
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.cached_contents import CachedContentRow, CachedContentStore
from openvertex.store.postgres import MIGRATIONS, PostgresDatabase
from openvertex.store.secrets import shared_secret
from openvertex.store.usage import UsagePoint, UsageRow, UsageStore
from tests.support.postgres import binaries, fresh_database, postgres_server
from tests.support.server import serve, serving

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


def test_the_cache_sweeps_questions_run_on_postgresql(database_url: str) -> None:
    """Which caches expired, which still exist (asked by every replica's sweep, in batches of
    names), and the removal of expired ones only (a row another replica swept is not counted)."""
    database = PostgresDatabase(database_url)
    database.open()
    try:
        store = CachedContentStore(database)
        names = [f"cachedContents/{i}" for i in range(1200)]  # more than one batch
        for i, name in enumerate(names):
            row = CachedContentRow(name, "", "models/m", None, "{}", 1, 0.0, 0.0, 100.0 if i % 2 else 10.0, "k")
            asyncio.run(store.insert(row))
        expired = asyncio.run(store.expired(now=50.0, limit=2000))
        assert sorted(row.name for row in expired) == sorted(names[::2])
        assert asyncio.run(store.live([*names, "cachedContents/unknown"], now=50.0)) == set(names[1::2])
        assert asyncio.run(store.remove_expired(names, now=50.0)) == 600  # the live ones stay
        assert asyncio.run(store.remove_expired(names, now=50.0)) == 0
        assert asyncio.run(store.live(names, now=50.0)) == set(names[1::2])
        assert asyncio.run(store.live([], now=50.0)) == set()
    finally:
        database.close()


def test_the_usage_series_runs_on_postgresql(database_url: str) -> None:
    """Per key and step, models together, the steps with usage only: PostgreSQL divides the
    minutes as integers, as SQLite does."""
    database = PostgresDatabase(database_url)
    database.open()
    try:
        store = UsageStore(database)
        rows = [
            UsageRow("a", "m1", 6001, 1, 10, 20),
            UsageRow("a", "m2", 6004, 2, 1, 1),
            UsageRow("a", "m1", 6009, 1, 5, 5),
            UsageRow("b", "m1", 6002, 4, 4, 4),
            UsageRow("b", "m1", 5000, 9, 9, 9),  # before the window
        ]
        asyncio.run(store.add(rows))
        assert store.series(since_minute=6000, step_minutes=5) == [
            UsagePoint("a", 6000, 3, 11, 21),
            UsagePoint("a", 6005, 1, 5, 5),
            UsagePoint("b", 6000, 4, 4, 4),
        ]
        assert store.series(since_minute=6000, step_minutes=60) == [
            UsagePoint("a", 6000, 4, 16, 26),
            UsagePoint("b", 6000, 4, 4, 4),
        ]
    finally:
        database.close()


# ---- a database that stops answering ---------------------------------------------------------------


class HangingProxy:
    """A loopback TCP listener in front of PostgreSQL's Unix socket. Once `hang` is called it is a
    server that accepts connections and never replies: nothing more is passed either way on the
    connections it holds, and new ones are accepted and left unanswered, until `resume`."""

    def __init__(self, unix_socket: str) -> None:
        self._target = unix_socket
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._hung = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def hang(self) -> None:
        self._hung.set()

    def resume(self) -> None:
        self._hung.clear()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self._hung.is_set():
                continue  # accepted, never answered
            server = socket.socket(socket.AF_UNIX)
            server.connect(self._target)
            self._sockets.append(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        while not self._closed.is_set():
            if self._hung.is_set():
                time.sleep(0.01)
                continue
            try:
                if not select.select([source], [], [], 0.05)[0]:
                    continue
                data = source.recv(65536)
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return


DATABASE_TIMEOUT_S = 2.0
OPEN_KEY = "a-key-without-quotas"


@pytest.fixture
def behind_a_proxy(server_url: str, request: pytest.FixtureRequest) -> Iterator[tuple[HangingProxy, str]]:
    """The proxy and the URL of a fresh database through it."""
    url = fresh_database(server_url, re.sub(r"\W", "_", request.node.name)[:60].lower())
    query = parse_qs(urlsplit(url).query)
    proxy = HangingProxy(f"{query['host'][0]}/.s.PGSQL.5432")
    try:
        yield proxy, f"postgresql://{query['user'][0]}@127.0.0.1:{proxy.port}{urlsplit(url).path}"
    finally:
        proxy.close()


def _limited_key(url: str) -> str:
    database = PostgresDatabase(url)
    database.open()
    try:
        return issue_key(ApiKeyStore(database), KeySpec(name="limited", requests_per_minute=10_000))
    finally:
        database.close()


def test_a_database_that_does_not_answer_is_a_503_in_time_and_other_keys_are_served(
    behind_a_proxy: tuple[HangingProxy, str], tmp_path: Path
) -> None:
    proxy, url = behind_a_proxy
    limited = _limited_key(url)
    settings = Settings(
        port=0,
        state_dir=tmp_path / "state",
        api_keys=[OPEN_KEY],
        database_url=url,
        database_timeout_s=DATABASE_TIMEOUT_S,
        database_pool_size=2,  # fewer connections than requests: some wait for one
        keys_refresh_s=0.2,
    )
    with serve(settings, backends={"local": FakeBackend()}) as server:
        url_of = f"{server.url}/v1/projects/p/locations/l/endpoints/openapi/chat/completions"

        def ask(key: str, text: str = "hi") -> tuple[httpx.Response, float]:
            body = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
            started = time.monotonic()
            # A client timeout far past the database's: a request that hung would fail here.
            answered = httpx.post(url_of, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            return answered, time.monotonic() - started

        assert ask(limited)[0].status_code == ask(OPEN_KEY)[0].status_code == 200
        proxy.hang()
        with ThreadPoolExecutor(8) as pool:
            waiting = [pool.submit(ask, limited) for _ in range(8)]
            # A key without quotas asks the database nothing: served while those wait, its large
            # body parsed on the default worker threads as any.
            served, _ = ask(OPEN_KEY, "word " * 20_000)
            assert served.status_code == 200
            assert not any(future.done() for future in waiting)
            refusals = [future.result() for future in waiting]
        for refused, seconds in refusals:
            assert refused.status_code == 503, refused.text
            assert refused.json() == [
                {
                    "error": {
                        "code": 503,
                        "message": f"The server's database did not answer within {DATABASE_TIMEOUT_S:g} s.",
                        "status": "UNAVAILABLE",
                    }
                }
            ]
            # Within the timeout from when it was asked, not behind the requests ahead of it
            # (eight requests on two connections would otherwise take four timeouts).
            assert seconds < 2 * DATABASE_TIMEOUT_S
        proxy.resume()
        _wait_for(lambda: ask(limited)[0].status_code == 200, seconds=30)


def test_connections_the_server_closed_are_replaced_without_a_failure(database_url: str) -> None:
    database = PostgresDatabase(database_url, pool_size=3)
    database.open()
    try:
        assert database.call(lambda db: db.execute("SELECT 1").fetchone()) == (1,)
        with psycopg.connect(database_url, autocommit=True) as admin:  # as a restart or an operator would
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        time.sleep(0.2)  # the server's notice reaches the idle connection
        assert database.call(lambda db: db.execute("SELECT 2").fetchone()) == (2,)
    finally:
        database.close()
