"""Content digests of model files (backends/local/digests.py): the SHA-256 of the file, computed
once per file and kept in a sidecar by what stat says of it, computed again when the file changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from openvertex.backends.local.digests import SIDECAR, file_digest, model_identity
from openvertex.backends.local.snapshots import NO_PROJECTOR


def _model(tmp_path: Path, content: bytes = b"GGUF" + bytes(range(256)) * 64) -> Path:
    path = tmp_path / "models" / "model.gguf"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def _forge_kept_digest(keep: Path, digest: bytes) -> None:
    """Change the digest the sidecar keeps, leaving the file's fingerprint: only a digest read from
    the sidecar can then be this one."""
    kept = json.loads((keep / SIDECAR).read_text())
    for entry in kept.values():
        entry["sha256"] = digest.hex()
    (keep / SIDECAR).write_text(json.dumps(kept))


def test_the_digest_is_the_files_sha256(tmp_path: Path) -> None:
    model = _model(tmp_path)
    assert file_digest(model, keep=None) == hashlib.sha256(model.read_bytes()).digest()
    assert not (tmp_path / SIDECAR).exists()


def test_a_file_that_did_not_change_is_not_read_again(tmp_path: Path) -> None:
    model, keep = _model(tmp_path), tmp_path / "kv"
    assert file_digest(model, keep=keep) == hashlib.sha256(model.read_bytes()).digest()
    assert (keep / SIDECAR).is_file()
    _forge_kept_digest(keep, b"\x01" * 32)
    assert file_digest(model, keep=keep) == b"\x01" * 32  # from the sidecar


def test_a_file_rewritten_is_hashed_again_even_with_its_old_size_and_mtime(tmp_path: Path) -> None:
    model, keep = _model(tmp_path), tmp_path / "kv"
    file_digest(model, keep=keep)
    before = model.stat()
    changed = bytearray(model.read_bytes())
    changed[100] ^= 1
    model.write_bytes(bytes(changed))
    os.utime(model, ns=(before.st_atime_ns, before.st_mtime_ns))  # the mtime set back; the ctime cannot be
    assert model.stat().st_size == before.st_size
    assert file_digest(model, keep=keep) == hashlib.sha256(changed).digest()


def test_a_file_replaced_by_another_is_hashed_again(tmp_path: Path) -> None:
    model, keep = _model(tmp_path), tmp_path / "kv"
    file_digest(model, keep=keep)
    _forge_kept_digest(keep, b"\x02" * 32)
    replacement = tmp_path / "models" / "new.gguf"
    replacement.write_bytes(b"another model")
    replacement.replace(model)
    assert file_digest(model, keep=keep) == hashlib.sha256(b"another model").digest()


def test_a_malformed_sidecar_is_written_again(tmp_path: Path) -> None:
    model, keep = _model(tmp_path), tmp_path / "kv"
    keep.mkdir()
    for content in ("not json", "[1, 2]", '{"x": {"stat": 1, "sha256": "zz"}}'):
        (keep / SIDECAR).write_text(content)
        assert file_digest(model, keep=keep) == hashlib.sha256(model.read_bytes()).digest()
    assert str(model.resolve()) in json.loads((keep / SIDECAR).read_text())
    assert [p.name for p in keep.iterdir()] == [SIDECAR]  # no scratch file left


def test_a_models_identity_holds_its_projectors_digest(tmp_path: Path) -> None:
    model, keep = _model(tmp_path), tmp_path / "kv"
    projector = tmp_path / "mmproj.gguf"
    projector.write_bytes(b"projector")
    alone = model_identity(model, None, "layout", keep=keep)
    assert alone.model == hashlib.sha256(model.read_bytes()).digest() and alone.projector == NO_PROJECTOR
    seeing = model_identity(model, projector, "layout", keep=keep)
    assert seeing.model == alone.model and seeing.projector == hashlib.sha256(b"projector").digest()
    assert len(json.loads((keep / SIDECAR).read_text())) == 2
