"""Errors rendered once, in Google's shape: `[{"error": {"code", "message", "status"}}]` (spec §6)."""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from openvertex.errors import ApiError, InternalError

log = logging.getLogger(__name__)

_HTTP_STATUS_TO_GOOGLE = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
}


def error_body(error: ApiError) -> dict[str, object]:
    return {"error": {"code": error.http_status, "message": error.message, "status": error.google_status}}


def error_response(error: ApiError) -> Response:
    body = json.dumps([error_body(error)]).encode()
    return Response(body, status_code=error.http_status, media_type="application/json", headers=error.headers)


async def api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer in the same shape as everything else."""
    assert isinstance(exc, HTTPException)
    status = _HTTP_STATUS_TO_GOOGLE.get(exc.status_code, "INTERNAL")
    message = "The requested URL was not found on this server." if exc.status_code in (404, 405) else str(exc.detail)
    body = json.dumps([{"error": {"code": exc.status_code, "message": message, "status": status}}]).encode()
    return Response(body, status_code=exc.status_code, media_type="application/json")


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(InternalError("Internal error encountered."))
