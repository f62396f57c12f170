"""usage rows: requests and tokens per key, model and minute, for `openvertex usage` and the admin API."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from openvertex.store.database import Connection, Database


@dataclass(frozen=True, slots=True)
class UsageRow:
    key_name: str
    model: str
    minute: int
    requests: int
    prompt_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class UsagePoint:
    """One key's usage in one step of a series, all models together."""

    key_name: str
    minute: int  # the step's first minute
    requests: int
    prompt_tokens: int
    output_tokens: int


class UsageStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def add(self, rows: Iterable[UsageRow]) -> None:
        """Add to the counts (rows of the same key, model and minute sum up)."""

        def work(db: Connection) -> None:
            db.executemany(
                "INSERT INTO usage (key_name, model, minute, requests, prompt_tokens, output_tokens) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_name, model, minute) DO UPDATE SET "
                "requests = usage.requests + excluded.requests, "
                "prompt_tokens = usage.prompt_tokens + excluded.prompt_tokens, "
                "output_tokens = usage.output_tokens + excluded.output_tokens",
                [(r.key_name, r.model, r.minute, r.requests, r.prompt_tokens, r.output_tokens) for r in rows],
            )

        await self._db.run(work)

    def totals(self, *, since_minute: int) -> list[UsageRow]:
        """Per key and model since a minute: `minute` is the first one with usage."""

        def work(db: Connection) -> list[UsageRow]:
            rows = db.execute(
                "SELECT key_name, model, MIN(minute), CAST(SUM(requests) AS BIGINT), "
                "CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(output_tokens) AS BIGINT) "
                "FROM usage WHERE minute >= ? GROUP BY key_name, model ORDER BY key_name, model",
                (since_minute,),
            )
            return [UsageRow(*row) for row in rows]

        return self._db.call(work)

    def series(self, *, since_minute: int, step_minutes: int) -> list[UsagePoint]:
        """Per key and step of `step_minutes` (steps counted from the epoch) since a minute: only
        the steps with usage, by key, oldest first."""

        def work(db: Connection) -> list[UsagePoint]:
            # The step is cast so PostgreSQL divides integers, as SQLite does.
            rows = db.execute(
                "SELECT key_name, (minute / CAST(? AS INTEGER)) * CAST(? AS INTEGER) AS step_minute, "
                "CAST(SUM(requests) AS BIGINT), CAST(SUM(prompt_tokens) AS BIGINT), "
                "CAST(SUM(output_tokens) AS BIGINT) "
                "FROM usage WHERE minute >= ? GROUP BY key_name, step_minute ORDER BY key_name, step_minute",
                (step_minutes, step_minutes, since_minute),
            )
            return [UsagePoint(*row) for row in rows]

        return self._db.call(work)
