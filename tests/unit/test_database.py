"""The SQLite database: its calls run on its own thread, and a file another process keeps locked
past the busy timeout makes a call a 503, not a wait without end."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from openvertex.errors import UnavailableError
from openvertex.store.database import DATABASE_FILE, Connection, SqliteDatabase
from openvertex.store.usage import UsageRow, UsageStore


def test_a_database_locked_past_the_busy_timeout_is_a_503(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / DATABASE_FILE, busy_timeout_s=0.2)
    database.open()
    other = sqlite3.connect(tmp_path / DATABASE_FILE, isolation_level=None)  # `openvertex keys` in another process
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(UnavailableError, match=r"stayed locked for 0\.2 s"):
            asyncio.run(UsageStore(database).add([UsageRow("k", "m", 1, 1, 0, 0)]))
        other.execute("ROLLBACK")
        asyncio.run(UsageStore(database).add([UsageRow("k", "m", 1, 1, 0, 0)]))  # free again
        assert [row.requests for row in UsageStore(database).totals(since_minute=0)] == [1]
    finally:
        other.close()
        database.close()


def test_calls_run_on_the_database_thread(tmp_path: Path) -> None:
    database = SqliteDatabase(tmp_path / DATABASE_FILE)
    database.open()

    def where(_: Connection) -> str:
        return threading.current_thread().name

    try:
        assert asyncio.run(database.run(where)).startswith("openvertex database")
    finally:
        database.close()
    database.close()  # closing twice is harmless
