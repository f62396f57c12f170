"""Content digests of model files: the SHA-256 of a GGUF (and of its projector), which KV snapshots
are tied to, computed once per file and kept.

Hashing a model of gigabytes takes seconds, so the digest is kept in a small sidecar,
`model-digests.json` in the backend's KV directory (beside the snapshots that depend on it), by
the file's resolved path and what stat says of it: device, inode, size, mtime_ns and ctime_ns.
A file replaced, rewritten or touched in any way changes one of them (ctime cannot be set back),
so it is hashed again; a file that did not change is never read. The sidecar is only a cache: a
missing or malformed one is written again. Without a KV directory nothing is kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from openvertex.backends.local.snapshots import NO_PROJECTOR, ModelIdentity

log = logging.getLogger(__name__)

SIDECAR = "model-digests.json"


def model_identity(model: Path, projector: Path | None, layout: str, *, keep: Path | None) -> ModelIdentity:
    """What the snapshots of `model` (seeing images through `projector`) in `layout` are tied to."""
    return ModelIdentity(
        model=file_digest(model, keep=keep),
        projector=file_digest(projector, keep=keep) if projector is not None else NO_PROJECTOR,
        layout=layout,
    )


def file_digest(path: Path, *, keep: Path | None) -> bytes:
    """The SHA-256 of the file's content, from the sidecar in `keep` where the file is unchanged."""
    path = path.resolve()
    before = _fingerprint(path)
    kept = _read(keep)
    entry = kept.get(str(path))
    if isinstance(entry, dict) and entry.get("stat") == before and isinstance(entry.get("sha256"), str):
        with contextlib.suppress(ValueError):
            digest = bytes.fromhex(entry["sha256"])
            if len(digest) == hashlib.sha256().digest_size:
                return digest
    with path.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").digest()
    if keep is not None and _fingerprint(path) == before:  # not written to while it was read
        kept[str(path)] = {"stat": before, "sha256": digest.hex()}
        _write(keep, kept)
    log.info("content digest of %s: sha256 %s", path.name, digest.hex())
    return digest


def _fingerprint(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _read(keep: Path | None) -> dict[str, Any]:
    if keep is None:
        return {}
    try:
        kept = json.loads((keep / SIDECAR).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring a malformed %s in %s", SIDECAR, keep)
        return {}
    return kept if isinstance(kept, dict) else {}


def _write(keep: Path, kept: dict[str, Any]) -> None:
    """Replaced whole (a scratch file renamed over it), as the snapshots are."""
    target = keep / SIDECAR
    scratch = keep / f".{SIDECAR}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        keep.mkdir(parents=True, exist_ok=True)
        scratch.write_text(json.dumps(kept, indent=1, sort_keys=True))
        scratch.replace(target)
    except OSError:
        log.exception("could not keep the model's digest in %s; it is computed again at the next start", target)
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
