"""The chat pipeline: validate → translate → route → check capabilities → generate → translate back."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from openvertex.backends.base import Backend
from openvertex.errors import DeadlineExceededError, InvalidArgumentError
from openvertex.metrics import Metrics
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.service.capabilities import check_capabilities
from openvertex.service.routing import Router
from openvertex.service.signatures import ThoughtSigner
from openvertex.translate.context import ResponseContext
from openvertex.translate.request import chat_request_to_generate_content
from openvertex.translate.response import generate_content_to_completion
from openvertex.translate.stream import ChunkTranslator


@dataclass(frozen=True, slots=True)
class PreparedChat:
    backend: Backend
    request: gc.GenerateContentRequest
    ctx: ResponseContext
    candidate_count: int
    include_usage: bool
    include_thoughts: bool


class ChatService:
    def __init__(
        self,
        router: Router,
        *,
        metrics: Metrics,
        timeout_s: float,
        signer: ThoughtSigner,
        optional_signatures: Sequence[str] = (),
    ) -> None:
        self.router = router
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.signer = signer
        self.optional_signatures = optional_signatures

    def _signs(self, backend: Backend) -> bool:
        """openvertex signs and checks thoughts for backends that do not do it themselves."""
        return not backend.capabilities.thought_signatures

    def prepare(self, request: oa.ChatCompletionRequest, *, default_model: str | None = None) -> PreparedChat:
        """Everything that can fail with a 400/404 before any generation starts."""
        model = request.model or default_model
        if model is None:
            raise InvalidArgumentError("a model is required", param="model")
        backend = self.router.resolve(model)
        translated = chat_request_to_generate_content(request)
        check_capabilities(request, translated, backend.capabilities)
        if self._signs(backend):
            optional = any(fnmatch.fnmatchcase(model, glob) for glob in self.optional_signatures)
            self.signer.check_request(translated.contents, required=not optional)
        options = request.stream_options
        return PreparedChat(
            backend=backend,
            request=translated,
            ctx=ResponseContext(model=model, thought_marker=request.google_extensions.thought_tag_marker),
            candidate_count=request.n or 1,
            # Vertex always puts usage on the last chunk; only an explicit false removes it [I].
            include_usage=options is None or options.include_usage is not False,
            include_thoughts=_includes_thoughts(translated),
        )

    def _deadline_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(f"The request did not finish within {self.timeout_s:g} s.")

    async def complete(self, chat: PreparedChat) -> oa.ChatCompletion:
        try:
            response = await asyncio.wait_for(chat.backend.generate(chat.request, model=chat.ctx.model), self.timeout_s)
        except TimeoutError:
            raise self._deadline_error() from None
        if self._signs(chat.backend):
            self.signer.sign_response(response)
        if not chat.include_thoughts:
            _drop_thoughts(response)
        return generate_content_to_completion(response, chat.ctx)

    async def stream(self, chat: PreparedChat) -> AsyncIterator[oa.ChatCompletionChunk]:
        translator = ChunkTranslator(chat.ctx, candidate_count=chat.candidate_count, include_usage=chat.include_usage)
        upstream = chat.backend.stream(chat.request, model=chat.ctx.model)
        if self._signs(chat.backend):
            upstream = self.signer.sign_stream(upstream)  # sees the thoughts it seals
        clock = _StreamClock(self.metrics)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                try:
                    response = await asyncio.wait_for(anext(upstream), deadline - time.monotonic())
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise self._deadline_error() from None
                if not chat.include_thoughts:
                    _drop_thoughts(response)
                for chunk in translator.feed(response):
                    clock.tick()
                    yield chunk
        finally:
            await upstream.aclose()  # type: ignore[attr-defined]
        for chunk in translator.finish():
            yield chunk


def _includes_thoughts(request: gc.GenerateContentRequest) -> bool:
    thinking = request.generation_config.thinking_config if request.generation_config else None
    return bool(thinking and thinking.include_thoughts)


def _drop_thoughts(response: gc.GenerateContentResponse) -> None:
    """Thoughts reach the client only when asked for (include_thoughts); their signatures
    carry them either way."""
    for candidate in response.candidates or []:
        if candidate.content is not None:
            candidate.content.parts = [part for part in candidate.content.parts if not part.thought]


class _StreamClock:
    """Time to first chunk and the gaps between chunks, for the latency histograms."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = self._last = time.monotonic()
        self._first = True

    def tick(self) -> None:
        now = time.monotonic()
        if self._first:
            self._metrics.time_to_first_token.observe(now - self._started)
            self._first = False
        else:
            self._metrics.time_per_token.observe(now - self._last)
        self._last = now
