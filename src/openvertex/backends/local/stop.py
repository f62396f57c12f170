"""Stop sequences on streamed text: never emit a stop sequence, even one split across tokens."""

from __future__ import annotations


class StopMatcher:
    """Holds back the shortest tail that could still grow into a stop sequence."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False
        self.after = ""  # text that came after the stop sequence, in the same feed

    def feed(self, text: str) -> str:
        """Append generated text; return what is safe to emit. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        buffer = self._pending + text
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        if hits:
            start = min(hits)
            stop = next(s for s in self._stops if buffer.find(s) == start)
            self.stopped = True
            self._pending = ""
            self.after = buffer[start + len(stop) :]
            return buffer[:start]
        keep = self._longest_partial(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def _longest_partial(self, buffer: str) -> int:
        return max((partial_suffix(buffer, stop) for stop in self._stops), default=0)

    def flush(self) -> str:
        """At the end of generation, held-back text that never became a stop sequence."""
        pending, self._pending = self._pending, ""
        return "" if self.stopped else pending


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag` (text to hold back)."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0
