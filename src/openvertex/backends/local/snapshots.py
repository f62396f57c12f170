"""KV snapshots: what one is, what it is keyed by, and the file that keeps it (checked when read).

A snapshot is one sequence's KV state as llama.cpp serialises it, with the tokens it holds. It
is keyed by what it depends on (`snapshot_key`): the model's content (the SHA-256 of its GGUF and
projector, digests.py), the context's layout, the cache's owner and the tokens.

A snapshot file (v3) is a header (magic, its key, the SHA-256 of the model's content, of the
projector's and of the context's layout, the token count, the state's length), a SHA-256 of the
header and of all that follows it, the tokens (int64: an image's placeholders are negative) and
the state. `SnapshotFile.parse` refuses a file of another format, one whose length is not what
its header says (cut short, or with bytes after) and one whose checksum does not match: a
flipped bit restored would move every logit after it, silently.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np

_MAGIC = b"OVKV3\n"
_HEADER = struct.Struct("<6s32s32s32s32sIQ")  # magic, key, model, projector, layout, token count, state bytes
HEADER_SIZE = _HEADER.size
_CHECKSUM = hashlib.sha256().digest_size
NO_PROJECTOR = bytes(32)  # the projector digest of a model without one


class UnusableSnapshot(Exception):
    """A snapshot file that must not be restored; the message says why."""


@dataclass(frozen=True, slots=True)
class ModelIdentity:
    """What a snapshot depends on besides its owner and tokens."""

    model: bytes  # SHA-256 of the GGUF file's content
    projector: bytes  # SHA-256 of the mmproj's, NO_PROJECTOR without one
    layout: str  # llama.cpp's version and the context's shape: a state restores only into the same

    def digests(self) -> tuple[bytes, bytes, bytes]:
        """What a snapshot file's header holds of it: the model's, the projector's, the layout's."""
        return self.model, self.projector, hashlib.sha256(self.layout.encode()).digest()


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Snapshot:
    tokens: tuple[int, ...]
    state: bytes  # llama_state_seq_get_data of the sequence that holds exactly `tokens`

    @property
    def size(self) -> int:
        return len(self.state) + 8 * len(self.tokens)


def snapshot_key(identity: ModelIdentity, owner: str | None, tokens: tuple[int, ...]) -> str:
    """`owner`: the key whose cache it is. Another key's cache of the same tokens gets a snapshot
    of its own, so making a cache never tells one key (by how long it takes) what another's hold."""
    digest = hashlib.sha256(identity.model + identity.projector)
    digest.update(identity.layout.encode() + b"\0" + (owner or "").encode() + b"\0")
    digest.update(_int64s(tokens))
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    """A snapshot as its file holds it."""

    key: str
    digests: tuple[bytes, bytes, bytes]  # ModelIdentity.digests() of what computed it
    snapshot: Snapshot

    def pieces(self) -> list[bytes]:
        """The file's bytes, in pieces (the state is not copied)."""
        tokens, state = _int64s(self.snapshot.tokens), self.snapshot.state
        key = bytes.fromhex(self.key)
        header = _HEADER.pack(_MAGIC, key, *self.digests, len(self.snapshot.tokens), len(state))
        return [header, _checksum(header, tokens, state), tokens, state]

    @classmethod
    def parse(cls, data: bytes) -> SnapshotFile:
        """The file's content, unless it is of another format, cut short or damaged."""
        if len(data) < _HEADER.size + _CHECKSUM or not data.startswith(_MAGIC):
            raise UnusableSnapshot("not a snapshot file of this version")
        _, key, model, projector, layout, count, length = _HEADER.unpack_from(data)
        start = _HEADER.size + _CHECKSUM
        end = start + 8 * count
        if len(data) != end + length:
            raise UnusableSnapshot(f"{len(data)} bytes where its header says {end + length}")
        view = memoryview(data)
        if _checksum(view[: _HEADER.size], view[start:end], view[end:]) != data[_HEADER.size : start]:
            raise UnusableSnapshot("its checksum does not match its content")
        tokens = tuple(int(token) for token in np.frombuffer(data, dtype="<i8", count=count, offset=start))
        return cls(key.hex(), (model, projector, layout), Snapshot(tokens, data[end:]))


def computed_by(header: bytes, identity: ModelIdentity) -> bool:
    """Whether a snapshot file's header says this version of the format, this model and layout."""
    if len(header) < _HEADER.size:
        return False
    magic, _, *digests, _, _ = _HEADER.unpack(header)
    return bool(magic == _MAGIC and tuple(digests) == identity.digests())


def _int64s(tokens: tuple[int, ...]) -> bytes:
    return np.asarray(tokens, dtype="<i8").tobytes()


def _checksum(*parts: bytes | memoryview) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.digest()
