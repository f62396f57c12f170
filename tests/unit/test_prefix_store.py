"""KV snapshots of cached prefixes (backends/local/prefixes.py, snapshots.py): memory and disk,
each least recently used out first; the file format, and the checks a file read back must pass."""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from openvertex.backends.local.prefixes import PrefixStore
from openvertex.backends.local.snapshots import (
    NO_PROJECTOR,
    ModelIdentity,
    Snapshot,
    SnapshotFile,
    UnusableSnapshot,
    snapshot_key,
)

MAGIC = b"OVKV3\n"
HEADER = len(MAGIC) + 32 + 32 + 32 + 32 + 4 + 8 + 32  # magic, key, model, projector, layout, counts, checksum
BIG = 1 << 30
MODEL = hashlib.sha256(b"model.gguf").digest()
IDENTITY = ModelIdentity(model=MODEL, projector=NO_PROJECTOR, layout="llama.cpp 0.3|slots=2|ctx=2048")
LAYOUT = hashlib.sha256(IDENTITY.layout.encode()).digest()


def _store(
    directory: Path | None, *, identity: ModelIdentity = IDENTITY, memory_bytes: int, disk_bytes: int
) -> PrefixStore:
    return PrefixStore(directory, lambda: identity, memory_bytes=memory_bytes, disk_bytes=disk_bytes)


def _snapshot(seed: int, *, tokens: int = 4, state: int = 100) -> Snapshot:
    return Snapshot(tuple(range(seed, seed + tokens)), bytes((seed + i) % 256 for i in range(state)))


A, B, C = _snapshot(1), _snapshot(2), _snapshot(3)
SIZE = A.size  # 100 state bytes + 4 tokens * 8 bytes
FILE = HEADER + SIZE  # what one of them takes on disk


def _key(snapshot: Snapshot, identity: ModelIdentity = IDENTITY) -> str:
    return snapshot_key(identity, None, snapshot.tokens)


def _file(directory: Path, snapshot: Snapshot) -> Path:
    return directory / f"{_key(snapshot)}.kv"


def _age(directory: Path, snapshot: Snapshot, mtime: float) -> None:
    """Make a file look last used at `mtime` (the disk's LRU order is the files' mtimes)."""
    os.utime(_file(directory, snapshot), (mtime, mtime))


def _on_disk(directory: Path) -> set[str]:
    return {path.name for path in directory.glob("*.kv")}


def test_sizes() -> None:
    assert SIZE == 132
    assert Snapshot((), b"").size == 0


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert store.get(_key(A)) is None
    store.put(_key(A), A)
    got = store.get(_key(A))
    assert got == A
    assert got is not None and got.tokens == A.tokens and got.state == A.state
    assert store.memory_used() == SIZE


def test_put_writes_through_to_disk(tmp_path: Path) -> None:
    store = _store(tmp_path / "kv" / "local", memory_bytes=BIG, disk_bytes=BIG)  # the directory is made
    store.put(_key(A), A)
    data = _file(tmp_path / "kv" / "local", A).read_bytes()
    header = MAGIC + bytes.fromhex(_key(A)) + MODEL + NO_PROJECTOR + LAYOUT + struct.pack("<IQ", 4, len(A.state))
    body = struct.pack("<4q", *A.tokens) + A.state
    assert data == header + hashlib.sha256(header + body).digest() + body
    assert len(data) == FILE
    assert sorted(p.name for p in (tmp_path / "kv" / "local").iterdir()) == [f"{_key(A)}.kv", "names"]  # no scratch


def test_a_new_store_on_the_same_directory_finds_it(tmp_path: Path) -> None:
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    restarted = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert restarted.memory_used() == 0
    got = restarted.get(_key(A))
    assert got == A
    assert got is not None and got.state == A.state and got.tokens == A.tokens
    assert restarted.memory_used() == SIZE  # read back into memory
    _file(tmp_path, A).unlink()
    assert restarted.get(_key(A)) == A  # now from memory


def test_putting_the_same_snapshot_twice_counts_it_once(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(A), A)
    assert store.memory_used() == SIZE
    assert len(_on_disk(tmp_path)) == 1


def test_the_memory_budget_evicts_the_least_recently_used_but_the_disk_keeps_it(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=2 * SIZE, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    assert store.get(_key(A)) == A  # A is now the most recently used
    store.put(_key(C), C)  # B goes out of memory
    assert store.memory_used() == 2 * SIZE
    assert len(_on_disk(tmp_path)) == 3
    # Without the files only what memory holds is found: A and C, not B.
    kept_on_disk = _file(tmp_path, B).read_bytes()
    for snapshot in (A, B, C):
        _file(tmp_path, snapshot).unlink()
    assert store.get(_key(A)) == A
    assert store.get(_key(C)) == C
    assert store.get(_key(B)) is None
    # With B's file back, get() finds it on disk (and brings it back into memory).
    _file(tmp_path, B).write_bytes(kept_on_disk)
    assert store.get(_key(B)) == B
    assert store.memory_used() == 2 * SIZE


def test_a_snapshot_larger_than_the_memory_budget_lives_on_disk_only(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=SIZE - 1, disk_bytes=BIG)
    store.put(_key(A), A)
    assert store.memory_used() == 0
    assert _file(tmp_path, A).is_file()
    assert store.get(_key(A)) == A
    assert store.memory_used() == 0


def test_an_oversized_snapshot_leaves_the_others_in_memory(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=2 * SIZE, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    huge = _snapshot(9, state=3 * SIZE)
    store.put(_key(huge), huge)
    assert store.memory_used() == 2 * SIZE


def test_no_memory_budget_means_disk_only(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=0, disk_bytes=BIG)
    store.put(_key(A), A)
    assert store.memory_used() == 0
    assert store.get(_key(A)) == A
    _file(tmp_path, A).unlink()
    assert store.get(_key(A)) is None


def test_the_disk_budget_deletes_the_least_recently_used_files(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=0, disk_bytes=2 * FILE + 20)  # room for two files
    store.put(_key(A), A)
    _age(tmp_path, A, 1000)
    store.put(_key(B), B)
    _age(tmp_path, B, 2000)
    store.put(_key(C), C)  # A, the oldest, makes room
    assert not _file(tmp_path, A).exists()
    assert _file(tmp_path, B).is_file() and _file(tmp_path, C).is_file()
    assert store.get(_key(A)) is None
    assert store.get(_key(B)) == B and store.get(_key(C)) == C
    assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) <= 2 * FILE + 20


def test_reading_a_file_makes_it_recently_used(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=0, disk_bytes=2 * FILE + 20)
    store.put(_key(A), A)
    _age(tmp_path, A, 1000)
    store.put(_key(B), B)
    _age(tmp_path, B, 2000)
    assert store.get(_key(A)) == A  # read from disk: touched
    store.put(_key(C), C)
    assert _file(tmp_path, A).is_file()
    assert not _file(tmp_path, B).exists()


def test_a_snapshot_used_from_memory_is_recently_used_on_disk_too(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=2 * FILE + 20)
    store.put(_key(A), A)
    _age(tmp_path, A, 1000)
    store.put(_key(B), B)
    _age(tmp_path, B, 2000)
    assert store.get(_key(A)) == A  # a memory hit
    store.put(_key(C), C)
    assert _file(tmp_path, A).is_file()
    assert not _file(tmp_path, B).exists()


def test_the_files_never_exceed_the_disk_budget(tmp_path: Path) -> None:
    budget = 2 * FILE - 5
    store = _store(tmp_path, memory_bytes=0, disk_bytes=budget)
    store.put(_key(A), A)
    store.put(_key(B), B)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.kv")) <= budget


def test_a_snapshot_larger_than_the_disk_budget_stays_in_memory_only(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=SIZE - 1)
    store.put(_key(A), A)
    assert _on_disk(tmp_path) == set()
    assert store.get(_key(A)) == A
    assert _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None


def test_discard_removes_it_from_memory_and_disk(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    store.discard(_key(A))
    assert store.memory_used() == SIZE
    assert store.get(_key(A)) is None
    assert not _file(tmp_path, A).exists()
    assert store.get(_key(B)) == B
    store.discard(_key(A))  # twice is fine
    store.discard("unknown")
    assert _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None


def test_discard_removes_a_file_that_is_not_in_memory(tmp_path: Path) -> None:
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    restarted = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    restarted.discard(_key(A))
    assert _on_disk(tmp_path) == set()
    assert restarted.memory_used() == 0


# ---------------------------------------------------------------------------------------------- checked when read


def _damaged(tmp_path: Path, damage: bytes | None = None) -> tuple[PrefixStore, Path]:
    """A store whose snapshot A's file was written, then replaced by `damage` (if given)."""
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    path = _file(tmp_path, A)
    if damage is not None:
        path.write_bytes(damage)
    return _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG), path


def _good() -> bytes:
    return b"".join(SnapshotFile(_key(A), IDENTITY.digests(), A).pieces())


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1 :]


DAMAGES = {
    "empty": b"",
    "short": b"OVKV",
    "garbage": b"garbage that is long enough to hold a header, and a little more than that" * 3,
    "version-2": b"OVKV2\n" + struct.pack("<I", 4) + struct.pack("<4q", *A.tokens) + A.state,
    "bit-flip-in-state": _flipped(_good(), FILE - 10),
    "bit-flip-in-tokens": _flipped(_good(), HEADER + 3),
    "bit-flip-in-header": _flipped(_good(), len(MAGIC) + 40),
    "bit-flip-in-checksum": _flipped(_good(), HEADER - 1),
    "truncated-state": _good()[:-1],
    "truncated-tokens": _good()[: HEADER + 12],
    "header-only": _good()[:HEADER],
    "trailing-bytes": _good() + b"\0",
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_file_reads_as_missing_and_is_removed(tmp_path: Path, damage: bytes) -> None:
    store, path = _damaged(tmp_path, damage)
    assert store.get(_key(A)) is None
    assert not path.exists()  # not left to be read (and fail) at every use
    assert store.memory_used() == 0
    store.put(_key(A), A)  # built again: then it is used
    assert _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) == A


def test_a_good_file_reads_back_as_it_was_written(tmp_path: Path) -> None:
    store, path = _damaged(tmp_path)
    assert path.read_bytes() == _good()
    assert store.get(_key(A)) == A


def test_a_file_another_model_wrote_is_removed(tmp_path: Path) -> None:
    """The same key, a valid checksum, another model's digest in the header (a key collision, or a
    file copied in): it is not restored."""
    other = replace(IDENTITY, model=hashlib.sha256(b"another.gguf").digest())
    foreign = b"".join(SnapshotFile(_key(A), other.digests(), A).pieces())
    store, path = _damaged(tmp_path, foreign)
    assert store.get(_key(A)) is None
    assert not path.exists()


def test_a_file_of_another_projector_is_removed(tmp_path: Path) -> None:
    with_projector = replace(IDENTITY, projector=hashlib.sha256(b"mmproj.gguf").digest())
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)  # written without a projector
    assert _store(tmp_path, identity=with_projector, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None
    assert not _file(tmp_path, A).exists()


def test_a_file_of_another_layout_is_removed(tmp_path: Path) -> None:
    """A state restores only into a context of the same shape: after a restart with more slots,
    the snapshot a cache's record still names is built again."""
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    wider = replace(IDENTITY, layout="llama.cpp 0.3|slots=3|ctx=2048")
    assert _store(tmp_path, identity=wider, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None
    assert not _file(tmp_path, A).exists()


def test_a_file_renamed_to_another_key_is_removed(tmp_path: Path) -> None:
    _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    _file(tmp_path, A).rename(_file(tmp_path, B))
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert store.get(_key(B)) is None
    assert not _file(tmp_path, B).exists()


def test_the_file_format_parses_what_it_writes() -> None:
    parsed = SnapshotFile.parse(_good())
    assert parsed == SnapshotFile(_key(A), (MODEL, NO_PROJECTOR, LAYOUT), A)
    placeholders = Snapshot((1, -(2**62), -1, 2**31), b"state")  # an image's placeholders are negative int64s
    data = b"".join(SnapshotFile(_key(A), IDENTITY.digests(), placeholders).pieces())
    assert SnapshotFile.parse(data).snapshot == placeholders
    with pytest.raises(UnusableSnapshot, match="checksum"):
        SnapshotFile.parse(_flipped(_good(), FILE - 1))
    with pytest.raises(UnusableSnapshot, match="header says"):
        SnapshotFile.parse(_good()[:-1])


def test_the_model_is_identified_once(tmp_path: Path) -> None:
    calls = []

    def identify() -> ModelIdentity:
        calls.append(1)
        return IDENTITY

    store = PrefixStore(tmp_path, identify, memory_bytes=BIG, disk_bytes=BIG)
    assert calls == []  # not at construction: hashing a model takes a while
    store.put(store.key(None, A.tokens), A)
    assert store.get(store.key(None, A.tokens)) == A
    assert calls == [1]


# ---------------------------------------------------------------------------------------------- keys


def test_without_a_directory_the_store_is_memory_only(tmp_path: Path) -> None:
    store = _store(None, memory_bytes=2 * SIZE, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    assert store.get(_key(B)) == B and store.get(_key(A)) == A
    store.put(_key(C), C)  # B, the least recently used, is gone for good
    assert store.get(_key(B)) is None
    assert store.get(_key(A)) == A and store.get(_key(C)) == C
    store.discard(_key(A))
    assert store.get(_key(A)) is None
    assert store.memory_used() == SIZE
    assert list(tmp_path.iterdir()) == []


def test_snapshot_key_depends_on_the_models_content_layout_owner_and_tokens() -> None:
    key = snapshot_key(IDENTITY, None, (1, 2, 3))
    assert len(key) == 64 and int(key, 16) >= 0  # a SHA-256 hex digest: a safe file name
    assert snapshot_key(IDENTITY, None, (1, 2, 3)) == key
    others = {
        snapshot_key(replace(IDENTITY, model=hashlib.sha256(b"other").digest()), None, (1, 2, 3)),
        snapshot_key(replace(IDENTITY, projector=MODEL), None, (1, 2, 3)),
        snapshot_key(replace(IDENTITY, layout="llama.cpp 0.3|slots=3|ctx=2048"), None, (1, 2, 3)),
        snapshot_key(IDENTITY, None, (1, 2)),
        snapshot_key(IDENTITY, None, (1, 2, 3, 0)),
        snapshot_key(IDENTITY, None, (3, 2, 1)),
        snapshot_key(IDENTITY, None, (1, 2, 4)),
        snapshot_key(IDENTITY, None, ()),
        snapshot_key(IDENTITY, "key-b", (1, 2, 3)),  # another key's cache of the same tokens
    }
    assert key not in others
    assert len(others) == 9


def test_the_same_prefix_under_one_model_shares_a_snapshot(tmp_path: Path) -> None:
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(snapshot_key(IDENTITY, None, (7, 8, 9)), Snapshot((7, 8, 9), b"kv"))
    assert store.get(snapshot_key(IDENTITY, None, (7, 8, 9))) == Snapshot((7, 8, 9), b"kv")
    other = replace(IDENTITY, model=hashlib.sha256(b"n").digest())
    assert store.get(snapshot_key(other, None, (7, 8, 9))) is None


def test_disk_used_follows_the_files_this_store_writes_and_removes(tmp_path: Path) -> None:
    (tmp_path / "old.kv").write_bytes(b"x" * 10)  # left from before a restart: counted too
    store = _store(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert store.disk_used() == 10
    store.put(_key(A), A)
    store.put(_key(B), B)
    assert store.disk_used() == 10 + 2 * FILE and store.memory_used() == 2 * SIZE
    store.discard(_key(A))
    assert store.disk_used() == 10 + FILE
    assert _store(None, memory_bytes=BIG, disk_bytes=BIG).disk_used() == 0
