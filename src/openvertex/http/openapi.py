"""The OpenAPI 3.1 document for every route, generated from the wire types in protocol/.

Each route is described by an Operation keyed by its handler's name; a route without one is
an error when the document is built, so a new route cannot go unpublished.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, RootModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.routing import BaseRoute, Route

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import embeddings as em
from openvertex.protocol import generate_content as gc

_REF = "#/components/schemas/{model}"
JsonObject = dict[str, Any]


class ErrorStatus(BaseModel):
    """google.rpc.Status as JSON: the canonical code name in `status` (INVALID_ARGUMENT, …)."""

    code: int
    message: str
    status: str


class ErrorEnvelope(BaseModel):
    error: ErrorStatus


class ErrorResponse(RootModel[list[ErrorEnvelope]]):
    """An error on the OpenAI-compatible routes: a one-element list, as Vertex's answers."""


class NativeErrorStatus(ErrorStatus):
    details: list[dict[str, Any]]  # google.rpc.BadRequest (fieldViolations), RetryInfo, …


class NativeError(BaseModel):
    """An error on the native routes: one object (a streamGenerateContent without `alt=sse` wraps it in a list)."""

    error: NativeErrorStatus


class GenerateContentStream(RootModel[list[gc.GenerateContentResponse]]):
    """streamGenerateContent without `alt=sse`: the responses as one JSON array."""


class ModelInfoList(BaseModel):
    models: list[gc.ModelInfo] | None = None  # the Gemini API
    publisher_models: list[gc.ModelInfo] | None = Field(None, alias="publisherModels")  # Vertex


_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (oa.ChatCompletionRequest, "validation"),
    (oa.ChatCompletion, "serialization"),
    (oa.ChatCompletionChunk, "serialization"),
    (oa.ModelList, "serialization"),
    (ErrorEnvelope, "serialization"),
    (ErrorResponse, "serialization"),
    (gc.GenerateContentRequest, "validation"),
    (gc.GenerateContentResponse, "serialization"),
    (gc.CountTokensRequest, "validation"),
    (gc.CountTokensResponse, "serialization"),
    (gc.ComputeTokensRequest, "validation"),
    (gc.ComputeTokensResponse, "serialization"),
    (gc.CachedContent, "validation"),
    (gc.ListCachedContentsResponse, "serialization"),
    (gc.ModelInfo, "serialization"),
    (ModelInfoList, "serialization"),
    (GenerateContentStream, "serialization"),
    (NativeError, "serialization"),
    (em.OpenAIEmbeddingRequest, "validation"),
    (em.OpenAIEmbeddingResponse, "serialization"),
    (em.EmbedContentRequest, "validation"),
    (em.BatchEmbedContentsRequest, "validation"),
    (em.EmbeddingPredictRequest, "validation"),
    (em.EmbedContentResponse, "serialization"),
    (em.BatchEmbedContentsResponse, "serialization"),
)

_ERRORS = {
    "400": "INVALID_ARGUMENT or FAILED_PRECONDITION; the message names the parameter that was wrong.",
    "401": "UNAUTHENTICATED: no API key, or not one of the configured keys.",
    "403": "PERMISSION_DENIED: (Gemini API) an unknown or expired context cache.",
    "404": "NOT_FOUND: an unknown model, endpoint, context cache or API version.",
    "429": "RESOURCE_EXHAUSTED: the model's queue is full; retry after `Retry-After` seconds.",
    "499": "CANCELLED: the client closed the connection.",
    "500": "INTERNAL.",
    "503": "UNAVAILABLE: the model is not loaded, its backend failed, or no replica of the endpoint answers.",
    "504": "DEADLINE_EXCEEDED: the request ran past the configured timeout.",
}

_PATH_PARAMETERS: dict[str, JsonObject] = {
    # chat/completions answers v1 and v1beta1 (Vertex's); the native routes every version the SDKs use.
    "version": {"type": "string", "enum": ["v1", "v1beta", "v1beta1", "v1alpha"]},
    "project": {"type": "string"},
    "location": {"type": "string"},
    # Vertex's OpenAI-compatible surface is the endpoint named `openapi`; a self-deployed endpoint's
    # id relays the request to its replicas (vLLM, TGI, …) and their answer as they wrote it.
    "endpoint": {
        "type": "string",
        "description": "`openapi` (the model chosen by `model`), or a configured self-deployed endpoint's id",
        "examples": ["openapi", "1234567890"],
    },
    "publisher": {"type": "string", "examples": ["google"]},
    "call": {
        "type": "string",
        "description": "`{model}:{method}`, the method one of generateContent, streamGenerateContent "
        "(`?alt=sse` for server-sent events, else a JSON array), countTokens, computeTokens; "
        "a bare `{model}` for a model get",
        "examples": ["gemini-2.5-flash:generateContent"],
    },
    "cache": {"type": "string", "description": "a context cache's id"},
    "file": {"type": "string", "description": "one of the web console's files", "examples": ["app.js"]},
}

_STATUS_OK = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}


def _object(**properties: JsonObject) -> JsonObject:
    """A JSON object whose every property is present (the console API's bodies)."""
    return {"type": "object", "properties": properties, "required": list(properties)}


_INT, _NUMBER, _STRING, _BOOL = {"type": "integer"}, {"type": "number"}, {"type": "string"}, {"type": "boolean"}
_INT_OR_NULL, _NUMBER_OR_NULL = {"type": ["integer", "null"]}, {"type": ["number", "null"]}


def _list(item: JsonObject) -> JsonObject:
    return {"type": "array", "items": item}


_CONSOLE_CONFIG = _object(keys_required=_BOOL, admin=_BOOL, version=_STRING)
_CONSOLE_MODELS = _object(
    models=_list(_object(id=_STRING, backend=_STRING, writes=_BOOL, embeds=_BOOL)), endpoints=_list(_object(id=_STRING))
)
_BACKEND_STATUS = _object(
    name=_STRING,
    kind=_STRING,
    models=_list(_STRING),
    ready=_BOOL,
    slots_busy=_INT,
    slots_total=_INT_OR_NULL,
    queue=_INT,
    kv_tokens=_INT_OR_NULL,
    kv_capacity=_INT_OR_NULL,
    kv_resident_bytes=_INT_OR_NULL,
    tokens_generated=_INT,
    tokens_per_second=_NUMBER,
    upstream_requests=_INT,
    upstream_errors=_INT,
)
_REPLICA_STATUS = _object(origin=_STRING, healthy=_BOOL, in_flight=_INT, failures=_INT)
_ENDPOINT_STATUS = _object(id=_STRING, requests=_INT, errors=_INT, retries=_INT, replicas=_list(_REPLICA_STATUS))
_BUCKET = _object(
    t=_INT,
    requests=_INT,
    errors=_INT,
    client_errors=_INT,
    server_errors=_INT,
    latency_ms_avg=_NUMBER_OR_NULL,
    latency_ms_max=_NUMBER_OR_NULL,
    tokens=_INT,
)
_CONSOLE_STATUS = _object(
    time=_NUMBER,
    uptime_s=_INT,
    backends=_list(_BACKEND_STATUS),
    endpoints=_list(_ENDPOINT_STATUS),
    context_caches=_object(count=_INT, bytes_memory=_INT, bytes_disk=_INT),
    requests=_object(bucket_s=_INT, series=_list(_BUCKET)),
)


@dataclass(frozen=True, slots=True)
class Operation:
    summary: str
    tag: str
    authenticated: bool = False
    request: type[BaseModel] | tuple[type[BaseModel], ...] | None = None  # several: one of them
    response: type[BaseModel] | tuple[type[BaseModel], ...] | None = None  # a JSON 200 body
    events: type[BaseModel] | None = None  # each SSE event's data, when the request asks to stream
    plain: JsonObject | None = None  # a 200 body that is not a wire type: (media type → schema)
    errors: tuple[str, ...] = ("500",)
    native: bool = False  # errors as one object (the native surfaces), not a one-element list


_CHAT = Operation(
    summary="Create a chat completion (JSON, or server-sent events when `stream` is true).",
    tag="chat",
    authenticated=True,
    request=oa.ChatCompletionRequest,
    response=oa.ChatCompletion,
    events=oa.ChatCompletionChunk,
    errors=("400", "401", "404", "429", "499", "500", "503", "504"),
)

_EMBEDDINGS = Operation(
    summary="Create embeddings (OpenAI's embeddings: `input` as a string, strings or token arrays; `dimensions`; "
    "`encoding_format` float or base64). Embedding models: text-embedding-*, gemini-embedding-*, "
    "text-multilingual-embedding-*.",
    tag="embeddings",
    authenticated=True,
    request=em.OpenAIEmbeddingRequest,
    response=em.OpenAIEmbeddingResponse,
    errors=("400", "401", "403", "404", "429", "500", "503", "504"),
)

_NATIVE_ERRORS = ("400", "401", "403", "404", "429", "499", "500", "503", "504")

# Keyed by the route's name (its handler's name in routes.Handlers; for native routes, the part
# before `@`, the rest naming the resource shape).
OPERATIONS: dict[str, Operation] = {
    "model_call": Operation(
        summary="generateContent, streamGenerateContent, countTokens or computeTokens on a model, or "
        "embedContent, batchEmbedContents or predict ({instances: [{content, task_type, title}], parameters}) on an "
        "embedding model (by the path's method); the request body and response are those of the method. "
        "streamGenerateContent answers server-sent events with `alt=sse`, else one JSON array of responses.",
        tag="native",
        authenticated=True,
        request=(
            gc.GenerateContentRequest,
            gc.CountTokensRequest,
            gc.ComputeTokensRequest,
            em.EmbedContentRequest,
            em.BatchEmbedContentsRequest,
            em.EmbeddingPredictRequest,
        ),
        response=(
            gc.GenerateContentResponse,
            GenerateContentStream,
            gc.CountTokensResponse,
            gc.ComputeTokensResponse,
            em.EmbedContentResponse,
            em.BatchEmbedContentsResponse,
        ),
        events=gc.GenerateContentResponse,
        errors=_NATIVE_ERRORS,
        native=True,
    ),
    "model_get": Operation(
        summary="Get a model.",
        tag="native",
        authenticated=True,
        response=gc.ModelInfo,
        errors=("401", "404"),
        native=True,
    ),
    "model_list": Operation(
        summary="List the configured models.", tag="native", authenticated=True, response=ModelInfoList, native=True
    ),
    "caches_create": Operation(
        summary="Create a context cache (ttl or expireTime; default one hour).",
        tag="cachedContents",
        authenticated=True,
        request=gc.CachedContent,
        response=gc.CachedContent,
        errors=("400", "401", "404", "429", "500", "503"),
        native=True,
    ),
    "caches_list": Operation(
        summary="List context caches (pageSize up to 1000, pageToken).",
        tag="cachedContents",
        authenticated=True,
        response=gc.ListCachedContentsResponse,
        errors=("400", "401"),
        native=True,
    ),
    "cache_get": Operation(
        summary="Get a context cache.",
        tag="cachedContents",
        authenticated=True,
        response=gc.CachedContent,
        errors=("401", "403", "404"),
        native=True,
    ),
    "cache_update": Operation(
        summary="Change a context cache's expiry (ttl or expireTime; no update mask needed).",
        tag="cachedContents",
        authenticated=True,
        request=gc.CachedContent,
        response=gc.CachedContent,
        errors=("400", "401", "403", "404"),
        native=True,
    ),
    "cache_delete": Operation(
        summary="Delete a context cache (answers 200 with `{}`).",
        tag="cachedContents",
        authenticated=True,
        plain={"application/json": {"type": "object", "maxProperties": 0}},
        errors=("401", "403", "404"),
        native=True,
    ),
    "vertex_chat": _CHAT,
    "chat": _CHAT,
    "vertex_embeddings": _EMBEDDINGS,
    "openai_embeddings": _EMBEDDINGS,
    "models": Operation(
        summary="List the configured models.",
        tag="models",
        authenticated=True,
        response=oa.ModelList,
        errors=("401", "500"),
    ),
    "healthz": Operation(
        summary="Liveness: the process answers.", tag="health", plain={"application/json": _STATUS_OK}
    ),
    "readyz": Operation(
        summary="Readiness: every backend can answer (the local model is loaded).",
        tag="health",
        plain={"application/json": _STATUS_OK},
        errors=("503",),
    ),
    "metrics": Operation(
        summary="Prometheus metrics (text exposition format 0.0.4).",
        tag="health",
        plain={"text/plain": {"type": "string"}},
    ),
    "openapi": Operation(
        summary="This document.", tag="health", plain={"application/json": {"type": "object"}}, errors=()
    ),
    "console_page": Operation(
        summary="The web console: a page that chats with any model on either surface, shows the server's "
        "status, and manages keys with an admin key.",
        tag="console",
        plain={"text/html": {"type": "string"}},
        errors=(),
        native=True,
    ),
    "console_file": Operation(
        summary="One of the web console's scripts or style sheets.",
        tag="console",
        plain={"text/javascript": {"type": "string"}, "text/css": {"type": "string"}},
        errors=("404",),
        native=True,
    ),
    "console_config": Operation(
        summary="For the web console: whether requests need an API key, whether admin keys exist, the version.",
        tag="console",
        plain={"application/json": _CONSOLE_CONFIG},
        native=True,
    ),
    "console_models": Operation(
        summary="For the web console: the routed models and the self-deployed endpoints' ids (an API key's "
        "check, not counted against its quotas).",
        tag="console",
        authenticated=True,
        plain={"application/json": _CONSOLE_MODELS},
        errors=("401", "500"),
        native=True,
    ),
    "console_status": Operation(
        summary="For the web console: the server's live status (backends, endpoints, context caches, the last "
        "ten minutes of requests in 5-second buckets). An admin key; an API key only while the server has "
        "one tenant (else 403).",
        tag="console",
        authenticated=True,
        plain={"application/json": _CONSOLE_STATUS},
        errors=("401", "403", "500"),
        native=True,
    ),
}


def _merge_name_keys(by_alias: JsonObject, by_name: JsonObject) -> None:
    """Gemini extension objects accept snake_case and lowerCamelCase keys alike (spec §1.4), but
    pydantic describes one spelling; a closed object (additionalProperties false) gets both."""
    for title, schema in by_alias.items():
        other = by_name.get(title, {})
        if schema.get("additionalProperties") is not False or other.get("additionalProperties") is not False:
            continue
        names = set(schema.get("properties", {})) & set(other.get("properties", {}))
        schema["properties"] = {**other.get("properties", {}), **schema.get("properties", {})}
        if "required" in schema:  # a key required in one spelling may come in the other
            schema["required"] = [key for key in schema["required"] if key in names]


def component_schemas() -> JsonObject:
    """pydantic's JSON Schemas of the wire types, with `$defs` moved into components/schemas."""
    _, by_alias = models_json_schema(_MODELS, ref_template=_REF)
    _, by_name = models_json_schema(_MODELS, ref_template=_REF, by_alias=False)
    schemas: JsonObject = by_alias.get("$defs", {})
    _merge_name_keys(schemas, by_name.get("$defs", {}))
    return schemas


def _ref(model: type[BaseModel] | tuple[type[BaseModel], ...]) -> JsonObject:
    if isinstance(model, tuple):
        return {"oneOf": [_ref(one) for one in model]}
    return {"$ref": _REF.format(model=model.__name__)}


def _event_schema(model: type[BaseModel], *, native: bool) -> JsonObject:
    """One server-sent event, as OpenAPI models them: an object whose `data` is a string."""
    ending = (
        "JSON events only (no comments, no `event:`, no terminator); an error after the stream began is one "
        '`{"error": …}` event, the last.'
        if native
        else 'JSON, then a final `[DONE]`; an error after the stream began is one `{"error": …}` event instead '
        "of `[DONE]`."
    )
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "description": ending,
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [_ref(model), _ref(NativeError if native else ErrorEnvelope)]},
            }
        },
    }


def _success(operation: Operation) -> JsonObject:
    content: JsonObject = {}
    if operation.response is not None:
        content["application/json"] = {"schema": _ref(operation.response)}
    if operation.events is not None:
        content["text/event-stream"] = {"schema": _event_schema(operation.events, native=operation.native)}
    for media_type, schema in (operation.plain or {}).items():
        content[media_type] = {"schema": schema}
    return {"description": "OK", "content": content}


def _operation(operation_id: str, operation: Operation, parameters: Sequence[str]) -> JsonObject:
    error = {"application/json": {"schema": _ref(NativeError if operation.native else ErrorResponse)}}
    document: JsonObject = {
        "operationId": operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "responses": {
            "200": _success(operation),
            **{code: {"description": _ERRORS[code], "content": error} for code in operation.errors},
        },
    }
    if parameters:
        document["parameters"] = [
            {"name": p, "in": "path", "required": True, "schema": _PATH_PARAMETERS[p]} for p in parameters
        ]
    if operation.request is not None:
        document["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(operation.request)}},
        }
    if operation.authenticated:
        # Any one of these; without configured keys any token is accepted, but one must be presented.
        document["security"] = [{"bearer": []}, {"googApiKey": []}, {"queryKey": []}]
    return document


def _path_template(route: Route) -> str:
    """Starlette's `/{version:str}/…` → OpenAPI's `/{version}/…`."""
    path = route.path
    for name in route.param_convertors:
        path = path.replace(f"{{{name}:str}}", f"{{{name}}}")
    return path


def _paths(routes: Sequence[BaseRoute]) -> JsonObject:
    paths: JsonObject = {}
    for route in routes:
        assert isinstance(route, Route), route
        key = route.name.partition("@")[0]
        if key not in OPERATIONS:
            raise KeyError(f"route {route.path} ({route.name}) has no OpenAPI operation")
        name = route.name.replace("@", "_")
        methods = sorted((route.methods or set()) - {"HEAD"})  # Starlette adds HEAD to every GET
        for method in methods:
            operation_id = name if len(methods) == 1 else f"{name}_{method.lower()}"
            operation = _operation(operation_id, OPERATIONS[key], list(route.param_convertors))
            paths.setdefault(_path_template(route), {})[method.lower()] = operation
    return paths


def openapi_document(routes: Sequence[BaseRoute]) -> JsonObject:
    try:
        version = importlib.metadata.version("openvertex")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        version = "0.0.0"
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "openvertex",
            "version": version,
            "description": "Vertex AI's OpenAI-compatible Chat Completions API and the native Gemini "
            "generateContent API (Vertex AI and the Gemini Developer API), self-hosted.",
        },
        "paths": _paths(routes),
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "googApiKey": {"type": "apiKey", "in": "header", "name": "x-goog-api-key"},
                "queryKey": {"type": "apiKey", "in": "query", "name": "key"},
            },
        },
    }


def openapi_json(routes: Sequence[BaseRoute]) -> bytes:
    return json.dumps(openapi_document(routes), separators=(",", ":")).encode()
