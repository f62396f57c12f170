"""secrets rows (PostgreSQL): values every replica must share, made once by whichever asks first."""

from __future__ import annotations

import secrets

from openvertex.store.database import Connection, Database


def shared_secret(database: Database, name: str, size: int) -> bytes:
    """The secret called `name`; `size` random bytes stored on first use (a blocking call)."""

    def work(db: Connection) -> bytes:
        db.execute(
            "INSERT INTO secrets (name, value) VALUES (?, ?) ON CONFLICT DO NOTHING", (name, secrets.token_bytes(size))
        )
        return bytes(db.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()[0])

    return database.call(work)
