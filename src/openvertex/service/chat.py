"""The OpenAI-compatible surface: chat request → GenerateContentRequest → the shared pipeline → chat.completion."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.service.capabilities import check_openai_media
from openvertex.service.generation import Backend, Generator, Prepared
from openvertex.translate.context import ResponseContext
from openvertex.translate.params import openai_param, renamed
from openvertex.translate.request import chat_request_to_generate_content
from openvertex.translate.resources import model_name_from_id
from openvertex.translate.response import generate_content_to_completion
from openvertex.translate.stream import ChunkTranslator


@dataclass(frozen=True, slots=True)
class PreparedChat:
    request: oa.ChatCompletionRequest
    prepared: Prepared
    ctx: ResponseContext
    candidate_count: int
    include_usage: bool


class ChatService:
    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    async def prepare(
        self, request: oa.ChatCompletionRequest, *, default_model: str | None = None, backend: Backend | None = None
    ) -> PreparedChat:
        """Everything that can fail with a 4xx before any generation starts. `backend`: the one a
        self-deployed endpoint names, instead of the model's route."""
        model = request.model or default_model
        if model is None:
            raise InvalidArgumentError("a model is required", param="model")
        if backend is None:
            backend = self.generator.router.resolve(model)
        check_openai_media(request, backend.capabilities)
        prepared = await self.generator.prepare(
            chat_request_to_generate_content(request),
            model_name_from_id(model),
            backend,
            dialect="vertex",
            name=lambda path: openai_param(path, request),  # what it refuses, named as this surface names it
        )
        options = request.stream_options
        return PreparedChat(
            request=request,
            prepared=prepared,
            ctx=ResponseContext(model=model, thought_marker=request.google_extensions.thought_tag_marker),
            candidate_count=request.n or 1,
            # Vertex always puts usage on the last chunk; only an explicit false removes it [I].
            include_usage=options is None or options.include_usage is not False,
        )

    async def complete(self, chat: PreparedChat) -> oa.ChatCompletion:
        try:
            response = await self.generator.generate(chat.prepared)
        except InvalidArgumentError as error:  # found while generating, named by its native path
            raise renamed(error, chat.request) from None
        return generate_content_to_completion(response, chat.ctx)

    async def stream(self, chat: PreparedChat) -> AsyncIterator[oa.ChatCompletionChunk]:
        translator = ChunkTranslator(chat.ctx, candidate_count=chat.candidate_count, include_usage=chat.include_usage)
        responses = self.generator.stream(chat.prepared)
        try:
            async for response in responses:
                for chunk in translator.feed(response):
                    yield chunk
        except InvalidArgumentError as error:
            raise renamed(error, chat.request) from None
        finally:
            await responses.aclose()  # type: ignore[attr-defined]
        for chunk in translator.finish():
            yield chunk
