"""quota_minutes rows (PostgreSQL): requests and tokens per key and clock minute, counted by every
replica, so a key's per-minute quotas hold across them."""

from __future__ import annotations

from collections.abc import Iterable

from openvertex.store.database import Connection, Database

KEPT_MINUTES = 60  # older counts are removed as the tokens are written


class QuotaCountStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def count_request(self, key_name: str, minute: int) -> tuple[int, int]:
        """Count one more request; the minute's requests (this one included) and tokens so far."""

        def work(db: Connection) -> tuple[int, int]:
            requests, tokens = db.execute(
                "INSERT INTO quota_minutes (key_name, minute, requests, tokens) VALUES (?, ?, 1, 0) "
                "ON CONFLICT (key_name, minute) DO UPDATE SET requests = quota_minutes.requests + 1 "
                "RETURNING requests, tokens",
                (key_name, minute),
            ).fetchone()
            return int(requests), int(tokens)

        return await self._db.run(work)

    async def add_tokens(self, counts: Iterable[tuple[str, int, int]], *, now_minute: int) -> None:
        """Add (key name, minute, tokens) to the counts."""
        rows = list(counts)

        def work(db: Connection) -> None:
            if rows:
                db.executemany(
                    "INSERT INTO quota_minutes (key_name, minute, requests, tokens) VALUES (?, ?, 0, ?) "
                    "ON CONFLICT (key_name, minute) DO UPDATE SET tokens = quota_minutes.tokens + excluded.tokens",
                    rows,
                )
            db.execute("DELETE FROM quota_minutes WHERE minute < ?", (now_minute - KEPT_MINUTES,))

        await self._db.run(work)
