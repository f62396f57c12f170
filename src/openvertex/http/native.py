"""The native surfaces google-genai speaks: Vertex AI and the Gemini Developer API.

Every API version the SDKs use (v1, v1beta, v1beta1, v1alpha), both resource shapes (Vertex's
`projects/P/locations/L/publishers/google/models/M`, express `publishers/google/models/M`,
endpoints; the Gemini API's `models/M`), and context caches under either parent. Success is
always exactly 200 (the SDK refuses anything else, 204 included).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openvertex.errors import InvalidArgumentError, NotFoundError
from openvertex.http.body import read_body, read_json
from openvertex.http.disconnect import until_disconnect
from openvertex.http.embeddings import EMBEDDING_METHODS, EmbeddingHandlers
from openvertex.http.errors import error_body, native_error_body, route_path
from openvertex.http.sse import JSON_ARRAY, NATIVE_SSE, STREAM_HEADERS, EventStreamResponse, Framed
from openvertex.protocol import generate_content as gc
from openvertex.service.cached_contents import CachedContents
from openvertex.service.native import ModelCall, NativeService
from openvertex.translate.bounded_json import JsonLimits
from openvertex.translate.native import check_native_request, wants_enum_numbers, with_enum_numbers
from openvertex.translate.resources import (
    MODEL_METHODS,
    dialect_of,
    parse_model_name,
    split_version,
    without_unset_parent,
)

_PARENT = "/projects/{project:str}/locations/{location:str}"


def _json(model: gc.GeminiModel | dict[str, Any]) -> Response:
    body = model if isinstance(model, dict) else model.to_json_dict()
    return Response(json.dumps(body).encode(), media_type="application/json")


def _versioned(request: Request) -> tuple[str | None, str]:
    """The API version and the rest of the path; a first segment that is no version is a 404,
    except on the version-less collection-scope routes (`/publishers/…`)."""
    path = route_path(request)
    version, rest = split_version(path)
    if version is None and not path.startswith("/publishers/"):
        raise NotFoundError("The requested URL was not found on this server.")
    return version, rest


def _model_call(request: Request) -> ModelCall:
    version, rest = _versioned(request)
    name, _, method = rest.partition(":")
    model = parse_model_name(name)
    if model is None:
        raise NotFoundError("The requested URL was not found on this server.")
    if method and method not in MODEL_METHODS:
        served = ", ".join(sorted(MODEL_METHODS))
        raise NotFoundError(f"Method `{method}` is not served here (openvertex serves {served}).")
    numbered = wants_enum_numbers(request.query_params.get("$alt"))
    return ModelCall(model, dialect_of(version, name), version, method or None, numbered)


class NativeHandlers:
    def __init__(
        self,
        service: NativeService,
        caches: CachedContents,
        max_body_bytes: int,
        json_limits: JsonLimits,
        embeddings: EmbeddingHandlers | None = None,
    ) -> None:
        self.service = service
        self.embeddings = embeddings  # embedContent, batchEmbedContents, :predict
        self.caches = caches
        self.max_body_bytes = max_body_bytes
        self.json_limits = json_limits
        self.started = int(time.time())

    async def _body(self, request: Request, model: type[gc.GeminiModel], dialect: gc.Dialect) -> Any:
        raw = await read_body(request, self.max_body_bytes)
        return await read_json(raw or b"{}", model, self.json_limits, dialect=dialect)

    # ------------------------------------------------------------------ models

    async def model_call(self, request: Request) -> Response:
        call = _model_call(request)
        if call.method is None:
            raise NotFoundError("The requested URL was not found on this server.")
        backend = self.service.backend(call)  # an unknown model is a 404 before its body is read
        if call.method in EMBEDDING_METHODS:
            if self.embeddings is None:
                raise NotFoundError(f"Method `{call.method}` is not served here.")
            model = self.embeddings.service.resolve(self.service.router.routed_id(call.model), backend)
            return await self.embeddings.native(request, call, model)
        if call.method == "countTokens":
            counted = await self._body(request, gc.CountTokensRequest, call.dialect)
            count = (await self.service.count_tokens(counted, call)).to_json_dict()
            return _json(with_enum_numbers(count, call.dialect) if call.enum_numbers else count)
        if call.method == "computeTokens":
            computed = await self._body(request, gc.ComputeTokensRequest, call.dialect)
            return _json(await self.service.compute_tokens(computed, call))
        body: gc.GenerateContentRequest = await self._body(request, gc.GenerateContentRequest, call.dialect)
        # Until the first byte is sent, only the receive channel tells that the client left.
        return await until_disconnect(request.receive, self._answer(request, call, body))

    async def _answer(self, request: Request, call: ModelCall, body: gc.GenerateContentRequest) -> Response:
        native = await self.service.prepare(body, call, timeout_s=_server_timeout(request))
        if call.method == "generateContent":
            return _json(await self.service.generate(native))
        framing = NATIVE_SSE if request.query_params.get("alt") == "sse" else JSON_ARRAY
        framed = Framed(
            self.service.stream(native),
            framing,
            dump=lambda rendered: json.dumps(rendered).encode(),
            error_body=native_error_body if framing is NATIVE_SSE else error_body,
        )
        await framed.start()
        return EventStreamResponse(framed, headers=STREAM_HEADERS, media_type=framing.media_type)

    async def model_get(self, request: Request) -> Response:
        call = _model_call(request)
        if call.method is not None:
            raise NotFoundError("The requested URL was not found on this server.")
        info = self.service.model_info(call).to_json_dict()
        if route_path(request).startswith("/v1/models/"):  # OpenAI's retrieve shares the path: both shapes
            info |= {"id": call.model.model, "object": "model", "created": self.started, "owned_by": "openvertex"}
        return _json(info)

    async def model_list(self, request: Request) -> Response:
        version, rest = _versioned(request)
        dialect = dialect_of(version, rest)
        key = "publisherModels" if dialect == "vertex" else "models"
        return _json({key: self.service.listed(dialect)})

    # ------------------------------------------------------------------ cachedContents

    def _cache_scope(self, request: Request) -> tuple[gc.Dialect, str]:
        """The dialect and the parent (projects/P/locations/L, or "" at the root) of a cache route."""
        version, rest = _versioned(request)
        params = request.path_params
        parent = f"projects/{params['project']}/locations/{params['location']}" if "project" in params else ""
        return dialect_of(version, rest), without_unset_parent(parent + "/").rstrip("/")

    def _cache_name(self, request: Request) -> tuple[gc.Dialect, str]:
        dialect, parent = self._cache_scope(request)
        return dialect, f"{parent + '/' if parent else ''}cachedContents/{request.path_params['cache']}"

    async def caches_create(self, request: Request) -> Response:
        dialect, parent = self._cache_scope(request)
        body: gc.CachedContent = await self._body(request, gc.CachedContent, dialect)
        check_native_request(  # the same rules as a request's (it normalises the body's bytes in place)
            gc.GenerateContentRequest(
                contents=body.contents or [],
                system_instruction=body.system_instruction,
                tools=body.tools,
                tool_config=body.tool_config,
            ),
            contents_required=False,
        )
        return _json(await self.caches.create(parent, body, dialect))

    async def caches_list(self, request: Request) -> Response:
        _, parent = self._cache_scope(request)
        query = request.query_params
        size = query.get("pageSize") or query.get("page_size")
        if size is not None and not re.fullmatch(r"-?[0-9]{1,9}", size):
            raise InvalidArgumentError(f"not a number: {size[:32]!r}", param="page_size")
        page = await self.caches.page(
            parent, page_size=int(size) if size else None, page_token=query.get("pageToken") or query.get("page_token")
        )
        return _json(page)

    async def cache_get(self, request: Request) -> Response:
        dialect, name = self._cache_name(request)
        return _json(await self.caches.get(name, dialect))

    async def cache_update(self, request: Request) -> Response:
        dialect, name = self._cache_name(request)
        body: gc.CachedContent = await self._body(request, gc.CachedContent, dialect)
        return _json(await self.caches.update(name, body, dialect))

    async def cache_delete(self, request: Request) -> Response:
        dialect, name = self._cache_name(request)
        await self.caches.delete(name, dialect)
        return _json({})

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[Route]:
        """Named `operation@shape`: the OpenAPI document describes each operation once per shape."""
        vertex, express, gemini = "/{version:str}" + _PARENT, "/{version:str}", "/{version:str}"
        shapes = [
            ("vertex", f"{vertex}/publishers/{{publisher:str}}/models/{{call:str}}"),
            ("vertex_endpoint", f"{vertex}/endpoints/{{call:str}}"),
            ("express", f"{express}/publishers/{{publisher:str}}/models/{{call:str}}"),
            ("express_endpoint", f"{express}/endpoints/{{call:str}}"),
            ("gemini", f"{gemini}/models/{{call:str}}"),
            ("gemini_tuned", f"{gemini}/tunedModels/{{call:str}}"),
            ("collection", "/publishers/{publisher:str}/models/{call:str}"),
        ]
        routes = [Route(path, self.model_call, methods=["POST"], name=f"model_call@{shape}") for shape, path in shapes]
        routes += [
            Route(
                f"{express}/publishers/{{publisher:str}}/models/{{call:str}}",
                self.model_get,
                methods=["GET"],
                name="model_get@vertex",
            ),
            Route(f"{gemini}/models/{{call:str}}", self.model_get, methods=["GET"], name="model_get@gemini"),
            Route(
                f"{express}/publishers/{{publisher:str}}/models",
                self.model_list,
                methods=["GET"],
                name="model_list@vertex",
            ),
            Route(f"{gemini}/models", self.model_list, methods=["GET"], name="model_list@gemini"),
        ]
        for shape, parent in (("vertex", vertex), ("root", express)):
            routes += [
                Route(f"{parent}/cachedContents", self.caches_create, methods=["POST"], name=f"caches_create@{shape}"),
                Route(f"{parent}/cachedContents", self.caches_list, methods=["GET"], name=f"caches_list@{shape}"),
                Route(
                    f"{parent}/cachedContents/{{cache:str}}", self.cache_get, methods=["GET"], name=f"cache_get@{shape}"
                ),
                Route(
                    f"{parent}/cachedContents/{{cache:str}}",
                    self.cache_update,
                    methods=["PATCH"],
                    name=f"cache_update@{shape}",
                ),
                Route(
                    f"{parent}/cachedContents/{{cache:str}}",
                    self.cache_delete,
                    methods=["DELETE"],
                    name=f"cache_delete@{shape}",
                ),
            ]
        return routes


def _server_timeout(request: Request) -> float | None:
    """google-genai's `X-Server-Timeout` (seconds, sent when HttpOptions.timeout is set)."""
    value = request.headers.get("x-server-timeout")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        raise InvalidArgumentError(f"X-Server-Timeout must be a number of seconds, got {value!r}") from None
    if seconds is not None and not 0 < seconds < 1e9:
        raise InvalidArgumentError(f"X-Server-Timeout must be a positive number of seconds, got {value!r}")
    return seconds
