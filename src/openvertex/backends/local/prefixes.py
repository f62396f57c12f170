"""KV snapshots of cached prompt prefixes (snapshots.py): written through to disk (up to one byte
budget) and kept in memory (up to another), least recently used first out of each; checked when
read back, and swept of what no context cache uses.

Snapshots are keyed by what they depend on, so one written before a restart is found again
after it, and two caches of one owner with the same prefix share one. What the backend's KV
directory holds:

    <key>.kv                  a snapshot (its format: snapshots.py)
    names/<sha256(name)>.json which snapshot a context cache uses: {"name", "key"}
    model-digests.json        the model files' content digests (digests.py)
    .<file>.<pid>.<hex>       a file being written (then renamed over its target), or left by a crash

Read back, a snapshot file that is damaged, cut short, of another key, or computed by another
model or layout is removed and reads as missing, so the caller builds the snapshot again.

The sweep, at start and on schedule on every replica (each over its own directory), removes
scratch files nobody writes any more, the records of caches that no longer exist (the database
says which still do: another replica may have deleted them, or expired them), and the snapshots
that no remaining record uses or that another model (or layout) computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from openvertex.backends.local.snapshots import (
    HEADER_SIZE,
    ModelIdentity,
    Snapshot,
    SnapshotFile,
    UnusableSnapshot,
    computed_by,
    snapshot_key,
)

log = logging.getLogger(__name__)

_SUFFIX = ".kv"
_NAMES = "names"
# A record or snapshot this young is kept whatever the database says: a cache being made has
# no row until its snapshot is built.
GRACE_S = 60.0
SCRATCH_IDLE_S = 60.0  # a scratch file nobody wrote to for this long was left by a crash
_SCRATCH = re.compile(r"\.(.+)\.(\d+)\.[0-9a-f]{8}")


class PrefixStore:
    """Thread-safe: snapshots are written by the engine's callers and read while planning.
    `identify` gives the model's identity, asked once at the first need (it hashes the model)."""

    def __init__(
        self, directory: Path | None, identify: Callable[[], ModelIdentity], *, memory_bytes: int, disk_bytes: int
    ) -> None:
        self._directory = directory
        self._identify = identify
        self._identity: ModelIdentity | None = None
        self._identity_lock = threading.Lock()
        self._memory_bytes = memory_bytes
        self._disk_bytes = disk_bytes
        self._memory: OrderedDict[str, Snapshot] = OrderedDict()  # least recently used first
        self._in_memory = 0
        # Snapshots read from disk that some job still holds: read once, however many wait on them.
        self._loaded: weakref.WeakValueDictionary[str, Snapshot] = weakref.WeakValueDictionary()
        self._names: dict[str, _Record] = {}  # context cache → the snapshot it uses
        self._lock = threading.Lock()
        self._disk_lock = threading.Lock()  # one writer at a time keeps the disk budget
        # Bytes of snapshots on disk, as of a count of this store's changes to them: scanned again
        # only once it wrote or removed a file since.
        self._disk_changes = 0
        self._disk_scan: tuple[int, int] | None = None
        if directory is not None:
            (directory / _NAMES).mkdir(parents=True, exist_ok=True)
            self._names = _read_records(directory / _NAMES)

    def identity(self) -> ModelIdentity:
        with self._identity_lock:
            if self._identity is None:
                self._identity = self._identify()
            return self._identity

    def key(self, owner: str | None, tokens: Iterable[int]) -> str:
        return snapshot_key(self.identity(), owner, tuple(tokens))

    def memory_used(self) -> int:
        return self._in_memory

    def disk_used(self) -> int:
        """Bytes of the snapshot files: cheap to poll (the folder is read again only after a change)."""
        if self._directory is None:
            return 0
        changes = self._disk_changes  # a change during the scan leaves it stale: the next call scans again
        if self._disk_scan is None or self._disk_scan[0] != changes:
            self._disk_scan = (changes, _bytes_of(self._directory.glob(f"*{_SUFFIX}")))
        return self._disk_scan[1]

    def get(self, key: str) -> Snapshot | None:
        """The snapshot, from memory or its checked file; None where it is missing or its file
        failed the check (then the file is gone, and the caller builds the snapshot again)."""
        with self._lock:
            snapshot = self._memory.get(key)
            if snapshot is not None:
                self._memory.move_to_end(key)
            else:
                snapshot = self._loaded.get(key)
        if snapshot is not None:
            self._touch(key)  # used: the last to leave the disk too
            return snapshot
        snapshot = self._read(key)
        if snapshot is not None:
            with self._lock:
                self._loaded[key] = snapshot
            self._remember(key, snapshot)
        return snapshot

    def put(self, key: str, snapshot: Snapshot) -> None:
        """Written through to disk (so it survives a restart) and kept in memory while the budget allows."""
        path = self._path(key)
        if path is not None:
            self._write(path, key, snapshot)
        self._remember(key, snapshot)

    def _remember(self, key: str, snapshot: Snapshot) -> None:
        if snapshot.size > self._memory_bytes:
            return  # it would push out everything else, then itself
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return
            self._memory[key] = snapshot
            self._in_memory += snapshot.size
            while self._in_memory > self._memory_bytes and self._memory:
                _, old = self._memory.popitem(last=False)
                self._in_memory -= old.size

    def discard(self, key: str) -> None:
        """Forget a snapshot everywhere."""
        with self._lock:
            snapshot = self._memory.pop(key, None)
            if snapshot is not None:
                self._in_memory -= snapshot.size
            self._loaded.pop(key, None)
        path = self._path(key)
        if path is not None:
            with self._disk_lock:  # every change is counted under it: none is lost
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._disk_changes += 1

    # ------------------------------------------------------------------ which cache uses which

    def key_of(self, name: str) -> str | None:
        """The snapshot the context cache `name` uses, as last noted (on this replica)."""
        with self._lock:
            record = self._names.get(name)
        return record.key if record is not None else None

    def names(self) -> list[str]:
        with self._lock:
            return list(self._names)

    def refer(self, name: str, key: str) -> None:
        """Note that the context cache `name` uses the snapshot `key`, on disk too: the sweep keeps
        what the caches that exist use, after a restart as well."""
        with self._lock:
            known = self._names.get(name)
            self._names[name] = _Record(key, time.time())  # young again: see GRACE_S
        if self._directory is not None and (known is None or known.key != key):
            record = json.dumps({"name": name, "key": key}).encode()
            with self._disk_lock:
                _replace(self._directory / _NAMES / _record_file(name), [record])

    def forget(self, name: str) -> None:
        """The context cache `name` is gone: its record, and its snapshot unless another cache uses it."""
        with self._lock:
            record = self._names.pop(name, None)
            shared = record is not None and any(other.key == record.key for other in self._names.values())
        if self._directory is not None:
            with contextlib.suppress(FileNotFoundError):
                (self._directory / _NAMES / _record_file(name)).unlink()
        if record is not None and not shared:
            self.discard(record.key)

    def sweep(self, live: Collection[str], *, busy: Collection[str] = ()) -> int:
        """Keep what the context caches in `live` use (and the snapshots in `busy`, being built);
        let go of the rest, in memory and on disk, with scratch files nobody writes any more.
        Returns the files removed."""
        now = time.time()
        with self._lock:
            gone = [
                name
                for name, record in self._names.items()
                if name not in live and now - record.since > GRACE_S and record.key not in busy
            ]
            for name in gone:
                del self._names[name]
            used = {record.key for record in self._names.values()} | set(busy)
            for key in [key for key in self._memory if key not in used]:
                self._in_memory -= self._memory.pop(key).size
        if self._directory is None:
            return 0
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                (self._directory / _NAMES / _record_file(name)).unlink()
        with self._disk_lock:  # no write of this process under way: its scratch files are done
            removed = _sweep_scratch(self._directory, now) + _sweep_scratch(self._directory / _NAMES, now)
            removed += self._sweep_snapshots(used, now)
            self._disk_changes += 1
            return removed

    def _sweep_snapshots(self, used: set[str], now: float) -> int:
        """Remove the snapshots nothing uses (but those just written) and those of another model."""
        assert self._directory is not None
        identity = self.identity()
        removed = 0
        for path in self._directory.glob(f"*{_SUFFIX}"):
            key = path.name.removesuffix(_SUFFIX)
            try:
                with path.open("rb") as file:
                    header = file.read(HEADER_SIZE)
                    young = now - os.fstat(file.fileno()).st_mtime < GRACE_S
            except FileNotFoundError:
                continue
            if (key in used or young) and computed_by(header, identity):
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        return removed

    # ------------------------------------------------------------------ disk

    def _path(self, key: str) -> Path | None:
        return self._directory / f"{key}{_SUFFIX}" if self._directory is not None else None

    def _touch(self, key: str) -> None:
        path = self._path(key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    def _write(self, path: Path, key: str, snapshot: Snapshot) -> None:
        """Replace the file (a damaged one included) whole: readers see all of it or none."""
        identity = self.identity()
        pieces = SnapshotFile(key, identity.digests(), snapshot).pieces()  # hashed outside the lock
        size = sum(len(piece) for piece in pieces)
        if size > self._disk_bytes:
            return
        with self._disk_lock:
            self._make_room(size, keep=path)
            _replace(path, pieces)
            self._disk_changes += 1

    def _read(self, key: str) -> Snapshot | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            with path.open("rb") as file:
                read = _identity(os.fstat(file.fileno()))
                data = file.read()
        except FileNotFoundError:
            return None
        try:
            snapshot = self._checked(SnapshotFile.parse(data), key)
        except UnusableSnapshot as reason:
            log.warning("removed the KV snapshot %s: %s; it is built again", path.name, reason)
            with self._disk_lock, contextlib.suppress(FileNotFoundError):
                if _identity(path.stat()) == read:  # not a good one a writer has put in its place since
                    path.unlink()
                    self._disk_changes += 1
            return None
        self._touch(key)
        return snapshot

    def _checked(self, found: SnapshotFile, key: str) -> Snapshot:
        identity = self.identity()
        if found.key != key:
            raise UnusableSnapshot("it holds the snapshot of another key")
        model, projector, layout = identity.digests()
        if found.digests[:2] != (model, projector):
            raise UnusableSnapshot("another model computed it")
        if found.digests[2] != layout:
            raise UnusableSnapshot(
                "it was computed in another layout (llama.cpp, slots, context size, attention or KV cache)"
            )
        return found.snapshot

    def _make_room(self, incoming: int, *, keep: Path) -> None:
        """Delete the least recently used files until `incoming` bytes fit the disk budget (the
        file about to be replaced does not count)."""
        assert self._directory is not None
        files = []
        for path in self._directory.glob(f"*{_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                if path != keep:
                    files.append((stat.st_mtime, stat.st_size, path))
        used = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if used + incoming <= self._disk_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            used -= size


@dataclass(frozen=True, slots=True)
class _Record:
    key: str
    since: float  # when it was noted (time.time())


def _record_file(name: str) -> str:
    return f"{hashlib.sha256(name.encode()).hexdigest()}.json"


def _read_records(folder: Path) -> dict[str, _Record]:
    """The records kept on disk; a malformed one is removed (its cache notes it again at its next use)."""
    records: dict[str, _Record] = {}
    for path in folder.glob("*.json"):
        try:
            found = json.loads(path.read_bytes())
            name, key = found["name"], found["key"]
            if not (isinstance(name, str) and isinstance(key, str) and _record_file(name) == path.name):
                raise ValueError("a record of another name")
            records[name] = _Record(key, path.stat().st_mtime)
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("removed a malformed record of a context cache's snapshot: %s", path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return records


def _bytes_of(paths: Iterable[Path]) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def _replace(path: Path, pieces: Iterable[bytes]) -> None:
    """Write a scratch file and rename it over `path`: readers see all of it or none of it."""
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        with scratch.open("wb") as file:
            for piece in pieces:
                file.write(piece)
        scratch.replace(path)
    except OSError:
        log.exception("could not write %s", path)
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()


def _sweep_scratch(folder: Path, now: float) -> int:
    """Remove the scratch files nobody writes any more: their process is gone, or they were left
    untouched for SCRATCH_IDLE_S (the same process id after a restart, in a container say)."""
    removed = 0
    for path in folder.iterdir():
        found = _SCRATCH.fullmatch(path.name)
        if found is None:
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - path.stat().st_mtime > SCRATCH_IDLE_S or not _runs(int(found[2])):
                path.unlink()
                removed += 1
    return removed


def _runs(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # no signal sent: only whether such a process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    """Which file a path held: an inode number alone may be reused by the next file written."""
    return stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size
