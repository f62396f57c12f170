"""Each request recorded at the HTTP edge: its id (returned as `x-request-id`), a count in
/metrics by route and status, its place in the console's timeline (but for the console's own,
the health checks' and the scrapes' requests, so polling does not count itself), and one log line
(`openvertex.request`) with the key's name (never the key), the model, the backend, the tokens,
the time to first token and the duration."""

from __future__ import annotations

import logging
import re
import secrets
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openvertex.http.errors import unexpected_error_handler
from openvertex.http.metrics import route_name
from openvertex.logs import printable
from openvertex.metrics import Metrics
from openvertex.request_record import RequestRecord, end_record, start_record
from openvertex.timeline import Timeline

log = logging.getLogger("openvertex.request")

REQUEST_ID_HEADER = b"x-request-id"
# A client's own id is kept when it is a plain token (a proxy's or a tracer's), else replaced.
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Requests the timeline leaves out: they watch the server rather than use it (`/`: the console's page).
UNTIMED_PATHS = frozenset({"/", "/metrics", "/healthz", "/readyz", "/console"})
UNTIMED_PREFIX = "/console/"


class RecordRequests:
    """ASGI middleware: the request's id, its count in /metrics and its log line."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, timeline: Timeline | None = None, untimed: frozenset[str] = UNTIMED_PATHS
    ) -> None:
        """`untimed`: the paths `timeline` leaves out (a container's health route, say), and /console/…"""
        self.app = app
        self.metrics = metrics
        self.timeline = timeline
        self.untimed = untimed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        path = scope["path"]
        record = RequestRecord(_request_id(scope), scope["method"], path, route_name(path))
        token = start_record(record)
        header = (REQUEST_ID_HEADER, record.request_id.encode())

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                self.metrics.requests.inc(route=record.route, code=str(record.status))
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        except Exception as error:
            if record.status:  # the response had started: nothing more can be sent
                raise
            # Rendered here, not by Starlette's outermost handler, so the 500 is counted, logged
            # and carries its request id like any other answer.
            response = await unexpected_error_handler(Request(scope), error)
            await response(scope, receive, recording_send)
        finally:
            record.duration_ms = round((time.monotonic() - started) * 1000, 3)
            end_record(token)
            if self.timeline is not None and path not in self.untimed and not path.startswith(UNTIMED_PREFIX):
                self.timeline.record(record.status, record.duration_ms)
            for callback in record.on_end:
                callback(record)
            if log.isEnabledFor(logging.INFO):
                message = f"{record.method} {printable(record.path)} {record.status}"
                log.info("%s", message, extra={"request": record.fields()})


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _CLIENT_ID.fullmatch(value):
            return bytes(value).decode()
    return secrets.token_hex(12)
