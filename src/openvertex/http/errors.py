"""Errors rendered once, in Google's shape.

Native routes answer one object, `{"error": {"code", "message", "status", "details"}}`; the
OpenAI-compatible routes, and a native stream framed as a JSON array (no `alt=sse`), wrap it
in a one-element list (spec §6, native-gemini §B.3).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openvertex.errors import ApiError, InternalError, InvalidArgumentError, NotFoundError
from openvertex.logs import printable

log = logging.getLogger(__name__)

_HTTP_STATUS_TO_GOOGLE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}
_NOT_FOUND = "The requested URL was not found on this server."


class _MethodNotAllowed(NotFoundError):
    http_status = 405  # a known path, another method: Google answers NOT_FOUND


def error_body(error: ApiError) -> dict[str, Any]:
    return {"error": {"code": error.http_status, "message": error.message, "status": error.google_status}}


def _details(error: ApiError) -> list[dict[str, Any]]:
    if error.details is not None:
        return error.details
    if isinstance(error, InvalidArgumentError) and error.param:
        violation = {"field": error.param, "description": error.message}
        return [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [violation]}]
    retry = error.headers.get("Retry-After")
    if retry is not None:
        return [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry}s"}]
    return []


def native_error_body(error: ApiError) -> dict[str, Any]:
    body = error_body(error)
    body["error"]["details"] = _details(error)
    return body


def route_path(request: Request) -> str:
    """The path the routes matched: without the ASGI root_path a proxy may put in front."""
    path: str = request.scope["path"]
    root: str = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def wraps_errors(request: Request) -> bool:
    """Whether this route answers errors in a one-element list."""
    path = route_path(request)
    if path.endswith(("/chat/completions", "/embeddings")) or path == "/v1/models":
        return True  # (/v1/models also serves the Gemini API, whose SDK reads a list too)
    return ":streamGenerateContent" in path and request.query_params.get("alt") != "sse"


def error_response(error: ApiError, *, wrapped: bool = True) -> Response:
    body = json.dumps([error_body(error)]) if wrapped else json.dumps(native_error_body(error), indent=2)
    return Response(body.encode(), status_code=error.http_status, media_type="application/json", headers=error.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc, wrapped=wraps_errors(request))


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the same shape as everything else."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (404, 405):
        error = NotFoundError(_NOT_FOUND) if exc.status_code == 404 else _MethodNotAllowed(_NOT_FOUND)
        return error_response(error, wrapped=wraps_errors(request))
    status = _HTTP_STATUS_TO_GOOGLE.get(exc.status_code, "INTERNAL")
    body = json.dumps([{"error": {"code": exc.status_code, "message": str(exc.detail), "status": status}}]).encode()
    return Response(body, status_code=exc.status_code, media_type="application/json")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, printable(request.url.path), exc_info=exc)
    return error_response(InternalError("Internal error encountered."), wrapped=wraps_errors(request))
