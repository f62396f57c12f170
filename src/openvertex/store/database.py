"""The shared state's database: by default one SQLite file in state_dir (WAL); with
`database_url`, PostgreSQL (store/postgres.py), so replicas behind a load balancer share it.
Schema migrations are applied at start.

The stores write SQL that both run (`?` placeholders; ON CONFLICT; IS NOT DISTINCT FROM) and get
a `Connection` inside a transaction. Calls are short and run on the database's own threads
(`run`), so neither the event loop nor the threads the rest of the request path needs ever wait on
the database. A database that cannot serve a call in time (SQLite: locked by another process past
its busy timeout; PostgreSQL: see postgres.py) makes it a 503 UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from openvertex.errors import UnavailableError

if TYPE_CHECKING:
    from openvertex.settings import Settings

T = TypeVar("T")


class Connection(Protocol):
    """What a store's work gets: sqlite3's connection, or PostgreSQL's behind the same calls."""

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


class Database(Protocol):
    """Opened in the app's lifespan (`open`), closed there (`close`)."""

    shared: bool  # replicas share it (PostgreSQL): per-minute quotas are counted in it

    def open(self) -> None: ...

    def close(self) -> None: ...

    def call(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a transaction (committed unless it raises)."""
        ...

    async def run(self, work: Callable[[Connection], T]) -> T:
        """`call`, on the database's own threads."""
        ...


DATABASE_FILE = "openvertex.db"

# Each entry moves the schema one version up; applied in order, each in its own transaction,
# and never edited once released (a change is a new entry).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE cached_contents (
        name TEXT PRIMARY KEY,          -- full resource name: [projects/P/locations/L/]cachedContents/ID
        parent TEXT NOT NULL,           -- projects/P/locations/L, or '' for the Gemini API's root
        model TEXT NOT NULL,            -- the model's resource name, as the client gave it
        display_name TEXT,
        body TEXT NOT NULL,             -- contents, systemInstruction, tools, toolConfig as JSON
        token_count INTEGER NOT NULL,
        create_time REAL NOT NULL,      -- seconds since the epoch
        update_time REAL NOT NULL,
        expire_time REAL NOT NULL
    );
    CREATE INDEX cached_contents_by_parent ON cached_contents (parent, create_time, name);
    CREATE INDEX cached_contents_by_expiry ON cached_contents (expire_time);
    """,
    """
    CREATE TABLE api_keys (
        name TEXT PRIMARY KEY,
        hash BLOB NOT NULL UNIQUE,      -- SHA-256 of the key; the key itself is never stored
        models TEXT NOT NULL,           -- JSON list of model globs it may use; [] = every model
        requests_per_minute INTEGER,    -- NULL: no limit
        tokens_per_minute INTEGER,
        concurrent_requests INTEGER,
        create_time REAL NOT NULL,      -- seconds since the epoch
        expire_time REAL,               -- NULL: never
        revoke_time REAL                -- NULL: in use
    );
    CREATE TABLE usage (
        key_name TEXT NOT NULL,         -- a stored key's name, or a configured key's fingerprint
        model TEXT NOT NULL,
        minute INTEGER NOT NULL,        -- minutes since the epoch
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        PRIMARY KEY (key_name, model, minute)
    );
    """,
    """
    -- The API key (its name) that created a cache: a key sees only its own. NULL: no key (an open server).
    ALTER TABLE cached_contents ADD COLUMN owner TEXT;
    CREATE INDEX cached_contents_by_owner ON cached_contents (owner, parent, create_time, name);
    """,
)


class SqliteDatabase:
    shared = False

    def __init__(self, path: Path, *, busy_timeout_s: float = 5.0) -> None:
        """`busy_timeout_s`: how long a call waits for another process's write (`openvertex keys`)."""
        self.path = path
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._threads: ThreadPoolExecutor | None = None

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout_s
        )
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._migrate(connection)
        except BaseException:
            connection.close()
            raise
        self._connection = connection
        self._threads = ThreadPoolExecutor(1, thread_name_prefix="openvertex database")  # one connection

    def _migrate(self, connection: sqlite3.Connection) -> None:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} has schema version {version}, newer than this openvertex knows "
                f"({len(MIGRATIONS)}); upgrade openvertex or use another state_dir"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript commits first; the migration and its version bump go in one transaction.
            connection.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    def call(self, work: Callable[[Connection], T]) -> T:
        """Run `work` with the connection, in a transaction (committed unless it raises)."""
        with self._lock:
            connection = self._connection
            if connection is None:
                raise RuntimeError("the database is not open")
            try:
                connection.execute("BEGIN")
                try:
                    result = work(connection)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as error:
                if error.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise UnavailableError(
                        f"The server's database stayed locked for {self._busy_timeout_s:g} s."
                    ) from None
                raise
            return result

    async def run(self, work: Callable[[Connection], T]) -> T:
        threads = self._threads
        if threads is None:
            raise RuntimeError("the database is not open")
        return await asyncio.wrap_future(threads.submit(self.call, work))

    def close(self) -> None:
        threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def database_for(settings: Settings) -> Database:
    """PostgreSQL where `database_url` names it, else the SQLite file in state_dir."""
    if settings.database_url is not None:
        from openvertex.store.postgres import PostgresDatabase  # psycopg loads only where it is used

        return PostgresDatabase(
            settings.database_url.get_secret_value(),
            connect_timeout_s=settings.database_connect_timeout_s,
            statement_timeout_s=settings.database_timeout_s,
            pool_size=settings.database_pool_size,
        )
    return SqliteDatabase(settings.state_dir / DATABASE_FILE, busy_timeout_s=settings.database_timeout_s)
