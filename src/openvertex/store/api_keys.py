"""api_keys rows: each issued key's name, the hash of the key, what it may use and its limits."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from openvertex.store.database import Connection, Database


@dataclass(frozen=True, slots=True)
class ApiKeyRow:
    name: str
    hash: bytes
    models: tuple[str, ...]  # globs; empty: every model
    requests_per_minute: int | None
    tokens_per_minute: int | None
    concurrent_requests: int | None
    create_time: float
    expire_time: float | None
    revoke_time: float | None

    def status(self, now: float) -> Literal["active", "expired", "revoked"]:
        if self.revoke_time is not None:
            return "revoked"
        return "expired" if self.expire_time is not None and self.expire_time <= now else "active"


_COLUMNS = (
    "name, hash, models, requests_per_minute, tokens_per_minute, concurrent_requests, "
    "create_time, expire_time, revoke_time"
)


def _row(values: tuple[Any, ...]) -> ApiKeyRow:
    name, digest, models, *rest = values
    return ApiKeyRow(name, bytes(digest), tuple(json.loads(models)), *rest)


class ApiKeyStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def insert(self, row: ApiKeyRow) -> bool:
        """False: a key of that name exists (revoked ones too: names are not reused)."""

        def work(db: Connection) -> bool:
            inserted = db.execute(
                f"INSERT INTO api_keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (
                    row.name,
                    row.hash,
                    json.dumps(list(row.models)),
                    row.requests_per_minute,
                    row.tokens_per_minute,
                    row.concurrent_requests,
                    row.create_time,
                    row.expire_time,
                    row.revoke_time,
                ),
            )
            return bool(inserted.rowcount == 1)

        return self._db.call(work)

    def all(self) -> list[ApiKeyRow]:
        def work(db: Connection) -> list[ApiKeyRow]:
            return [_row(r) for r in db.execute(f"SELECT {_COLUMNS} FROM api_keys ORDER BY create_time, name")]

        return self._db.call(work)

    def revoke(self, name: str, *, now: float) -> bool:
        """False: no such key in use."""

        def work(db: Connection) -> bool:
            revoked = db.execute(
                "UPDATE api_keys SET revoke_time = ? WHERE name = ? AND revoke_time IS NULL", (now, name)
            )
            return bool(revoked.rowcount == 1)

        return self._db.call(work)
