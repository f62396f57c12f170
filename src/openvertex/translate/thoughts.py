"""thought_tag_marker: wrapping thoughts in `<m>…</m>` and splitting them back out (spec §3.3)."""

from __future__ import annotations

import re

from openvertex.translate.tables import THOUGHT_CLOSE_SUFFIX


def open_tag(marker: str) -> str:
    return f"<{marker}>"


def close_tag(marker: str) -> str:
    return f"</{marker}>{THOUGHT_CLOSE_SUFFIX}"


def split_tagged(text: str, marker: str) -> list[tuple[str, bool]]:
    """Split assistant text into (segment, is_thought) pairs, in order, dropping empties.

    The blank line Vertex writes after a closing tag is part of the tag, not the answer.
    """
    pattern = re.compile(re.escape(f"<{marker}>") + r"(.*?)" + re.escape(f"</{marker}>") + r"(?:\n\n)?", re.DOTALL)
    segments: list[tuple[str, bool]] = []
    position = 0
    for match in pattern.finditer(text):
        segments.append((text[position : match.start()], False))
        segments.append((match.group(1), True))
        position = match.end()
    segments.append((text[position:], False))
    return [(segment, thought) for segment, thought in segments if segment]
