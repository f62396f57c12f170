"""The generation pipeline both surfaces share: a GenerateContentRequest in, GenerateContentResponse
chunks out; it knows no surface.

prepare: check what the backend cannot honour → media → put the named context cache in front →
check thought signatures → search for grounding. Then one loop, under one deadline: the prompt's
safety check, the backend's chunks through the response stages (service/stages.py). A stream is
that loop's chunks; a whole answer is the backend's whole answer through the same loop, merged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from openvertex.backends.base import Backend, merge_chunks
from openvertex.errors import ApiError, DeadlineExceededError
from openvertex.interrupts import Deadline
from openvertex.metrics import Metrics
from openvertex.protocol import generate_content as gc
from openvertex.request_record import RequestRecord, current_record
from openvertex.service.cached_contents import CachedContents
from openvertex.service.capabilities import Namer, check_capabilities, check_generates, native_name
from openvertex.service.faults import Fault, Faults, before_answer, stage_for
from openvertex.service.grounding import Grounding, GroundingPolicy
from openvertex.service.keys import check_model
from openvertex.service.media import MediaReader
from openvertex.service.routing import Router
from openvertex.service.safety import SafetyCheck, SafetyPolicy
from openvertex.service.signatures import ThoughtSigner
from openvertex.service.stages import Stage, ThoughtHiding, UsageCount, feed_all, finish_all
from openvertex.translate.resources import ModelName

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Prepared:
    backend: Backend
    request: gc.GenerateContentRequest
    model: ModelName
    include_thoughts: bool
    cached_tokens: int  # the prompt tokens a named context cache holds
    timeout_s: float  # until the answer must be complete
    safety: SafetyCheck | None = None  # what is checked here of the prompt and the answer
    grounding: Grounding | None = None  # the search done here for the request
    fault: Fault | None = None  # injected on purpose (service/faults.py)


class Pipeline:
    def __init__(
        self,
        router: Router,
        caches: CachedContents,
        *,
        metrics: Metrics,
        timeout_s: float,
        signer: ThoughtSigner,
        signatures_required: Callable[[ModelName], bool] = lambda model: True,
        media: MediaReader,
        safety: SafetyPolicy,
        grounding: GroundingPolicy,
        faults: Faults | None = None,
    ) -> None:
        self.router = router
        self.faults = faults or Faults()
        self.media = media
        self.safety = safety
        self.grounding = grounding
        self.caches = caches
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.signer = signer
        self.signatures_required = signatures_required

    def _signs(self, backend: Backend) -> bool:
        """openvertex signs and checks thoughts for backends that do not do it themselves."""
        return not backend.capabilities.thought_signatures

    async def prepare(
        self,
        request: gc.GenerateContentRequest,
        model: ModelName,
        backend: Backend,
        *,
        dialect: gc.Dialect,
        name: Namer = native_name,
        timeout_s: float | None = None,
    ) -> Prepared:
        """Everything that can fail with a 4xx before any generation starts. `timeout_s`: the
        client's own deadline, within the server's."""
        record = current_record()
        record.model, record.backend = self.router.routed_id(model), self.router.name_of(backend)
        check_model(record, record.model)
        check_generates(backend.capabilities)
        fault = self.faults.draw(record.model, record.key)
        await before_answer(fault)  # Gemini's errors before anything: the backend is not asked
        grounding = self.grounding.plan(request, backend.capabilities, name)
        if grounding is not None:
            request = grounding.without_search(request)
        check_capabilities(request, backend.capabilities, name)
        safety = self.safety.plan(request, backend.capabilities, name)
        request = await self._media(request, backend, name)
        deadline = min(timeout_s, self.timeout_s) if timeout_s is not None else self.timeout_s
        cached_tokens = 0
        if request.cached_content is not None:
            try:  # rebuilding a lost prefix is part of the request's time
                async with asyncio.timeout(deadline):
                    applied = await self.caches.apply(request, model, backend, dialect)
            except TimeoutError:
                raise DeadlineExceededError(f"The request did not finish within {deadline:g} s.") from None
            request, cached_tokens = applied.request, applied.tokens
            if backend.capabilities.reads_media_uris:  # a cache made before its bucket was disallowed
                self.media.check_buckets(request, name)
        if self._signs(backend):
            self.signer.check_request(request.contents, required=self.signatures_required(model))
        thinking = request.generation_config.thinking_config if request.generation_config else None
        if grounding is not None:
            request = await grounding.search(request)
        include_thoughts = bool(thinking and thinking.include_thoughts)
        return Prepared(
            backend, request, model, include_thoughts, cached_tokens, deadline, safety, grounding, fault=fault
        )

    async def prompt(
        self,
        request: gc.GenerateContentRequest,
        model: ModelName,
        backend: Backend,
        *,
        dialect: gc.Dialect,
    ) -> tuple[gc.GenerateContentRequest, int]:
        """The prompt as the model would read it, for counting its tokens: media read, a named
        context cache's content put in front (not warmed), and the tokens that cache holds."""
        check_model(current_record(), self.router.routed_id(model))
        check_capabilities(request, backend.capabilities)
        request = await self._media(request, backend, native_name)
        if request.cached_content is None:
            return request, 0
        applied = await self.caches.apply(request, model, backend, dialect, warm=False)
        if backend.capabilities.reads_media_uris:
            self.media.check_buckets(applied.request, native_name)
        return applied.request, applied.tokens

    async def _media(
        self, request: gc.GenerateContentRequest, backend: Backend, name: Namer
    ) -> gc.GenerateContentRequest:
        """Inline media checked; what URIs point at read, for a backend that does not read them."""
        await self.media.check_inline(request, name)
        if backend.capabilities.reads_media_uris:
            self.media.check_buckets(request, name)
            return request
        return await self.media.inline(request, name)

    def _stages(self, prepared: Prepared, *, streaming: bool) -> list[Stage]:
        stages: list[Stage] = []
        if self._signs(prepared.backend):
            stages.append(self.signer.stage())  # sees the thoughts it seals
        if prepared.grounding is not None:
            stages.append(prepared.grounding.stage(include_thoughts=prepared.include_thoughts))
        if not prepared.include_thoughts:
            stages.append(ThoughtHiding())
        if prepared.safety is not None:
            stages.append(prepared.safety.stage())  # rates what the client would get
        stages.append(UsageCount(current_record(), prepared.cached_tokens))
        fault = stage_for(prepared.fault, streaming=streaming)
        if fault is not None:
            stages.append(fault)  # last: it counts the chunks the client gets
        return stages

    async def generate(self, prepared: Prepared) -> gc.GenerateContentResponse:
        """The whole answer: the merge of the chunks the stages give for the backend's whole answer
        (a backend that signs its own answers, Gemini, keeps the shape of its parts)."""
        chunks = [chunk async for chunk in self._run(prepared, streaming=False)]
        return merge_chunks(chunks, join_text=self._signs(prepared.backend))

    def stream(self, prepared: Prepared) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        return self._run(prepared, streaming=True)

    async def _run(self, prepared: Prepared, *, streaming: bool) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        """The one loop: closing it (a client that left) closes the backend's stream, and the
        deadline cancels only the waits for the backend and the stages, never the consumer's work."""
        stages = self._stages(prepared, streaming=streaming)
        deadline = Deadline(prepared.timeout_s)
        clock = _StreamClock(self.metrics, current_record()) if streaming else None
        upstream: AsyncGenerator[gc.GenerateContentResponse, None] | None = None
        try:
            backend, request, model = prepared.backend, prepared.request, prepared.model.routed
            safety = prepared.safety
            blocked = None if safety is None else await deadline.wait(safety.prompt_block(request, backend, model))
            if blocked is not None:  # the answer's first and only chunk
                upstream = _once(blocked)
            elif streaming:
                upstream = backend.stream(request, model=model)
            else:
                upstream = _once(lambda: backend.generate(request, model=model))
            while not any(stage.stopped for stage in stages):
                outs = await deadline.wait(_next(upstream, stages))  # one wait a chunk: its making and its stages
                if outs is None:
                    break
                for out in outs if clock is None else clock.sent(outs):
                    yield out
            for out in await deadline.wait(finish_all(stages)):
                yield out
            if deadline.passed:  # passed while the consumer had the last chunk
                raise TimeoutError
        except TimeoutError:
            raise DeadlineExceededError(f"The request did not finish within {prepared.timeout_s:g} s.") from None
        finally:
            deadline.cancel()
            if upstream is not None:
                await upstream.aclose()


def _says_something(chunk: gc.GenerateContentResponse) -> bool:
    """Whether a stream's chunk carries more than the usage so far (which the stages counted)."""
    if chunk.prompt_feedback is not None:
        return True
    return any(
        candidate.content_parts()
        or candidate.finish_reason is not None
        or candidate.safety_ratings
        or candidate.grounding_metadata
        or candidate.logprobs_result is not None
        or candidate.model_extra
        for candidate in chunk.candidates or []
    )


async def _next(
    upstream: AsyncGenerator[gc.GenerateContentResponse, None], stages: Sequence[Stage]
) -> list[gc.GenerateContentResponse] | None:
    """The next chunk of the backend's answer through the stages; None when the answer ended."""
    try:
        chunk = await anext(upstream)
    except StopAsyncIteration:
        return None
    return await feed_all(stages, [chunk])


async def _once(
    answer: gc.GenerateContentResponse | Callable[[], Awaitable[gc.GenerateContentResponse]],
) -> AsyncGenerator[gc.GenerateContentResponse, None]:
    """A whole answer as a stream of one chunk."""
    yield answer if isinstance(answer, gc.GenerateContentResponse) else await answer()


HEARTBEAT_S = 15.0  # the longest a stream stays silent while the model works


class _StreamClock:
    """Time to first chunk and the gaps between chunks, for the latency histograms."""

    def __init__(self, metrics: Metrics, record: RequestRecord) -> None:
        self._metrics = metrics
        self._record = record
        self._started = self._last = time.monotonic()
        self._first = True

    def sent(self, chunks: list[gc.GenerateContentResponse]) -> list[gc.GenerateContentResponse]:
        """The chunks a stream sends, timed: not those with nothing but the usage so far (a hidden
        thought, a call being built), of which Gemini sends nothing, unless the stream has been
        silent for HEARTBEAT_S (a proxy would take it for dead)."""
        sent = []
        for chunk in chunks:
            if _says_something(chunk) or time.monotonic() - self._last >= HEARTBEAT_S:
                self.tick()
                sent.append(chunk)
        return sent

    def tick(self) -> None:
        now = time.monotonic()
        if self._first:
            self._metrics.time_to_first_token.observe(now - self._started)
            self._record.time_to_first_token_ms = round((now - self._started) * 1000, 3)
            self._first = False
        else:
            self._metrics.time_per_token.observe(now - self._last)
        self._last = now


class Translation(Protocol[T]):
    """How a surface turns the pipeline's chunks into its own stream's items."""

    def feed(self, response: gc.GenerateContentResponse) -> list[T]: ...

    def finish(self) -> list[T]: ...


@dataclass(frozen=True, slots=True)
class Streamed(Generic[T]):
    """A surface's stream: the pipeline's chunks, the surface's translation of them, and how the
    surface names an error found on the way."""

    chunks: AsyncGenerator[gc.GenerateContentResponse, None]
    translation: Translation[T]
    rename: Callable[[ApiError], ApiError] = lambda error: error
