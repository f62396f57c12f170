"""groundingMetadata → url_citation: byte offsets of the answer text become character offsets of
`content`, thoughts in tags counted, whole and streamed, whatever the text parts look like."""

from __future__ import annotations

from typing import Any

from openvertex.protocol import generate_content as gc
from openvertex.translate.context import ResponseContext
from openvertex.translate.response import candidate_to_choice
from openvertex.translate.stream import ChunkTranslator

ANSWER = ["Paris", " is the capital [1]. ", "Ça va — très bien."]


def _metadata(answer: str) -> dict[str, Any]:
    def support(sentence: str) -> dict[str, Any]:
        start = len(answer[: answer.index(sentence)].encode())
        segment = {"startIndex": start, "endIndex": start + len(sentence.encode()), "text": sentence}
        return {"segment": segment, "groundingChunkIndices": [0]}

    return {
        "groundingChunks": [{"web": {"uri": "https://example.com/paris", "title": "example.com"}}],
        "groundingSupports": [support("Paris is the capital [1]."), support("Ça va — très bien.")],
    }


def _parts() -> list[gc.Part]:
    # A thought ending with the text of the answer part after it: the one place a citation could
    # be put wrong, by matching text instead of parts.
    thoughts = [gc.Part(text="The answer is", thought=True), gc.Part(text=" Paris", thought=True)]
    return thoughts + [gc.Part(text=text) for text in ANSWER]


def _quoted(content: str, annotations: list[Any]) -> list[str]:
    return [content[a.url_citation.start_index : a.url_citation.end_index] for a in annotations]


def test_whole() -> None:
    metadata = _metadata("".join(ANSWER))
    candidate = gc.Candidate(content=gc.Content(role="model", parts=_parts()), grounding_metadata=metadata)
    message = candidate_to_choice(candidate, 0, ResponseContext(model="m", thought_marker="think")).message
    assert message.content is not None and message.content.startswith("<think>")
    assert _quoted(message.content, message.annotations or []) == ["Paris is the capital [1].", "Ça va — très bien."]


def test_streamed() -> None:
    translator = ChunkTranslator(ResponseContext(model="m", thought_marker="think"))
    content, annotations = "", []
    parts = _parts()
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        candidate = gc.Candidate(
            index=0,
            content=gc.Content(role="model", parts=[part]),
            finish_reason="STOP" if last else None,
            grounding_metadata=_metadata("".join(ANSWER)) if last else None,
        )
        for chunk in translator.feed(gc.GenerateContentResponse(candidates=[candidate])):
            content += chunk.choices[0].delta.content or ""
            annotations += chunk.choices[0].delta.annotations or []
    assert _quoted(content, annotations) == ["Paris is the capital [1].", "Ça va — très bien."]
