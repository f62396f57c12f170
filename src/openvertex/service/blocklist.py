"""The operator's blocklist: terms and regular expressions that no prompt or answer may hold
(finishReason BLOCKLIST), whatever the safety settings say, as Vertex's terminology blocklists do.

A term matches as whole words, in any case, with a run of up to 16 whitespace characters between
its words. Every match, with what its lookaheads read past it, spans at most `reach` characters (a
pattern that could reach further is searched within MAX_REACH characters), so an answer checked a
window at a time needs to see only `reach` characters either side of each window: a stream holds
back that much, and the stream and the whole answer block exactly the same texts.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from typing import Any

from openvertex.settings import BlocklistSettings

MAX_REACH = 1024  # characters: the longest match searched for
_WHITESPACE_RUN = r"\s{1,16}"


class Blocklist:
    def __init__(self, settings: BlocklistSettings) -> None:
        words = [r"(?<!\w)" + re.escape(term).replace(r"\ ", _WHITESPACE_RUN) + r"(?!\w)" for term in settings.terms]
        self._patterns = [re.compile("|".join(words), re.IGNORECASE)] if words else []
        self._patterns += [re.compile(pattern) for pattern in settings.patterns]
        self.reach = max((_width(pattern) for pattern in self._patterns), default=0)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    def hit(self, text: str) -> bool:
        return any(pattern.search(text) for pattern in self._patterns)

    def hit_within(self, text: str, start: int, end: int) -> bool:
        """Whether a match starts in `text[start:end]`, read with `reach` characters either side
        (and no further: the same answer gives the same result however it was cut)."""
        low, high = max(0, start - self.reach), min(len(text), end + self.reach + 1)
        for pattern in self._patterns:
            found = pattern.search(text, low, high)
            if found is not None and found.start() < end:
                return True
        return False


def _width(pattern: re.Pattern[str]) -> int:
    """The most characters a match of `pattern` can span or look ahead at, up to MAX_REACH."""
    try:  # the regular expression parser's own measure (no public API gives it)
        parser = importlib.import_module("re._parser")
        parsed = parser.parse(pattern.pattern, pattern.flags)
        widest = int(parsed.getwidth()[1]) + _lookahead(parsed)
    except Exception:
        return MAX_REACH
    return min(widest, MAX_REACH)


def _lookahead(items: Any) -> int:
    """How far past a match its lookaheads may read (the parser counts them as zero-width): their
    widths added up, an upper bound."""
    total = 0
    for op, value in items:
        name = str(op)
        if name in ("ASSERT", "ASSERT_NOT"):
            direction, inner = value
            if direction == 1:
                total += int(inner.getwidth()[1]) + _lookahead(inner)
        elif name == "SUBPATTERN":
            total += _lookahead(value[-1])
        elif name == "BRANCH":
            total += max((_lookahead(branch) for branch in value[1]), default=0)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") and _lookahead(value[2]):
            return MAX_REACH
    return total


def json_strings(value: Any, keys: list[str] | None = None) -> Iterator[str]:
    """The strings of a JSON value (a call's arguments), in order, as rated and searched; its
    objects' keys are added to `keys` when given."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if keys is not None:
                keys.append(key)
            yield from json_strings(item, keys)
    elif isinstance(value, list):
        for item in value:
            yield from json_strings(item, keys)
