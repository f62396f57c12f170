"""KV snapshots of cached prompt prefixes: written through to disk (up to one byte budget) and
kept in memory (up to another), least recently used first out of each.

A snapshot is one sequence's KV state as llama.cpp serialises it, with the tokens it holds. It
is keyed by what it depends on: the model file and the tokens. So a snapshot written before a
restart is found again after it, and two caches with the same prefix share one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import struct
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_MAGIC = b"OVKV2\n"
_HEADER = len(_MAGIC) + 4  # then the token count's int64s (an image's placeholders need them), then the state
_SUFFIX = ".kv"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Snapshot:
    tokens: tuple[int, ...]
    state: bytes  # llama_state_seq_get_data of the sequence that holds exactly `tokens`

    @property
    def size(self) -> int:
        return len(self.state) + 8 * len(self.tokens)


def snapshot_key(model_identity: str, owner: str | None, tokens: tuple[int, ...]) -> str:
    """`owner`: the key whose cache it is. Another key's cache of the same tokens gets a snapshot
    of its own, so making a cache never tells one key (by how long it takes) what another's hold."""
    digest = hashlib.sha256(model_identity.encode() + b"\0" + (owner or "").encode() + b"\0")
    digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return digest.hexdigest()


class PrefixStore:
    """Thread-safe: snapshots are written by the engine's callers and read while planning."""

    def __init__(self, directory: Path | None, *, memory_bytes: int, disk_bytes: int) -> None:
        self._directory = directory
        self._memory_bytes = memory_bytes
        self._disk_bytes = disk_bytes
        self._memory: OrderedDict[str, Snapshot] = OrderedDict()  # least recently used first
        self._in_memory = 0
        # Snapshots read from disk that some job still holds: read once, however many wait on them.
        self._loaded: weakref.WeakValueDictionary[str, Snapshot] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        self._disk_lock = threading.Lock()  # one writer at a time keeps the disk budget
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def memory_used(self) -> int:
        return self._in_memory

    def has(self, key: str) -> bool:
        with self._lock:
            if key in self._memory or key in self._loaded:
                return True
        path = self._path(key)
        return path is not None and path.is_file()

    def get(self, key: str) -> Snapshot | None:
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
            self._write(path, snapshot)
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
        """Forget a snapshot everywhere (its cache was deleted or expired)."""
        with self._lock:
            snapshot = self._memory.pop(key, None)
            if snapshot is not None:
                self._in_memory -= snapshot.size
            self._loaded.pop(key, None)
        path = self._path(key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # ------------------------------------------------------------------ disk

    def _path(self, key: str) -> Path | None:
        return self._directory / f"{key}{_SUFFIX}" if self._directory is not None else None

    def _touch(self, key: str) -> None:
        path = self._path(key)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.utime(path)

    def _write(self, path: Path, snapshot: Snapshot) -> None:
        """Replace the file (a malformed one included) whole: readers see all of it or none."""
        size = _HEADER + snapshot.size
        if size > self._disk_bytes:
            return
        with self._disk_lock:
            self._make_room(size, keep=path)
            scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            try:
                with scratch.open("wb") as file:
                    file.write(_MAGIC + struct.pack("<I", len(snapshot.tokens)))
                    file.write(np.asarray(snapshot.tokens, dtype=np.int64).tobytes())
                    file.write(snapshot.state)
                scratch.replace(path)
            except OSError:
                log.exception("could not write a KV snapshot to %s", path)
                with contextlib.suppress(FileNotFoundError):
                    scratch.unlink()

    def _read(self, key: str) -> Snapshot | None:
        path = self._path(key)
        if path is None:
            return None
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        self._touch(key)
        if len(data) < _HEADER or not data.startswith(_MAGIC):
            log.warning("ignoring a malformed KV snapshot: %s", path)
            return None
        (count,) = struct.unpack("<I", data[len(_MAGIC) : _HEADER])
        end = _HEADER + 8 * count
        if len(data) <= end:  # cut short: no state after the tokens
            log.warning("ignoring a truncated KV snapshot: %s", path)
            return None
        tokens = tuple(int(t) for t in np.frombuffer(data[_HEADER:end], dtype=np.int64))
        return Snapshot(tokens, data[end:])

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
