"""Self-deployed endpoints at the HTTP edge: `…/endpoints/{ID}/chat/completions` (and
`…/embeddings`) relayed to the endpoint's replicas, or answered by a configured backend as
`endpoints/openapi` would.

The relayed answer keeps the upstream's status, content type and bytes; SSE frames go out as they
arrive. A client that leaves a stream closes the upstream connection, which is how the container
learns; a whole answer is done upstream by its first byte, and its rest is read for the usage.
The tokens the upstream reports using are counted for the key as any backend's are
(relay/usage.py: a stream is asked for its usage, and the frame that adds is not relayed).
The operator's blocklist applies as on every backend (relay/screen.py): a blocked prompt never
goes upstream, and an answer's frames are held until the blocklist has read past them. Embeddings
are neither screened (no text comes back) nor streamed; their prompt tokens are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from openvertex.errors import ApiError, InvalidArgumentError, NotFoundError
from openvertex.http.body import INLINE_PARSE_BYTES, read_body
from openvertex.http.disconnect import ClientDisconnected, until_disconnect
from openvertex.relay import RelayEndpoints, RelayPool, UpstreamAnswer
from openvertex.relay.model_member import upstream_true, with_cache_salt, with_model
from openvertex.relay.replicas import Operation
from openvertex.relay.screen import AnswerScreen, StreamScreen, blocked_prompt, blocked_prompt_answer
from openvertex.relay.usage import AnswerUsage, UsageMeter, asking_for_usage, meter_for
from openvertex.request_record import RequestRecord, current_record
from openvertex.service.blocklist import Blocklist
from openvertex.service.faults import refuse_requested_fault
from openvertex.service.keys import check_model
from openvertex.settings import EndpointSettings

log = logging.getLogger(__name__)

_JSON = "application/json"
REST_READ_S = 10.0  # how long the rest of a whole answer its client left is read, to count its usage


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
        blocklist: Blocklist | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.pinned = pinned
        self.max_body_bytes = max_body_bytes
        self.blocklist = blocklist if blocklist else None

    async def relay(
        self,
        request: Request,
        endpoint_id: str,
        *,
        operation: Literal["chat/completions", "embeddings"] = "chat/completions",
    ) -> Response:
        pool = self.endpoints.get(endpoint_id)
        if pool is None:
            raise NotFoundError(f"Endpoint `{endpoint_id}` not found.")
        refuse_requested_fault("self-deployed endpoints relay their replicas' answers as they come")
        record = current_record()
        record.model, record.backend = endpoint_id, f"endpoint:{endpoint_id}"
        check_model(record, endpoint_id)
        raw = await read_body(request, self.max_body_bytes)
        # Every edit below reads the body as UTF-8 JSON (RFC 8259), and so must the upstream: a body
        # it would read otherwise (UTF-16, say) could carry what the edits are there to replace.
        small = len(raw) <= INLINE_PARSE_BYTES
        parsed = _json_object(raw) if small else await asyncio.to_thread(_json_object, raw)
        if operation == "embeddings":
            # No blocklist (an embedding holds no text to screen), no stream, no cache salt
            # (vLLM's is for the prefix cache of generation): only `model` changes.
            body = with_model(raw, pool.model) if small else await asyncio.to_thread(with_model, raw, pool.model)
            return await self._forward(request, pool, body, record, operation, usage_added=False)
        if self.blocklist is not None:
            held = (
                blocked_prompt(parsed, self.blocklist)
                if small
                else await asyncio.to_thread(blocked_prompt, parsed, self.blocklist)
            )
            if held:
                named = parsed.get("model") if isinstance(parsed.get("model"), str) else None
                media_type, refusal = blocked_prompt_answer(
                    pool.model or named, stream=upstream_true(parsed.get("stream"))
                )
                return Response(refusal, media_type=media_type)
        salted = record.tenant if pool.settings.tenant_cache_salt else None
        if small:
            body, usage_added = _upstream_body(raw, pool.model, salted)
        else:  # scanning a large body would hold up every stream on the loop
            body, usage_added = await asyncio.to_thread(_upstream_body, raw, pool.model, salted)
        return await self._forward(request, pool, body, record, operation, usage_added=usage_added)

    async def _forward(
        self,
        request: Request,
        pool: RelayPool,
        body: bytes,
        record: RequestRecord,
        operation: Operation,
        *,
        usage_added: bool,
    ) -> Response:
        """`body` sent to one of `pool`'s replicas, and its answer relayed as it comes."""
        content_type = request.headers.get("content-type", _JSON)
        forwarding = asyncio.ensure_future(pool.forward(body, content_type, operation=operation))
        try:
            # Until the answer starts, only the receive channel tells that the client left.
            answer = await until_disconnect(request.receive, forwarding)
        except ClientDisconnected:
            if forwarding.done() and not forwarding.cancelled() and forwarding.exception() is None:
                forwarding.result().close()  # it came as the client left: nobody will relay it
            raise
        meter = screen = None
        if 200 <= answer.status < 300:
            answered_type = next((value for name, value in answer.headers if name == "content-type"), "")
            meter = meter_for(answered_type, strip_usage_frame=usage_added, operation=operation)
            if operation == "chat/completions":
                screen = _screen_for(answered_type, self.blocklist)
        return RelayedResponse(answer, meter, record, screen)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw.decode())
    except (UnicodeDecodeError, ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise InvalidArgumentError("The request body must be a JSON object, in UTF-8.")
    return body


def _screen_for(content_type: str, blocklist: Blocklist | None) -> StreamScreen | AnswerScreen | None:
    if blocklist is None:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "text/event-stream":
        return StreamScreen(blocklist)
    if media_type == "application/json":
        return AnswerScreen(blocklist)
    log.warning("a relayed answer of type %r passes the blocklist unscreened", media_type)
    return None


def _upstream_body(raw: bytes, model: str | None, tenant: str | None) -> tuple[bytes, bool]:
    """The body as it goes upstream (salted with `tenant`'s cache salt, when given), and whether
    asking for usage was added to it."""
    body = with_model(raw, model)
    return asking_for_usage(with_cache_salt(body, tenant) if tenant is not None else body)


class RelayedResponse(Response):
    """The upstream's answer, byte for byte, closed upstream the moment the client leaves a stream; the
    tokens it reports go to the request's record once it ends. With a `screen` (the blocklist),
    what it holds back goes on once read, and a length the upstream gave is left out (a blocked
    choice changes the body)."""

    def __init__(
        self,
        answer: UpstreamAnswer,
        meter: UsageMeter | None = None,
        record: RequestRecord | None = None,
        screen: StreamScreen | AnswerScreen | None = None,
    ) -> None:
        super().__init__(status_code=answer.status)
        self.raw_headers = [
            (name.encode("latin-1", "replace"), value.encode("latin-1", "replace"))
            for name, value in answer.headers
            if screen is None or name.lower() != "content-length"
        ]
        self.answer = answer
        self.meter = meter
        self.record = record
        self.screen = screen
        self._complete = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            try:
                await until_disconnect(receive, self._relay(send))
            except ClientDisconnected:
                if isinstance(self.meter, AnswerUsage) and self.meter.readable:
                    await self._read_rest()
        finally:
            self.answer.close()
            self._count()

    async def _read_rest(self) -> None:
        """The client left a whole answer before its end: the upstream has done all its work by
        then, so the rest is read (within REST_READ_S) for its usage to count against the key."""
        meter = self.meter
        assert isinstance(meter, AnswerUsage)
        with contextlib.suppress(ApiError, TimeoutError):
            async with asyncio.timeout(REST_READ_S):
                while chunk := await self.answer.read():
                    meter.feed(chunk)
                    if not meter.readable:  # too long to read a usage from: let it go
                        return
                self._complete = True

    async def _relay(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            while chunk := await self.answer.read():
                if self.meter is not None:  # the upstream's tokens, a blocked choice's included
                    chunk = self.meter.feed(chunk)
                if self.screen is not None:
                    chunk = self.screen.feed(chunk)
                if chunk:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ApiError as error:
            # The status is sent: leaving the response unfinished makes the server close the
            # connection, so the client sees a broken answer rather than a short one.
            log.warning("relayed answer cut short: %s", error.message)
            return
        self._complete = True
        rest = self.meter.finish() if self.meter is not None else b""
        if self.screen is not None:
            screen = self.screen
            rest = screen.feed(rest) + await asyncio.to_thread(screen.finish)  # a whole answer is read here
        if rest:
            await send({"type": "http.response.body", "body": rest, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _count(self) -> None:
        """The tokens, for the key's quotas and usage (the client may have left before the end)."""
        if self.meter is None or self.record is None:
            return
        usage = self.meter.usage(complete=self._complete)
        if usage is not None:
            self.record.prompt_tokens, self.record.output_tokens = usage.prompt_tokens, usage.output_tokens
