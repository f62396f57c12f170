"""The shared state on PostgreSQL (`database_url = "postgresql://…"`): replicas behind a load
balancer then share keys, quotas, usage, context caches' metadata and the thought-signature
secret. psycopg 3 (its synchronous API: the stores' work runs on a worker thread, as with SQLite,
so both take the same code path).

Migrations are this module's own (PostgreSQL's types), tracked in `schema_version` and applied
under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg

from openvertex.store.database import Connection

T = TypeVar("T")

_MIGRATION_LOCK = 0x6F76_6D69  # pg_advisory_xact_lock key: "ovmi"

# Each entry moves the schema one version up; never edited once released.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE cached_contents (
        name TEXT PRIMARY KEY,
        parent TEXT NOT NULL,
        model TEXT NOT NULL,
        display_name TEXT,
        body TEXT NOT NULL,
        token_count BIGINT NOT NULL,
        create_time DOUBLE PRECISION NOT NULL,
        update_time DOUBLE PRECISION NOT NULL,
        expire_time DOUBLE PRECISION NOT NULL,
        owner TEXT
    );
    CREATE INDEX cached_contents_by_parent ON cached_contents (parent, create_time, name);
    CREATE INDEX cached_contents_by_expiry ON cached_contents (expire_time);
    CREATE INDEX cached_contents_by_owner ON cached_contents (owner, parent, create_time, name);
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        hash BYTEA NOT NULL UNIQUE,
        models TEXT NOT NULL,
        requests_per_minute BIGINT,
        tokens_per_minute BIGINT,
        concurrent_requests BIGINT,
        create_time DOUBLE PRECISION NOT NULL,
        expire_time DOUBLE PRECISION,
        revoke_time DOUBLE PRECISION
    );
    CREATE TABLE usage (
        key_name TEXT NOT NULL,
        model TEXT NOT NULL,
        minute BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        prompt_tokens BIGINT NOT NULL,
        output_tokens BIGINT NOT NULL,
        PRIMARY KEY (key_name, model, minute)
    );
    -- Requests and tokens per key and clock minute, counted by every replica.
    CREATE TABLE quota_minutes (
        key_name TEXT NOT NULL,
        minute BIGINT NOT NULL,
        requests BIGINT NOT NULL,
        tokens BIGINT NOT NULL,
        PRIMARY KEY (key_name, minute)
    );
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BYTEA NOT NULL
    );
    """,
)


class _Adapted:
    """psycopg's connection behind sqlite3's calls: `?` placeholders become `%s`."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._connection = connection

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        return self._connection.execute(_placeholders(sql), parameters)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any:
        cursor = self._connection.cursor()
        cursor.executemany(_placeholders(sql), list(parameters))
        return cursor


def _placeholders(sql: str) -> str:
    assert "%" not in sql, "the stores' SQL holds no % (psycopg's placeholder character)"
    return sql.replace("?", "%s")


class PostgresDatabase:
    shared = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[Any] | None = None

    def open(self) -> None:
        connection = self._connect()
        try:
            self._migrate(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, connect_timeout=10, autocommit=True)
        except psycopg.Error as error:  # its text names host and database, never the password
            raise RuntimeError(f"could not connect to PostgreSQL (database_url): {error}") from None

    def _migrate(self, connection: psycopg.Connection[Any]) -> None:
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = connection.execute("SELECT version FROM schema_version").fetchone()
            version = 0 if row is None else int(row[0])
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the database has schema version {version}, newer than this openvertex knows "
                    f"({len(MIGRATIONS)}); upgrade openvertex"
                )
            for script in MIGRATIONS[version:]:
                connection.execute(script)  # our own DDL, not user input
            if row is None:
                connection.execute("INSERT INTO schema_version VALUES (%s)", (len(MIGRATIONS),))
            else:
                connection.execute("UPDATE schema_version SET version = %s", (len(MIGRATIONS),))

    def call(self, work: Callable[[Connection], T]) -> T:
        with self._lock:
            connection = self._connection
            if connection is None:
                raise RuntimeError("the database is not open")
            if connection.broken or connection.closed:  # the server restarted, or the network dropped
                connection = self._connection = self._connect()
            with connection.transaction():
                return work(_Adapted(connection))

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.to_thread(self.call, work)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
