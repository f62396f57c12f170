"""Route handlers: the Vertex chat completions surface, OpenAI conveniences, health; the native
surfaces' routes come from http/native.py."""

from __future__ import annotations

import asyncio
import os
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openvertex.errors import InvalidArgumentError, NotFoundError, UnavailableError
from openvertex.http.auth import Authenticator
from openvertex.http.body import INLINE_PARSE_BYTES, load_object, read_body, read_json, validate
from openvertex.http.console import Console
from openvertex.http.console_api import ConsoleApi
from openvertex.http.disconnect import until_disconnect
from openvertex.http.embeddings import EmbeddingHandlers
from openvertex.http.errors import error_body
from openvertex.http.lifecycle import Lifecycle
from openvertex.http.native import NativeHandlers
from openvertex.http.openapi import openapi_json
from openvertex.http.relay import PinnedBackend, RelayHandlers
from openvertex.http.sse import OPENAI_SSE, STREAM_HEADERS, EventStreamResponse, Framed
from openvertex.metrics import Metrics
from openvertex.protocol import chat_completions as oa
from openvertex.service.chat import ChatService
from openvertex.translate.bounded_json import JsonLimits

VERTEX_CHAT = "/{version:str}/projects/{project:str}/locations/{location:str}/endpoints/{endpoint:str}/chat/completions"
_VERSIONS = frozenset({"v1", "v1beta1"})


class Handlers:
    def __init__(
        self,
        service: ChatService,
        native: NativeHandlers,
        auth: Authenticator,
        max_body_bytes: int,
        *,
        metrics: Metrics,
        json_limits: JsonLimits | None = None,
        relay: RelayHandlers | None = None,
        lifecycle: Lifecycle | None = None,
        predict_model: str | None = None,
        console: ConsoleApi | None = None,
        console_page: Console | None = None,
        embeddings: EmbeddingHandlers | None = None,
    ) -> None:
        self.service = service
        self.metrics = metrics
        self.lifecycle = lifecycle or Lifecycle()
        self.predict_model = predict_model  # for a prediction that names no model
        self.relay = relay  # relay endpoints (self-deployed); None: only `openapi` exists
        self.native = native
        self.console = console  # the JSON the web console reads; it checks keys itself
        self.console_page = console_page  # the console's own files
        self.embeddings = embeddings  # OpenAI's embeddings routes
        self.auth = auth
        self.max_body_bytes = max_body_bytes
        self.json_limits = json_limits or JsonLimits()
        self.started = int(time.time())
        self._openapi: bytes | None = None  # built on first request

    async def vertex_chat(self, request: Request) -> Response:
        params = request.path_params
        if params["version"] not in _VERSIONS:
            raise NotFoundError("The requested URL was not found on this server.")
        endpoint = params["endpoint"]
        if endpoint == "openapi":
            return await self.chat(request)
        if self.relay is None:
            raise NotFoundError(f"Endpoint `{endpoint}` not found.")
        # Self-deployed endpoints (…/endpoints/{ENDPOINT_ID}): a configured backend, else replicas.
        pinned = self.relay.pinned.get(endpoint)
        if pinned is not None:
            return await self.chat(request, pinned)
        return await self.relay.relay(request, endpoint)

    async def chat(self, request: Request, pinned: PinnedBackend | None = None) -> Response:
        raw = await read_body(request, self.max_body_bytes)
        body = await read_json(raw, oa.ChatCompletionRequest, self.json_limits)
        # Until the first byte is sent, only the receive channel tells that the client left:
        # watch it, so a hang-up frees the engine at once instead of at the deadline.
        return await until_disconnect(request.receive, self._answer(body, pinned))

    async def predict(self, request: Request) -> Response:
        """A Vertex AI custom container's prediction route: `predict` sends `{"instances": [chat
        requests]}` and gets `{"predictions": [chat.completion]}`; `rawPredict` sends a chat
        request as it is (streaming or not) and gets its answer as it is."""
        raw = await read_body(request, self.max_body_bytes)
        large = len(raw) > INLINE_PARSE_BYTES  # parsed off the event loop, as read_json does
        data = (
            await asyncio.to_thread(load_object, raw, self.json_limits) if large else load_object(raw, self.json_limits)
        )
        default = self.predict_model
        if "instances" not in data:
            body = validate(data, oa.ChatCompletionRequest)
            body = body if body.model or default is None else body.model_copy(update={"model": default})
            return await until_disconnect(request.receive, self._answer(body, None))
        envelope = validate(data, oa.PredictRequest)
        for i, body in enumerate(envelope.instances):
            if body.stream:
                raise InvalidArgumentError(
                    "predict answers whole; stream with rawPredict", param=f"instances[{i}].stream"
                )

        async def one(body: oa.ChatCompletionRequest) -> oa.ChatCompletion:
            prepared = await self.service.prepare(body, default_model=default)
            return await self.service.complete(prepared)

        async def all_of() -> list[oa.ChatCompletion]:
            # One instance failing fails the prediction: the others are cancelled, not left running.
            try:
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(one(body)) for body in envelope.instances]
            except BaseExceptionGroup as failed:
                raise failed.exceptions[0] from None
            return [task.result() for task in tasks]

        answers = await until_disconnect(request.receive, all_of())
        deployed = os.environ.get("AIP_DEPLOYED_MODEL_ID")
        reply = oa.PredictResponse(predictions=list(answers), deployedModelId=deployed)
        return Response(reply.model_dump_json(exclude_none=True), media_type="application/json")

    async def _answer(self, body: oa.ChatCompletionRequest, pinned: PinnedBackend | None) -> Response:
        if pinned is None:
            prepared = await self.service.prepare(body)
        else:  # the endpoint is the deployed model: it answers whatever model the request names
            prepared = await self.service.prepare(
                body.model_copy(update={"model": pinned.model}), backend=pinned.backend
            )
        if not body.stream:
            completion = await self.service.complete(prepared)
            return Response(completion.model_dump_json(), media_type="application/json")
        framed = Framed(
            self.service.stream(prepared),
            OPENAI_SSE,
            dump=lambda chunk: chunk.model_dump_json().encode(),
            error_body=error_body,
        )
        await framed.start()
        return EventStreamResponse(framed, headers=STREAM_HEADERS, media_type=OPENAI_SSE.media_type)

    async def models(self, request: Request) -> Response:
        """OpenAI's model list; the Gemini API (google-genai 3.x) lists models on this same path, so
        its `models` key is there too, and each SDK reads its own."""
        cards = [
            oa.ModelCard(
                id=model,
                created=self.started,
                owned_by="openvertex",
                max_output_tokens=backend.capabilities.max_output_tokens,
                status=oa.ModelStatus(value=state) if (state := backend.load().model_state) else None,
            )
            for model, backend in self.service.router.models()
        ]
        body = oa.ModelList(data=cards).model_dump(mode="json") | {"models": self.native.service.listed("gemini")}
        return JSONResponse(body)

    async def openapi(self, request: Request) -> Response:
        if self._openapi is None:
            self._openapi = openapi_json(self.routes())
        return Response(self._openapi, media_type="application/json")

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if self.lifecycle.draining:
            raise UnavailableError("The server is shutting down.")
        if not self.service.router.ready():
            raise UnavailableError("The model is not ready: still loading, or restarting after a fault.")
        return JSONResponse({"status": "ready"})

    def container_routes(self, health: str | None, predict: str | None) -> list[Route]:
        """The routes Vertex AI calls on a custom container (AIP_HEALTH_ROUTE, AIP_PREDICT_ROUTE);
        a prediction passes without a key while none exists (the endpoint's IAM stands before it)."""
        routes = [Route(health, self.readyz, methods=["GET"])] if health else []
        if predict:
            routes.append(Route(predict, self.auth.guard(self.predict, anonymous=True), methods=["POST"]))
        return routes

    def routes(self) -> list[Route]:
        api = [
            Route(VERTEX_CHAT, self.vertex_chat, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            *self.native.routes(),
            *(self.embeddings.routes() if self.embeddings is not None else []),
        ]
        return [
            *self.auth.guard_routes(api),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"], name="metrics"),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            *(self.console.routes() if self.console is not None else []),
            *(self.console_page.routes() if self.console_page is not None else []),
        ]
