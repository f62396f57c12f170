"""Embedding routes: OpenAI's `embeddings` (`/v1/embeddings` and Vertex's `…/endpoints/openapi/
embeddings`, a self-deployed endpoint's relayed), and the native `embedContent`,
`batchEmbedContents` and `:predict` methods that http/native.py hands over."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openvertex.errors import NotFoundError
from openvertex.http.body import read_body, read_json
from openvertex.http.disconnect import until_disconnect
from openvertex.http.relay import PinnedBackend, RelayHandlers
from openvertex.protocol import embeddings as em
from openvertex.service.embeddings import EmbeddingModel, EmbeddingService
from openvertex.service.native import ModelCall
from openvertex.service.routing import Router
from openvertex.translate import embeddings as translate
from openvertex.translate.bounded_json import JsonLimits
from openvertex.translate.resources import model_name_from_id

EMBEDDING_METHODS = frozenset({"embedContent", "batchEmbedContents", "predict"})
VERTEX_EMBEDDINGS = "/{version:str}/projects/{project:str}/locations/{location:str}/endpoints/{endpoint:str}/embeddings"
_VERSIONS = frozenset({"v1", "v1beta1"})


def _json(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body).encode(), media_type="application/json")


class EmbeddingHandlers:
    def __init__(
        self,
        service: EmbeddingService,
        router: Router,
        max_body_bytes: int,
        json_limits: JsonLimits,
        *,
        relay: RelayHandlers | None = None,
        pinned: dict[str, PinnedBackend] | None = None,
    ) -> None:
        self.service = service
        self.router = router
        self.max_body_bytes = max_body_bytes
        self.json_limits = json_limits
        self.relay = relay
        self.pinned = pinned or {}

    # ------------------------------------------------------------------ OpenAI

    async def openai(self, request: Request) -> Response:
        return await self._openai(request, None)

    async def vertex(self, request: Request) -> Response:
        params = request.path_params
        if params["version"] not in _VERSIONS:
            raise NotFoundError("The requested URL was not found on this server.")
        endpoint = params["endpoint"]
        if endpoint == "openapi":
            return await self._openai(request, None)
        pinned = self.pinned.get(endpoint)
        if pinned is not None:
            return await self._openai(request, pinned)
        if self.relay is None:
            raise NotFoundError(f"Endpoint `{endpoint}` not found.")
        return await self.relay.relay(request, endpoint, operation="embeddings")

    async def _openai(self, request: Request, pinned: PinnedBackend | None) -> Response:
        raw = await read_body(request, self.max_body_bytes)
        body = await read_json(raw, em.OpenAIEmbeddingRequest, self.json_limits)
        if pinned is None:
            backend = self.router.resolve(body.model)
            model = self.service.resolve(self.router.routed_id(model_name_from_id(body.model)), backend)
        else:  # the endpoint is the deployed model, whatever model the request names
            model = self.service.resolve(pinned.model, self.router.backends[pinned.backend])
        embed = translate.openai_request(body, self.service.limits(model, "openai"))
        embeddings = await until_disconnect(request.receive, self.service.embed(model, embed))
        return Response(
            translate.openai_response(body, embeddings).model_dump_json().encode(), media_type="application/json"
        )

    # ------------------------------------------------------------------ native

    async def native(self, request: Request, call: ModelCall, model: EmbeddingModel) -> Response:
        """embedContent, batchEmbedContents or :predict on a model that embeds."""
        raw = await read_body(request, self.max_body_bytes)
        if call.method == "predict":
            predict = await read_json(raw or b"{}", em.EmbeddingPredictRequest, self.json_limits)
            embed = translate.predict_request(predict, self.service.limits(model, "predict"))
            embeddings = await until_disconnect(request.receive, self.service.embed(model, embed))
            return _json(translate.predict_response(embed, embeddings))
        limits = self.service.limits(model, "native")
        if call.method == "embedContent":
            one = await read_json(raw or b"{}", em.EmbedContentRequest, self.json_limits, dialect=call.dialect)
            embed = translate.embed_content_request(one, call.model.model, call.dialect, limits)
            embeddings = await until_disconnect(request.receive, self.service.embed(model, embed))
            return _json(translate.embed_content_response(embeddings[0], call.dialect).to_json_dict())
        batch = await read_json(raw or b"{}", em.BatchEmbedContentsRequest, self.json_limits, dialect=call.dialect)
        embed = translate.batch_embed_contents_request(batch, call.model.model, call.dialect, limits)
        embeddings = await until_disconnect(request.receive, self.service.embed(model, embed))
        return _json(translate.batch_embed_contents_response(embeddings, call.dialect).to_json_dict())

    def routes(self) -> list[Route]:
        return [
            Route(VERTEX_EMBEDDINGS, self.vertex, methods=["POST"], name="vertex_embeddings"),
            Route("/v1/embeddings", self.openai, methods=["POST"], name="openai_embeddings"),
        ]
