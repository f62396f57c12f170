"""KV snapshots of cached prefixes (backends/local/prefixes.py): memory and disk, each least recently used out first."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from openvertex.backends.local.prefixes import PrefixStore, Snapshot, snapshot_key

MAGIC = b"OVKV2\n"
HEADER = len(MAGIC) + 4
BIG = 1 << 30


def _snapshot(seed: int, *, tokens: int = 4, state: int = 100) -> Snapshot:
    return Snapshot(tuple(range(seed, seed + tokens)), bytes((seed + i) % 256 for i in range(state)))


A, B, C = _snapshot(1), _snapshot(2), _snapshot(3)
SIZE = A.size  # 100 state bytes + 4 tokens * 8 bytes
FILE = HEADER + SIZE  # what one of them takes on disk


def _key(snapshot: Snapshot) -> str:
    return snapshot_key("model-v1", None, snapshot.tokens)


def _file(directory: Path, snapshot: Snapshot) -> Path:
    return directory / f"{_key(snapshot)}.kv"


def _age(directory: Path, snapshot: Snapshot, mtime: float) -> None:
    """Make a file look last used at `mtime` (the disk's LRU order is the files' mtimes)."""
    os.utime(_file(directory, snapshot), (mtime, mtime))


def _on_disk(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


def test_sizes() -> None:
    assert SIZE == 132
    assert Snapshot((), b"").size == 0


def test_put_get_round_trip(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert store.get(_key(A)) is None
    store.put(_key(A), A)
    got = store.get(_key(A))
    assert got == A
    assert got is not None and got.tokens == A.tokens and got.state == A.state
    assert store.memory_used() == SIZE


def test_put_writes_through_to_disk(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path / "kv" / "local", memory_bytes=BIG, disk_bytes=BIG)  # the directory is made
    store.put(_key(A), A)
    data = _file(tmp_path / "kv" / "local", A).read_bytes()
    assert data == MAGIC + struct.pack("<I", 4) + struct.pack("<4q", *A.tokens) + A.state
    assert len(data) == FILE
    assert _on_disk(tmp_path / "kv" / "local") == {f"{_key(A)}.kv"}  # no scratch file left behind


def test_a_new_store_on_the_same_directory_finds_it(tmp_path: Path) -> None:
    PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    restarted = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert restarted.memory_used() == 0
    got = restarted.get(_key(A))
    assert got == A
    assert got is not None and got.state == A.state and got.tokens == A.tokens
    assert restarted.memory_used() == SIZE  # read back into memory
    _file(tmp_path, A).unlink()
    assert restarted.get(_key(A)) == A  # now from memory


def test_putting_the_same_snapshot_twice_counts_it_once(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(A), A)
    assert store.memory_used() == SIZE
    assert len(_on_disk(tmp_path)) == 1


def test_the_memory_budget_evicts_the_least_recently_used_but_the_disk_keeps_it(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=2 * SIZE, disk_bytes=BIG)
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
    store = PrefixStore(tmp_path, memory_bytes=SIZE - 1, disk_bytes=BIG)
    store.put(_key(A), A)
    assert store.memory_used() == 0
    assert _file(tmp_path, A).is_file()
    assert store.get(_key(A)) == A
    assert store.memory_used() == 0


def test_an_oversized_snapshot_leaves_the_others_in_memory(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=2 * SIZE, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    huge = _snapshot(9, state=3 * SIZE)
    store.put(_key(huge), huge)
    assert store.memory_used() == 2 * SIZE


def test_no_memory_budget_means_disk_only(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=0, disk_bytes=BIG)
    store.put(_key(A), A)
    assert store.memory_used() == 0
    assert store.get(_key(A)) == A
    _file(tmp_path, A).unlink()
    assert store.get(_key(A)) is None


def test_the_disk_budget_deletes_the_least_recently_used_files(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=0, disk_bytes=2 * FILE + 20)  # room for two files
    store.put(_key(A), A)
    _age(tmp_path, A, 1000)
    store.put(_key(B), B)
    _age(tmp_path, B, 2000)
    store.put(_key(C), C)  # A, the oldest, makes room
    assert not _file(tmp_path, A).exists()
    assert _file(tmp_path, B).is_file() and _file(tmp_path, C).is_file()
    assert store.get(_key(A)) is None
    assert store.get(_key(B)) == B and store.get(_key(C)) == C
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 2 * FILE + 20


def test_reading_a_file_makes_it_recently_used(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=0, disk_bytes=2 * FILE + 20)
    store.put(_key(A), A)
    _age(tmp_path, A, 1000)
    store.put(_key(B), B)
    _age(tmp_path, B, 2000)
    assert store.get(_key(A)) == A  # read from disk: touched
    store.put(_key(C), C)
    assert _file(tmp_path, A).is_file()
    assert not _file(tmp_path, B).exists()


def test_a_snapshot_used_from_memory_is_recently_used_on_disk_too(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=2 * FILE + 20)
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
    store = PrefixStore(tmp_path, memory_bytes=0, disk_bytes=budget)
    store.put(_key(A), A)
    store.put(_key(B), B)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= budget


def test_a_snapshot_larger_than_the_disk_budget_stays_in_memory_only(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=SIZE - 1)
    store.put(_key(A), A)
    assert _on_disk(tmp_path) == set()
    assert store.get(_key(A)) == A
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None


def test_discard_removes_it_from_memory_and_disk(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(_key(A), A)
    store.put(_key(B), B)
    store.discard(_key(A))
    assert store.memory_used() == SIZE
    assert store.get(_key(A)) is None
    assert not _file(tmp_path, A).exists()
    assert store.get(_key(B)) == B
    store.discard(_key(A))  # twice is fine
    store.discard("unknown")
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) is None


def test_discard_removes_a_file_that_is_not_in_memory(tmp_path: Path) -> None:
    PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    restarted = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    restarted.discard(_key(A))
    assert _on_disk(tmp_path) == set()
    assert restarted.memory_used() == 0


@pytest.mark.parametrize(
    "content",
    [b"", b"OVKV", b"garbage that is long enough to hold a header", b"OVKV1\n" + struct.pack("<I", 0), MAGIC],
    ids=["empty", "short", "garbage", "other-magic", "no-count"],
)
def test_a_malformed_file_is_ignored(tmp_path: Path, content: bytes) -> None:
    key = snapshot_key("model-v1", None, (1, 2, 3))
    (tmp_path / f"{key}.kv").write_bytes(content)
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    assert store.get(key) is None
    assert store.memory_used() == 0


def test_a_snapshot_without_state_is_not_read_back(tmp_path: Path) -> None:
    """llama.cpp's state is never empty: a file that ends after the tokens was cut short."""
    PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put("empty", Snapshot((1, 2), b""))
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get("empty") is None


TRUNCATED = "a file whose header promises more tokens than it holds"


def test_a_file_with_a_truncated_token_section_is_ignored(tmp_path: Path) -> None:
    key = snapshot_key("model-v1", None, (1, 2, 3))
    (tmp_path / f"{key}.kv").write_bytes(MAGIC + struct.pack("<I", 5) + b"\x01\x00\x00\x00\x02\x00")
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(key) is None


def test_a_file_cut_short_is_ignored(tmp_path: Path) -> None:
    key = snapshot_key("model-v1", None, (1, 2, 3))
    (tmp_path / f"{key}.kv").write_bytes(MAGIC + struct.pack("<I", 1000) + struct.pack("<3q", 1, 2, 3))
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(key) is None


def test_put_replaces_a_malformed_file(tmp_path: Path) -> None:
    (tmp_path / f"{_key(A)}.kv").write_bytes(b"garbage")
    PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).put(_key(A), A)
    assert PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG).get(_key(A)) == A


def test_without_a_directory_the_store_is_memory_only(tmp_path: Path) -> None:
    store = PrefixStore(None, memory_bytes=2 * SIZE, disk_bytes=BIG)
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


def test_snapshot_key_depends_on_identity_and_tokens() -> None:
    key = snapshot_key("llama|model.gguf|123", None, (1, 2, 3))
    assert len(key) == 64 and int(key, 16) >= 0  # a SHA-256 hex digest: a safe file name
    assert snapshot_key("llama|model.gguf|123", None, (1, 2, 3)) == key
    others = {
        snapshot_key("llama|model.gguf|124", None, (1, 2, 3)),  # another model file
        snapshot_key("llama|other.gguf|123", None, (1, 2, 3)),
        snapshot_key("llama|model.gguf|123", None, (1, 2)),
        snapshot_key("llama|model.gguf|123", None, (1, 2, 3, 0)),
        snapshot_key("llama|model.gguf|123", None, (3, 2, 1)),
        snapshot_key("llama|model.gguf|123", None, (1, 2, 4)),
        snapshot_key("llama|model.gguf|123", None, ()),
        snapshot_key("llama|model.gguf|123", "key-b", (1, 2, 3)),  # another key's cache of the same tokens
    }
    assert key not in others
    assert len(others) == 8


def test_the_same_prefix_under_one_model_shares_a_snapshot(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, memory_bytes=BIG, disk_bytes=BIG)
    store.put(snapshot_key("m", None, (7, 8, 9)), Snapshot((7, 8, 9), b"kv"))
    assert store.get(snapshot_key("m", None, (7, 8, 9))) == Snapshot((7, 8, 9), b"kv")
    assert store.get(snapshot_key("n", None, (7, 8, 9))) is None
