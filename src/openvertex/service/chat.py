"""The OpenAI-compatible surface: chat request → GenerateContentRequest → the pipeline → chat.completion
(whole, or as chat.completion.chunk events)."""

from __future__ import annotations

from dataclasses import dataclass

from openvertex.errors import ApiError, InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.service.capabilities import check_openai_media
from openvertex.service.pipeline import Pipeline, Prepared, Streamed
from openvertex.service.routing import Router
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
    def __init__(self, pipeline: Pipeline, router: Router) -> None:
        self.pipeline = pipeline
        self.router = router

    async def prepare(
        self, request: oa.ChatCompletionRequest, *, default_model: str | None = None, backend: str | None = None
    ) -> PreparedChat:
        """Everything that can fail with a 4xx before any generation starts. `backend`: the
        configured backend a self-deployed endpoint names, instead of the model's route."""
        model = request.model or default_model
        if model is None:
            raise InvalidArgumentError("a model is required", param="model")
        chosen = self.router.resolve(model) if backend is None else self.router.backends[backend]
        check_openai_media(request, chosen.capabilities)
        prepared = await self.pipeline.prepare(
            chat_request_to_generate_content(request),
            model_name_from_id(model),
            chosen,
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
            response = await self.pipeline.generate(chat.prepared)
        except InvalidArgumentError as error:  # found while generating, named by its native path
            raise renamed(error, chat.request) from None
        return generate_content_to_completion(response, chat.ctx)

    def stream(self, chat: PreparedChat) -> Streamed[oa.ChatCompletionChunk]:
        translator = ChunkTranslator(chat.ctx, candidate_count=chat.candidate_count, include_usage=chat.include_usage)

        def rename(error: ApiError) -> ApiError:
            return renamed(error, chat.request) if isinstance(error, InvalidArgumentError) else error

        return Streamed(self.pipeline.stream(chat.prepared), translator, rename)
