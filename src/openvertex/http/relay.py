"""Self-deployed endpoints at the HTTP edge: `…/endpoints/{ID}/chat/completions` relayed to the
endpoint's replicas, or answered by a configured backend as `endpoints/openapi` would.

The relayed answer keeps the upstream's status, content type and bytes; SSE frames go out as they
arrive. A client that leaves closes the upstream connection, which is how the container learns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openvertex.errors import ApiError, NotFoundError
from openvertex.http.body import INLINE_PARSE_BYTES, read_body
from openvertex.http.disconnect import ClientDisconnected, until_disconnect
from openvertex.relay import RelayEndpoints, UpstreamAnswer
from openvertex.relay.model_member import with_model
from openvertex.request_record import current_record
from openvertex.service.keys import check_model
from openvertex.settings import EndpointSettings

log = logging.getLogger(__name__)

_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class PinnedBackend:
    """An endpoint answered by a configured backend, whatever model the request names."""

    backend: str
    model: str  # what the answer names: the endpoint's `model`, else its id


def pinned_backends(configured: Mapping[str, EndpointSettings], backends: Collection[str]) -> dict[str, PinnedBackend]:
    pinned: dict[str, PinnedBackend] = {}
    for endpoint_id, settings in configured.items():
        if settings.backend is None:
            continue
        if settings.backend not in backends:
            raise ValueError(f"endpoint {endpoint_id!r} names unknown backend {settings.backend!r}")
        pinned[endpoint_id] = PinnedBackend(settings.backend, settings.model or endpoint_id)
    return pinned


class RelayHandlers:
    def __init__(
        self,
        endpoints: RelayEndpoints,
        pinned: Mapping[str, PinnedBackend],
        max_body_bytes: int,
    ) -> None:
        self.endpoints = endpoints
        self.pinned = pinned
        self.max_body_bytes = max_body_bytes

    async def relay(self, request: Request, endpoint_id: str) -> Response:
        pool = self.endpoints.get(endpoint_id)
        if pool is None:
            raise NotFoundError(f"Endpoint `{endpoint_id}` not found.")
        record = current_record()
        record.model, record.backend = endpoint_id, f"endpoint:{endpoint_id}"
        check_model(record, endpoint_id)
        raw = await read_body(request, self.max_body_bytes)
        if len(raw) <= INLINE_PARSE_BYTES:
            body = with_model(raw, pool.model)
        else:  # scanning a large body would hold up every stream on the loop
            body = await asyncio.to_thread(with_model, raw, pool.model)
        content_type = request.headers.get("content-type", _JSON)
        forwarding = asyncio.ensure_future(pool.forward(body, content_type))
        try:
            # Until the answer starts, only the receive channel tells that the client left.
            answer = await until_disconnect(request.receive, forwarding)
        except ClientDisconnected:
            if forwarding.done() and not forwarding.cancelled() and forwarding.exception() is None:
                forwarding.result().close()  # it came as the client left: nobody will relay it
            raise
        return RelayedResponse(answer)


class RelayedResponse(Response):
    """The upstream's answer, byte for byte, closed upstream the moment the client leaves."""

    def __init__(self, answer: UpstreamAnswer) -> None:
        super().__init__(status_code=answer.status)
        self.raw_headers = [
            (name.encode("latin-1", "replace"), value.encode("latin-1", "replace")) for name, value in answer.headers
        ]
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with contextlib.suppress(ClientDisconnected):
                await until_disconnect(receive, self._relay(send))
        finally:
            self.answer.close()

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            while chunk := await self.answer.read():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ApiError as error:
            # The status is sent: leaving the response unfinished makes the server close the
            # connection, so the client sees a broken answer rather than a short one.
            log.warning("relayed answer cut short: %s", error.message)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
