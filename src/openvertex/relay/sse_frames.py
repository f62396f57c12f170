"""A relayed SSE stream cut into its frames as the bytes arrive, and a frame's data read, for the
readers that watch a self-deployed endpoint's stream pass (relay/usage.py, relay/screen.py)."""

from __future__ import annotations

import json
import re
from typing import Any

FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")  # SSE allows each line ending; sse-starlette writes \r\n
_LINE_END = re.compile(rb"\r\n|\r|\n")
MAX_FRAME_BYTES = 1 << 20  # a longer frame is not read: what follows passes as it comes


class SseFrames:
    """Whole frames out of a byte stream, an unfinished one kept until its end arrives."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        """The frames `chunk` completes, each with its blank line."""
        self._pending += chunk
        frames = []
        start = 0
        while (end := FRAME_END.search(self._pending, start)) is not None:
            frames.append(bytes(self._pending[start : end.end()]))
            start = end.end()
        del self._pending[:start]
        return frames

    @property
    def overlong(self) -> bool:
        """The unfinished frame is past MAX_FRAME_BYTES: not a stream these readers can read."""
        return len(self._pending) > MAX_FRAME_BYTES

    def rest(self) -> bytes:
        """What is left of an unfinished frame (taken)."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest


def frame_data(frame: bytes) -> bytes | None:
    """The data of an SSE event (its `data:` lines joined), or None for an event without any."""
    lines = [line for line in _LINE_END.split(frame) if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[6:] if line.startswith(b"data: ") else line[5:] for line in lines)


def json_object(data: bytes) -> dict[str, Any] | None:
    """`data` as a JSON object, or None where it is not one (nested past Python's reach included)."""
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
