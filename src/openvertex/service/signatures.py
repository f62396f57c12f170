"""Thought signatures for backends that issue none of their own (spec §3.4).

Gemini signs the first function call of each step and the last part of an answer with its
encrypted reasoning state, and Gemini 3 refuses a conversation whose current turn replays a
call without its signature. openvertex does the same for local and self-deployed models:
a signature is `version · kind · nonce · AES-GCM(thoughts)`, base64, where the thoughts are
those of the turn (compressed; empty when the model did not think) and the function name of
a signed call is authenticated with it. Given back, a signature restores its turn's
thoughts for the model. The key comes from a server secret, given in the configuration (so
replicas share it) or generated once and kept on disk; either way signatures survive restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.translate.tables import SKIP_THOUGHT_SIGNATURE

VERSION = 1
SECRET_FILE = "thought-signature.key"  # in the state directory
SECRET_BYTES = 32
SKIP_VALIDATOR = SKIP_THOUGHT_SIGNATURE
_NONCE_BYTES = 12
_HEADER_BYTES = 2 + _NONCE_BYTES
_LEARN_MORE = "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures"


class Kind(IntEnum):
    FUNCTION_CALL = 1
    TEXT = 2


def load_or_create_secret(path: Path) -> bytes:
    """The server secret at `path` (32 bytes, hex); made on first use, mode 0600, written to a
    scratch file and linked into place so a crash or a second replica never sees half a file."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(SECRET_BYTES)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret.hex() + "\n")
        file.flush()
        os.fsync(file.fileno())
    try:
        os.link(scratch, path)
    except FileExistsError:  # another process made it first: use theirs
        return _read_secret(path)
    finally:
        scratch.unlink()
    return secret


def _read_secret(path: Path) -> bytes:
    secret = parse_secret(path.read_text())
    if secret is None:
        raise ValueError(f"{path} does not hold a {SECRET_BYTES}-byte hex secret (remove it to make a new one)")
    return secret


def parse_secret(text: str) -> bytes | None:
    """A secret written as hex, as in the file and the configuration; None when it is not one."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        return None
    return secret if len(secret) == SECRET_BYTES else None


def invalid_signature() -> InvalidArgumentError:
    return InvalidArgumentError("Unable to submit request because Thought signature is not valid.")


class ThoughtSigner:
    def __init__(self, secret: bytes) -> None:
        self.rekey(secret)

    def rekey(self, secret: bytes) -> None:
        """Sign with `secret` from now on (the shared database's, read once it is open)."""
        self._cipher = AESGCM(hmac.new(secret, b"openvertex thought signature", hashlib.sha256).digest())

    def sign(self, kind: Kind, bound: str = "", thoughts: str = "") -> str:
        header = bytes([VERSION, kind]) + secrets.token_bytes(_NONCE_BYTES)
        sealed = self._cipher.encrypt(header[2:], zlib.compress(thoughts.encode()), header + bound.encode())
        return base64.b64encode(header + sealed).decode()

    def open(self, signature: str, kind: Kind, bound: str = "") -> str | None:
        """The thoughts a signature carries, or None when it is not ours or not for this part."""
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return None
        header = raw[:_HEADER_BYTES]
        if len(raw) <= _HEADER_BYTES or header[:2] != bytes([VERSION, kind]):
            return None
        try:
            return zlib.decompress(
                self._cipher.decrypt(header[2:], raw[_HEADER_BYTES:], header + bound.encode())
            ).decode()
        except (InvalidTag, zlib.error, UnicodeDecodeError):
            return None

    def verify(self, signature: str, kind: Kind, bound: str = "") -> bool:
        return self.open(signature, kind, bound) is not None

    # ------------------------------------------------------------------ requests

    def check_request(self, contents: list[gc.Content], *, required: bool) -> None:
        """Every signature given back must be ours and match its part; with `required`, the
        first call of each step of the current turn must carry one (Gemini 3's rule). A turn
        sent back without its thoughts gets them back from its signature."""
        for content in contents:
            if content.role == "model":
                thoughts = "".join(filter(None, (self._check_part(part) for part in content.parts)))
                if thoughts and not any(part.thought for part in content.parts):
                    content.parts.insert(0, gc.Part(text=thoughts, thought=True))
        if required:
            for position, content in _current_turn(contents):
                calls = [p for p in content.parts if p.function_call is not None]
                if calls and not calls[0].thought_signature:
                    name = calls[0].function_call.name if calls[0].function_call else ""
                    raise InvalidArgumentError(
                        f"Unable to submit request because function call `default_api:{name}` in the "
                        f"{position}. content block is missing a `thought_signature`. Learn more: {_LEARN_MORE}"
                    )

    def _check_part(self, part: gc.Part) -> str | None:
        """The thoughts the part's signature carries; a bad signature is a 400."""
        signature = part.thought_signature
        if not signature or signature == SKIP_VALIDATOR:
            return None
        call = part.function_call
        thoughts = (
            self.open(signature, Kind.FUNCTION_CALL, call.name or "")
            if call is not None
            else self.open(signature, Kind.TEXT)
        )
        if thoughts is None:
            raise invalid_signature()
        return thoughts

    def stage(self) -> SigningStage:
        return SigningStage(self)


class SigningStage:
    """The response stage that signs an answer: each candidate's first function call, or, for a
    candidate that made none, its end: an empty text part carrying the signature, as Gemini streams
    it (merged into the text before it in a whole answer)."""

    stopped = False

    def __init__(self, signer: ThoughtSigner) -> None:
        self._signer = signer
        self._states: dict[int, _CandidateSigning] = {}

    async def feed(self, chunk: gc.GenerateContentResponse) -> list[gc.GenerateContentResponse]:
        for position, candidate in enumerate(chunk.candidates or []):
            state = self._states.setdefault(candidate.index_at(position), _CandidateSigning())
            state.sign(self._signer, candidate, finished=candidate.finish_reason is not None)
        return [chunk]

    async def finish(self) -> list[gc.GenerateContentResponse]:
        return []


@dataclass
class _CandidateSigning:
    called: bool = False
    thoughts: list[str] = field(default_factory=list)

    def sign(self, signer: ThoughtSigner, candidate: gc.Candidate, *, finished: bool) -> None:
        parts = candidate.content_parts()
        for part in parts:
            if part.thought and part.text:
                self.thoughts.append(part.text)
            call = part.function_call
            if call is not None and not self.called:
                self.called = True
                if not part.thought_signature:
                    part.thought_signature = signer.sign(Kind.FUNCTION_CALL, call.name or "", "".join(self.thoughts))
        if finished and not self.called:
            if candidate.content is None:
                candidate.content = gc.Content(role="model", parts=[])
            signature = signer.sign(Kind.TEXT, thoughts="".join(self.thoughts))
            candidate.content.parts.append(gc.Part(text="", thought_signature=signature))


def _current_turn(contents: list[gc.Content]) -> list[tuple[int, gc.Content]]:
    """(1-based position, content) of the current turn's model contents."""
    start = gc.current_turn_start(contents)
    return [(index + 1, c) for index, c in enumerate(contents) if index >= start and c.role == "model"]
