"""Stop sequences on streamed text: never emit a stop sequence, even one split across tokens, and
never cut inside a function call's block (a stop of "\n" would break every call)."""

from __future__ import annotations


class StopMatcher:
    """Holds back the shortest tail that could still grow into a stop sequence. With `exempt`
    (an opening and a closing tag), text from an opening tag to its closing tag is never matched."""

    def __init__(self, stops: list[str], *, exempt: tuple[str, str] | None = None) -> None:
        self._stops = [s for s in stops if s]
        self._exempt = exempt if self._stops else None
        self._inside = False  # within an exempt block
        self._pending = ""
        self.stopped = False
        self.after = ""  # text that came after the stop sequence, in the same feed

    def feed(self, text: str) -> str:
        """Append generated text; return what is safe to emit. Sets `stopped` on a match."""
        if self.stopped:
            return ""
        buffer, emitted = self._pending + text, ""
        self._pending = ""
        while buffer:
            if self._inside:
                assert self._exempt is not None
                close = self._exempt[1]
                end = buffer.find(close)
                if end < 0:
                    keep = partial_suffix(buffer, close)
                    self._pending = buffer[len(buffer) - keep :] if keep else ""
                    return emitted + buffer[: len(buffer) - keep]
                emitted, buffer = emitted + buffer[: end + len(close)], buffer[end + len(close) :]
                self._inside = False
                continue
            safe, buffer = self._outside(buffer)
            emitted += safe
            if self.stopped or not self._inside:
                return emitted
        return emitted

    def _outside(self, buffer: str) -> tuple[str, str]:
        """What is safe to emit of text outside a block, and what follows an opening tag in it."""
        hits = [i for i in (buffer.find(s) for s in self._stops) if i >= 0]
        opening = buffer.find(self._exempt[0]) if self._exempt is not None else -1
        if opening >= 0 and (not hits or opening < min(hits)):
            self._inside = True
            assert self._exempt is not None
            end = opening + len(self._exempt[0])
            return buffer[:end], buffer[end:]
        if hits:
            start = min(hits)
            stop = next(s for s in self._stops if buffer.find(s) == start)
            self.stopped = True
            self.after = buffer[start + len(stop) :]
            return buffer[:start], ""
        keep = self._longest_partial(buffer)
        self._pending = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep], ""

    def _longest_partial(self, buffer: str) -> int:
        tags = [*self._stops, self._exempt[0]] if self._exempt is not None else self._stops
        return max((partial_suffix(buffer, tag) for tag in tags), default=0)

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
