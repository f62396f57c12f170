"""The chat pipeline: validate → translate → route → check capabilities → generate → translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from openvertex.backends.base import Backend
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.service.capabilities import check_capabilities
from openvertex.service.routing import Router
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


class ChatService:
    def __init__(self, router: Router) -> None:
        self.router = router

    def prepare(self, request: oa.ChatCompletionRequest, *, default_model: str | None = None) -> PreparedChat:
        """Everything that can fail with a 400/404 before any generation starts."""
        model = request.model or default_model
        if model is None:
            raise InvalidArgumentError("a model is required", param="model")
        backend = self.router.resolve(model)
        translated = chat_request_to_generate_content(request)
        check_capabilities(request, translated, backend.capabilities)
        options = request.stream_options
        return PreparedChat(
            backend=backend,
            request=translated,
            ctx=ResponseContext(model=model, thought_marker=request.google_extensions.thought_tag_marker),
            candidate_count=request.n or 1,
            # Vertex always puts usage on the last chunk; only an explicit false removes it [I].
            include_usage=options is None or options.include_usage is not False,
        )

    async def complete(self, chat: PreparedChat) -> oa.ChatCompletion:
        response = await chat.backend.generate(chat.request, model=chat.ctx.model)
        return generate_content_to_completion(response, chat.ctx)

    async def stream(self, chat: PreparedChat) -> AsyncIterator[oa.ChatCompletionChunk]:
        translator = ChunkTranslator(chat.ctx, candidate_count=chat.candidate_count, include_usage=chat.include_usage)
        upstream = chat.backend.stream(chat.request, model=chat.ctx.model)
        try:
            async for response in upstream:
                for chunk in translator.feed(response):
                    yield chunk
        finally:
            await upstream.aclose()  # type: ignore[attr-defined]
        for chunk in translator.finish():
            yield chunk
