"""The sweep of the KV directory (backends/local/prefixes.py): which context cache uses which
snapshot is kept on disk; what no cache that still exists uses goes, in memory and on disk, with
scratch files left by a crash and snapshots another model computed."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from openvertex.backends.local.prefixes import GRACE_S, SCRATCH_IDLE_S, PrefixStore
from openvertex.backends.local.snapshots import NO_PROJECTOR, ModelIdentity, Snapshot, snapshot_key

BIG = 1 << 30
IDENTITY = ModelIdentity(hashlib.sha256(b"model.gguf").digest(), NO_PROJECTOR, "llama.cpp 0.3|slots=2|ctx=2048")
A, B, C = (Snapshot((seed, seed + 1, seed + 2), bytes([seed]) * 64) for seed in (1, 2, 3))
LONG_AGO = time.time() - 10 * GRACE_S


def _store(directory: Path | None, identity: ModelIdentity = IDENTITY) -> PrefixStore:
    return PrefixStore(directory, lambda: identity, memory_bytes=BIG, disk_bytes=BIG)


def _key(snapshot: Snapshot) -> str:
    return snapshot_key(IDENTITY, None, snapshot.tokens)


def _file(directory: Path, snapshot: Snapshot) -> Path:
    return directory / f"{_key(snapshot)}.kv"


def _old(*paths: Path) -> None:
    for path in paths:
        os.utime(path, (LONG_AGO, LONG_AGO))


def _made_long_ago(directory: Path, uses: dict[str, Snapshot]) -> PrefixStore:
    """A store whose caches (name → snapshot) were noted and built long ago, then restarted."""
    store = _store(directory)
    for name, snapshot in uses.items():
        store.refer(name, _key(snapshot))
        store.put(_key(snapshot), snapshot)
    _old(*directory.glob("*.kv"), *(directory / "names").iterdir())
    return _store(directory)


def test_which_cache_uses_which_snapshot_survives_a_restart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.refer("cachedContents/1", _key(A))
    store.refer("cachedContents/2", _key(A))
    store.refer("cachedContents/3", _key(B))
    restarted = _store(tmp_path)
    assert sorted(restarted.names()) == ["cachedContents/1", "cachedContents/2", "cachedContents/3"]
    assert restarted.key_of("cachedContents/3") == _key(B)
    assert restarted.key_of("cachedContents/4") is None


def test_forgetting_a_cache_keeps_a_snapshot_another_cache_uses(tmp_path: Path) -> None:
    store = _made_long_ago(tmp_path, {"one": A, "two": A, "three": B})
    store.forget("one")
    assert _file(tmp_path, A).exists()  # "two" uses it
    store.forget("two")
    assert not _file(tmp_path, A).exists()
    assert _store(tmp_path).names() == ["three"]
    store.forget("unknown")  # a cache this replica never used


def test_the_sweep_lets_go_of_what_caches_that_no_longer_exist_used(tmp_path: Path) -> None:
    store = _made_long_ago(tmp_path, {"kept": A, "deleted": B, "shares": C, "also-deleted": C})
    assert store.get(_key(B)) == B  # in memory too
    _old(_file(tmp_path, B))  # and not used since (a use keeps a file one more grace period)
    removed = store.sweep(["kept", "shares"])
    assert removed == 1
    assert sorted(p.name for p in tmp_path.glob("*.kv")) == sorted(f"{_key(s)}.kv" for s in (A, C))
    assert sorted(store.names()) == ["kept", "shares"]
    assert store.get(_key(B)) is None  # gone from memory as well
    assert sorted(_store(tmp_path).names()) == ["kept", "shares"]


def test_a_young_record_or_one_being_built_is_kept_whatever_the_database_says(tmp_path: Path) -> None:
    """A cache being made has no row until its snapshot is built."""
    store = _made_long_ago(tmp_path, {"building": A})
    store.refer("new", _key(B))  # noted just now, its snapshot being built
    assert store.sweep([], busy={_key(A)}) == 0
    assert sorted(store.names()) == ["building", "new"]
    assert _file(tmp_path, A).exists()
    assert store.sweep([]) == 1  # built, and still no row: its cache was never made
    assert store.names() == ["new"]


def test_orphaned_snapshots_go_but_one_just_written_stays(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.put(_key(A), A)  # no cache notes it (a crash between the two, an older version's)
    store.put(_key(B), B)
    _old(_file(tmp_path, A))
    assert store.sweep([]) == 1
    assert not _file(tmp_path, A).exists()
    assert _file(tmp_path, B).exists()  # young: its record may be on its way


def test_snapshots_of_another_model_or_format_go_even_where_a_cache_uses_them(tmp_path: Path) -> None:
    _made_long_ago(tmp_path, {"one": A, "two": B})
    _file(tmp_path, B).write_bytes(b"OVKV2\n" + bytes(200))  # an older format
    other = replace(IDENTITY, model=hashlib.sha256(b"another.gguf").digest())
    store = _store(tmp_path, other)  # the model file changed
    assert store.sweep(["one", "two"]) == 2
    assert list(tmp_path.glob("*.kv")) == []
    assert sorted(store.names()) == ["one", "two"]  # their caches exist: rebuilt at their next use


def _scratch(folder: Path, target: str, pid: int) -> Path:
    path = folder / f".{target}.{pid}.0123abcd"
    path.write_bytes(b"half a snapshot")
    return path


def _dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(process.stdout)


def test_scratch_files_left_by_a_crash_go(tmp_path: Path) -> None:
    store = _store(tmp_path)
    names = tmp_path / "names"
    dead = [_scratch(tmp_path, "a.kv", _dead_pid()), _scratch(names, "b.json", _dead_pid())]
    idle = _scratch(tmp_path, "c.kv", os.getpid())  # this process id, in a container say, untouched
    _old(idle)
    busy = _scratch(tmp_path, "model-digests.json", os.getpid())  # being written by this process
    other = tmp_path / ".not-scratch"
    other.write_bytes(b"")
    assert store.sweep([]) == 3
    assert [path.exists() for path in (*dead, idle, busy, other)] == [False, False, False, True, True]


def test_a_scratch_file_idle_for_a_while_goes(tmp_path: Path) -> None:
    path = _scratch(tmp_path, "d.kv", os.getpid())
    then = time.time() - SCRATCH_IDLE_S - 1
    os.utime(path, (then, then))
    assert _store(tmp_path).sweep([]) == 1


def test_without_a_directory_the_sweep_frees_memory(tmp_path: Path) -> None:
    store = _store(None)
    store.refer("gone", _key(A))
    store.put(_key(A), A)
    store.put(_key(B), B)  # nothing uses it
    assert store.sweep([], busy={_key(A)}) == 0
    assert store.get(_key(A)) == A and store.get(_key(B)) is None
    assert store.memory_used() == A.size
