"""The shared state on PostgreSQL (`database_url = "postgresql://…"`): replicas behind a load
balancer then share keys, quotas, usage, context caches' metadata and the thought-signature
secret. psycopg 3 (its synchronous API: the stores' work runs on a worker thread, as with SQLite,
so both take the same code path).

Connections come from a pool (psycopg_pool), used by the database's own threads, as many as the
pool's connections: a slow or silent database holds those threads only, never the ones the rest
of the request path runs on. Each call has one deadline, `statement_timeout_s` from when it was
asked for, that covers waiting for a thread, for a connection (a new one connects within
`connect_timeout_s`) and for every answer of the server: past it the call is a 503 UNAVAILABLE.
PostgreSQL's own statement_timeout is set to the same value, but a server that accepts and never
answers enforces nothing, so the client keeps the deadline itself (`_BoundedConnection`).

Migrations are this module's own (PostgreSQL's types), tracked in `schema_version` and applied
under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import logging
import select
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from openvertex.errors import UnavailableError
from openvertex.store.database import Connection

log = logging.getLogger(__name__)

T = TypeVar("T")
RV = TypeVar("RV")

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


_this_call = threading.local()  # `deadline`: the time.monotonic() by which the thread's call must end


class _BoundedConnection(psycopg.Connection[Any]):
    """A connection whose every wait on the server ends by the deadline of the call it serves.

    psycopg consumes each exchange with the server through `wait`; bounded here, a server that
    stops answering (or a network that silently drops packets) costs a call its deadline, not a
    thread forever. A connection cut off mid-exchange cannot be read on: it is closed, and the
    pool replaces it."""

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        deadline: float | None = getattr(_this_call, "deadline", None)
        if deadline is None:  # the pool's own upkeep: connecting is bounded by connect_timeout
            return super().wait(gen, interval, timeout)
        left = max(0.0, deadline - time.monotonic())
        try:
            return super().wait(gen, interval, left if timeout is None else min(timeout, left))
        except psycopg.OperationalError:
            if time.monotonic() >= deadline and not self.closed:
                self.pgconn.finish()
            raise


def _not_closed_by_the_server(connection: psycopg.Connection[Any]) -> None:
    """The pool's check before it hands out a connection, without a round trip: an idle connection
    has nothing to read unless the server closed it (a restart, an administrator's termination);
    then it is closed and the check raises, so the pool drops it and hands out another."""
    fd = connection.fileno()
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        readable = bool(poller.poll(0))
    else:  # pragma: no cover - Windows
        readable = bool(select.select([fd], [], [], 0)[0])
    if readable:
        connection.close()
        raise psycopg.OperationalError("the server closed this idle connection")


class PostgresDatabase:
    shared = True

    def __init__(
        self, url: str, *, connect_timeout_s: int = 2, statement_timeout_s: float = 5.0, pool_size: int = 10
    ) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = statement_timeout_s
        self._pool_size = pool_size
        self._pool: ConnectionPool[_BoundedConnection] | None = None
        self._threads: ThreadPoolExecutor | None = None

    def open(self) -> None:
        connection = self._connect()
        try:
            self._migrate(connection)
        finally:
            connection.close()
        # PostgreSQL's statement_timeout goes with the connection's startup packet, so it is set
        # within connect_timeout (a SET afterwards would be one more exchange to bound).
        options = conninfo_to_dict(self._url).get("options") or ""
        options = f"{options} -c statement_timeout={max(1, round(self._timeout_s * 1000))}".strip()
        self._pool = ConnectionPool(
            self._url,
            connection_class=_BoundedConnection,
            kwargs={"autocommit": True, "connect_timeout": self._connect_timeout_s, "options": options},
            min_size=1,
            max_size=self._pool_size,
            check=_not_closed_by_the_server,
            name="openvertex",
            open=False,
        )
        self._pool.open(wait=False)  # the database answered just now; the first call waits for its connection
        self._threads = ThreadPoolExecutor(self._pool_size, thread_name_prefix="openvertex database")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, connect_timeout=self._connect_timeout_s, autocommit=True)
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
        return self._call(work, time.monotonic() + self._timeout_s)

    async def run(self, work: Callable[[Connection], T]) -> T:
        threads = self._threads
        if threads is None:
            raise RuntimeError("the database is not open")
        # The deadline runs from now: a call that waited for a thread behind slow ones has less.
        deadline = time.monotonic() + self._timeout_s
        return await asyncio.wrap_future(threads.submit(self._call, work, deadline))

    def _call(self, work: Callable[[Connection], T], deadline: float) -> T:
        pool = self._pool
        if pool is None:
            raise RuntimeError("the database is not open")
        _this_call.deadline = deadline
        try:
            with pool.connection(timeout=deadline - time.monotonic()) as connection, connection.transaction():
                return work(_Adapted(connection))
        except (PoolTimeout, psycopg.OperationalError) as error:
            raise self._unavailable(error, deadline) from None
        finally:
            _this_call.deadline = None

    def _unavailable(self, error: Exception, deadline: float) -> UnavailableError:
        log.warning("PostgreSQL (database_url): %s", error)
        if time.monotonic() >= deadline or isinstance(error, (PoolTimeout, psycopg.errors.QueryCanceled)):
            return UnavailableError(f"The server's database did not answer within {self._timeout_s:g} s.")
        return UnavailableError("The server's database cannot be reached.")

    def close(self) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self._connect_timeout_s)
