"""A grounded answer's `groundingMetadata` → OpenAI `url_citation` annotations (spec E, [I]: Google's
compatible surface shows no citations; LiteLLM's convention, one annotation per source a segment
cites). Gemini counts a segment's offsets in UTF-8 bytes of the answer text; an annotation counts
characters of the message's `content`, which may also hold thoughts between tags: each answer text
part's place in `content` maps one onto the other."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from openvertex.protocol import chat_completions as oa

# (where an answer text part starts in `content`, its text), in order
AnswerSpans = Sequence[tuple[int, str]]


def url_citations(metadata: dict[str, Any], spans: AnswerSpans) -> list[oa.Annotation] | None:
    answer = "".join(text for _, text in spans)
    encoded = answer.encode()
    sources = [
        chunk.get("web") or chunk.get("retrievedContext") or {} for chunk in metadata.get("groundingChunks") or []
    ]
    annotations = []
    for support in metadata.get("groundingSupports") or []:
        segment = support.get("segment") or {}
        start = _characters(encoded, segment.get("startIndex") or 0)
        end = _characters(encoded, segment.get("endIndex") or 0)
        if not 0 <= start < end <= len(answer):
            continue  # a segment outside this answer's text: nothing to point at
        for index in support.get("groundingChunkIndices") or []:
            source = sources[index] if isinstance(index, int) and 0 <= index < len(sources) else {}
            if source.get("uri"):
                citation = oa.UrlCitation(
                    start_index=_in_content(start, spans),
                    end_index=_in_content(end - 1, spans) + 1,
                    url=source["uri"],
                    title=source.get("title") or source["uri"],
                )
                annotations.append(oa.Annotation(url_citation=citation))
    return annotations or None


def _characters(encoded: bytes, offset: int) -> int:
    """The characters in the first `offset` bytes (a cut inside a character ends before it)."""
    return len(encoded[: max(0, offset)].decode("utf-8", errors="ignore"))


def _in_content(position: int, spans: AnswerSpans) -> int:
    """A character of the answer text → its index in `content`."""
    for start, text in spans:
        if position < len(text):
            return start + position
        position -= len(text)
    raise ValueError("a position past the answer's text")
