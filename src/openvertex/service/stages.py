"""The response stages: each step that inspects or changes an answer, fed chunk by chunk.

A stage has one implementation for streamed and whole answers alike: a whole answer is its
backend's answer fed as one chunk and the outputs merged, a stream is fed as it comes, so the two
cannot drift. The stages in order: thought signing (service/signatures.py) → grounding metadata
(service/grounding.py) → safety (service/safety.py) → thought hiding → usage → a fault injected on
purpose (service/faults.py), when a request has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from openvertex.protocol import generate_content as gc
from openvertex.request_record import RequestRecord

Chunk = gc.GenerateContentResponse


class Stage(Protocol):
    @property
    def stopped(self) -> bool:
        """Nothing more of the answer is wanted: the pipeline stops its backend."""
        ...

    async def feed(self, chunk: Chunk) -> list[Chunk]:
        """The chunks to pass on for `chunk` (none while it holds them, several when it lets go)."""
        ...

    async def finish(self) -> list[Chunk]:
        """The backend's answer ended: what the stage still holds."""
        ...


async def feed_all(stages: Sequence[Stage], chunks: list[Chunk]) -> list[Chunk]:
    """`chunks` through every stage in order."""
    for stage in stages:
        if not chunks:
            break
        fed: list[Chunk] = []
        for chunk in chunks:
            fed += await stage.feed(chunk)
        chunks = fed
    return chunks


async def finish_all(stages: Sequence[Stage]) -> list[Chunk]:
    """What each stage still holds, passed through the stages after it."""
    chunks: list[Chunk] = []
    for position, stage in enumerate(stages):
        chunks += await feed_all(stages[position + 1 :], await stage.finish())
    return chunks


class ThoughtHiding:
    """Thoughts reach the client only when asked for (includeThoughts); their signatures carry them
    either way."""

    stopped = False

    async def feed(self, chunk: Chunk) -> list[Chunk]:
        for candidate in chunk.candidates or []:
            content = candidate.content
            if content is not None and any(part.thought for part in content.parts):
                content.parts = [part for part in content.parts if not part.thought]
        return [chunk]

    async def finish(self) -> list[Chunk]:
        return []


class UsageCount:
    """An answer's usage: the tokens a named context cache held reported as cached, and its tokens
    added to its request's record (a stream's usage is cumulative, and one request, a prediction of
    several instances, may hold several answers)."""

    stopped = False

    def __init__(self, record: RequestRecord, cached_tokens: int) -> None:
        self._record = record
        self._cached_tokens = cached_tokens
        self._prompt = self._output = 0

    async def feed(self, chunk: Chunk) -> list[Chunk]:
        usage = chunk.usage_metadata
        if usage is not None:
            if self._cached_tokens:
                cached = min(self._cached_tokens, usage.prompt_token_count or 0)
                usage.cached_content_token_count = max(usage.cached_content_token_count or 0, cached) or None
            self._count(usage)
        return [chunk]

    def _count(self, usage: gc.UsageMetadata) -> None:
        prompt = usage.prompt_token_count or 0
        output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        record = self._record
        record.prompt_tokens = (record.prompt_tokens or 0) + prompt - self._prompt
        record.output_tokens = (record.output_tokens or 0) + output - self._output
        self._prompt, self._output = prompt, output

    async def finish(self) -> list[Chunk]:
        return []
