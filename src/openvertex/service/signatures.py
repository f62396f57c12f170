"""Thought signatures for backends that issue none of their own (spec §3.4).

Gemini signs the first function call of each step and the last part of an answer, and
Gemini 3 refuses a conversation whose current turn replays a call without its signature.
openvertex does the same for local and self-deployed models: a signature is
`version · kind · nonce · HMAC-SHA256(key, version · kind · nonce · bound)[:16]`, base64,
where `bound` is the function name for a call. The key comes from a server secret that is
generated once and kept on disk, so signatures survive restarts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc

VERSION = 1
SECRET_FILE = "thought-signature.key"  # in the state directory
SKIP_VALIDATOR = "skip_thought_signature_validator"  # the one dummy value Vertex accepts [D V-TS]
_NONCE_BYTES = 12
_TAG_BYTES = 16
_LEARN_MORE = "https://docs.cloud.google.com/vertex-ai/generative-ai/docs/thought-signatures"


class Kind(IntEnum):
    FUNCTION_CALL = 1
    TEXT = 2


def load_or_create_secret(path: Path) -> bytes:
    """The server secret at `path`, created (32 random bytes, hex, mode 0600) on first use."""
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret.hex() + "\n")
    return secret


def invalid_signature() -> InvalidArgumentError:
    return InvalidArgumentError("Unable to submit request because Thought signature is not valid.")


class ThoughtSigner:
    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"openvertex thought signature", hashlib.sha256).digest()

    def _tag(self, header: bytes, bound: bytes) -> bytes:
        return hmac.new(self._key, header + bound, hashlib.sha256).digest()[:_TAG_BYTES]

    def sign(self, kind: Kind, bound: str = "") -> str:
        header = bytes([VERSION, kind]) + secrets.token_bytes(_NONCE_BYTES)
        return base64.b64encode(header + self._tag(header, bound.encode())).decode()

    def verify(self, signature: str, kind: Kind, bound: str = "") -> bool:
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return False
        header, tag = raw[: 2 + _NONCE_BYTES], raw[2 + _NONCE_BYTES :]
        if len(tag) != _TAG_BYTES or header[:2] != bytes([VERSION, kind]):
            return False
        return hmac.compare_digest(tag, self._tag(header, bound.encode()))

    # ------------------------------------------------------------------ requests

    def check_request(self, contents: list[gc.Content], *, required: bool) -> None:
        """Every signature given back must be ours and match its part; with `required`, the
        first call of each step of the current turn must carry one (Gemini 3's rule)."""
        for content in contents:
            if content.role == "model":
                for part in content.parts:
                    self._check_part(part)
        if required:
            for position, content in _current_turn(contents):
                calls = [p for p in content.parts if p.function_call is not None]
                if calls and not calls[0].thought_signature:
                    name = calls[0].function_call.name if calls[0].function_call else ""
                    raise InvalidArgumentError(
                        f"Unable to submit request because function call `default_api:{name}` in the "
                        f"{position}. content block is missing a `thought_signature`. Learn more: {_LEARN_MORE}"
                    )

    def _check_part(self, part: gc.Part) -> None:
        signature = part.thought_signature
        if not signature or signature == SKIP_VALIDATOR:
            return
        call = part.function_call
        valid = (
            self.verify(signature, Kind.FUNCTION_CALL, call.name or "")
            if call is not None
            else self.verify(signature, Kind.TEXT)
        )
        if not valid:
            raise invalid_signature()

    # ------------------------------------------------------------------ responses

    def sign_response(self, response: gc.GenerateContentResponse) -> None:
        for candidate in response.candidates or []:
            _CandidateSigning().sign(self, candidate, finished=True)

    async def sign_stream(
        self, chunks: AsyncIterator[gc.GenerateContentResponse]
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        """Sign each candidate's first function call, or end a candidate that made none with
        an empty text part carrying a signature (as Gemini streams it)."""
        states: dict[int, _CandidateSigning] = {}
        try:
            async for chunk in chunks:
                for position, candidate in enumerate(chunk.candidates or []):
                    index = candidate.index if candidate.index is not None else position
                    states.setdefault(index, _CandidateSigning()).sign(
                        self, candidate, finished=candidate.finish_reason is not None
                    )
                yield chunk
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]


@dataclass
class _CandidateSigning:
    called: bool = False

    def sign(self, signer: ThoughtSigner, candidate: gc.Candidate, *, finished: bool) -> None:
        parts = candidate.content.parts if candidate.content is not None else []
        for part in parts:
            call = part.function_call
            if call is not None and not self.called:
                self.called = True
                part.thought_signature = part.thought_signature or signer.sign(Kind.FUNCTION_CALL, call.name or "")
        if finished and not self.called:
            if candidate.content is None:
                candidate.content = gc.Content(role="model", parts=[])
            candidate.content.parts.append(gc.Part(text="", thought_signature=signer.sign(Kind.TEXT)))


def _current_turn(contents: list[gc.Content]) -> list[tuple[int, gc.Content]]:
    """(1-based position, content) of the model turns after the last user message that is
    not only function responses."""
    start = 0
    for index, content in enumerate(contents):
        if content.role != "model" and not all(p.function_response is not None for p in content.parts):
            start = index + 1
    return [(index + 1, c) for index, c in enumerate(contents) if index >= start and c.role == "model"]
