"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a data directory
in a scratch folder, listening on a Unix socket only (no TCP port at all), stopped at the end.
PostgreSQL refuses to run as root: as root, it runs as the `postgres` user the package made."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg


def binaries() -> Path | None:
    """The directory of initdb and pg_ctl, or None where PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_owner(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yields the libpq URL of its `postgres` database (a superuser, trusted)."""
    bindir = binaries()
    assert bindir is not None
    root = Path(tempfile.mkdtemp(prefix="openvertex-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    try:
        subprocess.run(
            _as_owner([str(bindir / "initdb"), "-D", str(data), "-U", "openvertex", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        options = f"-k {sockets} -c listen_addresses='' -c fsync=off"
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", str(root / "log"), "start"]),
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql:///postgres?host={sockets}&user=openvertex"
        finally:
            subprocess.run(
                _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                check=False,
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str, name: str) -> str:
    """A new, empty database on the server; its URL."""
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')  # type: ignore[arg-type]  # a test's own name
        connection.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    return server_url.replace("/postgres?", f"/{name}?")
