"""The HTTP edge of fault injection (service/faults.py): the `x-openvertex-fault` header read for
the request's task (a 400 naming it where the server does not take faults from requests, or where
it is malformed: never ignored), and the response a cut connection gets when nothing was sent yet.

A cut connection ends without the response's end: the ASGI server closes a connection whose
response the application left incomplete (uvicorn logs it as an error: it is one, on purpose).
A stream's cut after its first chunks is sse.py's.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from openvertex.errors import ApiError, InvalidArgumentError
from openvertex.http.errors import error_response, wraps_errors
from openvertex.service.faults import HEADER, ConnectionCut, end_request_fault, parse_header, request_fault

_HEADER = HEADER.encode()
_PROMISED_BYTES = 4096  # what the cut response's Content-Length promises; it sends far less


class FaultHeader:
    """ASGI middleware: a request's `x-openvertex-fault` header, checked, and its fault made the
    request's own (`allowed`: the setting `faults_from_header`)."""

    def __init__(self, app: ASGIApp, *, allowed: bool) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = _header(scope) if scope["type"] == "http" else None
        if value is None:
            await self.app(scope, receive, send)
            return
        try:
            if not self.allowed:
                raise InvalidArgumentError(
                    "this server takes no faults from requests (the setting faults_from_header is off)", param=HEADER
                )
            fault = parse_header(value)
        except ApiError as error:
            await error_response(error, wrapped=wraps_errors(Request(scope)))(scope, receive, send)
            return
        token = request_fault(fault)
        try:
            await self.app(scope, receive, send)
        finally:
            end_request_fault(token)


def _header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            return bytes(value).decode("latin-1")
    return None


class CutResponse(Response):
    """A 200 whose headers promise a body it never finishes: the client reads an incomplete response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(_PROMISED_BYTES).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{\n  "', "more_body": True})
        # Returned with the body unfinished: the server drops the connection.


async def connection_cut_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ConnectionCut)
    return CutResponse()
