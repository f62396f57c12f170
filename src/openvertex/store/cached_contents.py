"""cachedContents rows: the metadata and input of each context cache (the KV lives with the backend)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from openvertex.store.database import Connection, Database


@dataclass(frozen=True, slots=True)
class CachedContentRow:
    name: str
    parent: str
    model: str
    display_name: str | None
    body: str
    token_count: int
    create_time: float
    update_time: float
    expire_time: float
    owner: str | None = None  # the creating key's name


_COLUMNS = "name, parent, model, display_name, body, token_count, create_time, update_time, expire_time, owner"
_NAMES_AT_ONCE = 500  # names in one IN (…): under SQLite's oldest limit of 999 parameters


def _row(values: tuple[object, ...]) -> CachedContentRow:
    return CachedContentRow(*values)  # type: ignore[arg-type]


class CachedContentStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(self, row: CachedContentRow) -> None:
        def work(db: Connection) -> None:
            db.execute(
                f"INSERT INTO cached_contents ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.name,
                    row.parent,
                    row.model,
                    row.display_name,
                    row.body,
                    row.token_count,
                    row.create_time,
                    row.update_time,
                    row.expire_time,
                    row.owner,
                ),
            )

        await self._db.run(work)

    async def get(self, name: str, *, owner: str | None, now: float) -> CachedContentRow | None:
        """The cache, unless it is unknown, another key's or expired (an expired one can be neither
        used nor updated)."""

        def work(db: Connection) -> CachedContentRow | None:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM cached_contents "
                "WHERE name = ? AND owner IS NOT DISTINCT FROM ? AND expire_time > ?",
                (name, owner, now),
            ).fetchone()
            return _row(found) if found else None

        return await self._db.run(work)

    async def page(
        self, parent: str, *, owner: str | None, now: float, after: tuple[float, str] | None, size: int
    ) -> list[CachedContentRow]:
        """Up to `size` live caches of `parent` and `owner`, oldest first, after the (create_time, name) cursor."""

        def work(db: Connection) -> list[CachedContentRow]:
            start_time, start_name = after or (-1.0, "")
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM cached_contents WHERE owner IS NOT DISTINCT FROM ? AND parent = ? "
                "AND expire_time > ? AND (create_time, name) > (?, ?) ORDER BY create_time, name LIMIT ?",
                (owner, parent, now, start_time, start_name, size),
            ).fetchall()
            return [_row(r) for r in rows]

        return await self._db.run(work)

    async def set_expiry(
        self, name: str, *, owner: str | None, now: float, expire_time: float
    ) -> CachedContentRow | None:
        def work(db: Connection) -> CachedContentRow | None:
            updated = db.execute(
                "UPDATE cached_contents SET expire_time = ?, update_time = ? "
                "WHERE name = ? AND owner IS NOT DISTINCT FROM ? AND expire_time > ?",
                (expire_time, now, name, owner, now),
            )
            if updated.rowcount == 0:
                return None
            return _row(db.execute(f"SELECT {_COLUMNS} FROM cached_contents WHERE name = ?", (name,)).fetchone())

        return await self._db.run(work)

    async def delete(self, name: str, *, owner: str | None, now: float) -> CachedContentRow | None:
        """Remove a live cache; the row it was, for the backend to let go of its KV."""

        def work(db: Connection) -> CachedContentRow | None:
            found = db.execute(
                f"SELECT {_COLUMNS} FROM cached_contents "
                "WHERE name = ? AND owner IS NOT DISTINCT FROM ? AND expire_time > ?",
                (name, owner, now),
            ).fetchone()
            if found is not None:
                db.execute("DELETE FROM cached_contents WHERE name = ?", (name,))
            return _row(found) if found else None

        return await self._db.run(work)

    async def expired(self, *, now: float, limit: int = 100) -> list[CachedContentRow]:
        """Up to `limit` caches that expired, still there (their KV goes first, then `remove_expired`)."""

        def work(db: Connection) -> list[CachedContentRow]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM cached_contents WHERE expire_time <= ? LIMIT ?", (now, limit)
            ).fetchall()
            return [_row(row) for row in rows]

        return await self._db.run(work)

    async def remove_expired(self, names: Collection[str], *, now: float) -> int:
        """Remove those of the caches named that expired (an update may not revive them: set_expiry
        touches only live ones); how many were removed here (another replica may have been first)."""

        def work(db: Connection) -> int:
            removed = 0
            for batch in _batches(names):
                marks = ", ".join("?" * len(batch))
                removed += db.execute(
                    f"DELETE FROM cached_contents WHERE expire_time <= ? AND name IN ({marks})", (now, *batch)
                ).rowcount
            return removed

        return await self._db.run(work)

    async def live(self, names: Collection[str], *, now: float) -> set[str]:
        """Which of the caches named exist and have not expired, whoever owns them."""

        def work(db: Connection) -> set[str]:
            found: set[str] = set()
            for batch in _batches(names):
                marks = ", ".join("?" * len(batch))
                rows = db.execute(
                    f"SELECT name FROM cached_contents WHERE expire_time > ? AND name IN ({marks})", (now, *batch)
                ).fetchall()
                found.update(row[0] for row in rows)
            return found

        return await self._db.run(work)

    async def count(self, *, now: float) -> int:
        def work(db: Connection) -> int:
            return int(db.execute("SELECT COUNT(*) FROM cached_contents WHERE expire_time > ?", (now,)).fetchone()[0])

        return await self._db.run(work)


def _batches(names: Collection[str]) -> list[list[str]]:
    ordered = sorted(names)
    return [ordered[i : i + _NAMES_AT_ONCE] for i in range(0, len(ordered), _NAMES_AT_ONCE)]
