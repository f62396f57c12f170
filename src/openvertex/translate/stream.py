"""A stream of GenerateContentResponse chunks → chat.completion.chunk events (spec §5).

Every chunk repeats `delta.role`; `finish_reason` appears only on a candidate's last
chunk, and `usage` rides on the very last chunk (no separate usage-only chunk) [D V-EX].
"""

from __future__ import annotations

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.citations import url_citations
from openvertex.translate.context import ResponseContext, answer_created
from openvertex.translate.logprobs import logprobs_result_to_openai
from openvertex.translate.response import PartTranslator, answer_spans
from openvertex.translate.usage import usage_metadata_to_usage


class ChunkTranslator:
    def __init__(self, ctx: ResponseContext, *, candidate_count: int = 1, include_usage: bool = True) -> None:
        self._ctx = ctx
        self._candidate_count = candidate_count
        self._include_usage = include_usage
        self._parts: dict[int, PartTranslator] = {}
        self._finished: set[int] = set()
        self._emitted: dict[int, int] = {}  # characters of content sent, per candidate
        self._spans: dict[int, list[tuple[int, str]]] = {}  # where its answer text parts went
        self._usage = gc.UsageMetadata()
        self._response_id: str | None = None
        self._created: int | None = None

    def _chunk(self, index: int, delta: oa.Delta, finish_reason: str | None = None) -> oa.ChatCompletionChunk:
        return oa.ChatCompletionChunk(
            id=self._response_id or self._ctx.response_id,
            created=self._created or self._ctx.created,
            model=self._ctx.model,
            choices=[oa.ChunkChoice(index=index, delta=delta, finish_reason=finish_reason)],
        )

    def _translator(self, index: int) -> PartTranslator:
        if index not in self._parts:
            self._parts[index] = PartTranslator(self._ctx, response_id=self._response_id, candidate=index)
        return self._parts[index]

    def feed(self, response: gc.GenerateContentResponse) -> list[oa.ChatCompletionChunk]:
        if self._response_id is None and response.response_id:  # the answer's own id and time, once
            self._response_id = response.response_id
            self._created = answer_created(response.create_time, self._ctx)
        if response.usage_metadata is not None:
            self._usage = response.usage_metadata
        chunks: list[oa.ChatCompletionChunk] = []
        if not response.candidates and response.prompt_feedback and response.prompt_feedback.block_reason:
            self._finished.add(0)
            chunks.append(self._chunk(0, oa.Delta(), "content_filter"))
        for position, candidate in enumerate(response.candidates or []):
            chunks.extend(self._candidate_chunks(candidate.index_at(position), candidate))
        return self._with_usage(chunks)

    def _candidate_chunks(self, index: int, candidate: gc.Candidate) -> list[oa.ChatCompletionChunk]:
        translator = self._translator(index)
        parts = candidate.content_parts()
        translated = [translator.translate(part) for part in parts]
        deltas = [d for d in translated if d is not None]
        if any(part.text for part in parts):  # where the answer's text went, for its citations
            spans = self._spans.setdefault(index, [])
            spans += answer_spans(parts, translated, self._emitted.get(index, 0))
        self._emitted[index] = self._emitted.get(index, 0) + sum(len(d.content or "") for d in deltas)
        if candidate.grounding_metadata:
            annotations = url_citations(candidate.grounding_metadata, self._spans.get(index, []))
            if annotations:
                deltas.append(oa.Delta(annotations=annotations))
        reason = None
        if candidate.finish_reason is not None:
            closing = translator.close()
            if closing is not None:
                deltas.append(closing)
            self._finished.add(index)
            reason = translator.finish_reason(candidate.finish_reason)
        logprobs = logprobs_result_to_openai(candidate.logprobs_result)
        if not deltas and reason is None and logprobs is None:
            return []
        last = deltas.pop() if deltas else oa.Delta()
        chunks = [self._chunk(index, d) for d in deltas] + [self._chunk(index, last, reason)]
        chunks[-1].choices[0].logprobs = logprobs  # this response's tokens, on its last chunk
        return chunks

    def _with_usage(self, chunks: list[oa.ChatCompletionChunk]) -> list[oa.ChatCompletionChunk]:
        done = len(self._finished) >= self._candidate_count
        if chunks and done and chunks[-1].choices[0].finish_reason is not None and self._include_usage:
            chunks[-1].usage = usage_metadata_to_usage(self._usage)
        return chunks

    def finish(self) -> list[oa.ChatCompletionChunk]:
        """Close candidates the upstream never finished; the last of them carries usage."""
        chunks: list[oa.ChatCompletionChunk] = []
        for index in range(self._candidate_count):
            if index not in self._finished:
                translator = self._translator(index)
                self._finished.add(index)
                chunks.append(self._chunk(index, translator.close() or oa.Delta(), translator.finish_reason(None)))
        return self._with_usage(chunks)
