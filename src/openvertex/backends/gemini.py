"""The real Gemini upstream: Vertex AI (Application Default Credentials or an express-mode API key)
or the Gemini Developer API (an API key), over aiohttp.

The internal GenerateContentRequest goes out as it is (it is Gemini's own request), and the
answers come back as GenerateContentResponse, fields openvertex does not model (safety ratings,
grounding and citation metadata, …) kept as they came. Gemini issues and checks its own thought
signatures. Upstream errors keep their code, status and message. A request is retried only
before anything reached the client, and only where that is safe: a connection that failed, or
a 429/503 whose wait (Retry-After, or the body's RetryInfo) fits `max_retry_delay_s`.
Embeddings go to the method each mode and model takes (backends/gemini_embeddings.py).

aiohttp rather than httpx: against the same zero-cost server, 7.5k requests/s against 2.0k.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import google.auth.credentials
from pydantic import ValidationError
from yarl import URL

from openvertex.backends.base import OPTIONAL_FIELDS, BackendLoad, CacheUsage, Capabilities, LiveCaches, RoleTokens
from openvertex.backends.gemini_embeddings import EmbedCall, embed_calls, read_answer
from openvertex.backends.google_auth import TokenSource, access_credentials
from openvertex.errors import (
    ApiError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    UnavailableError,
    error_for,
    unsupported,
)
from openvertex.http_clients import HttpClients, SessionSpec
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest
from openvertex.settings import GeminiBackendSettings

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 503})
MAX_EVENT_BYTES = 64 << 20  # one streamed answer chunk (an image part is a few MB)
MAX_KNOWN_URLS = 1024  # parsed upstream URLs kept, per (model, method)
_NOT_SENT = {"cached_content", "model"}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_RETRY_DELAY = re.compile(r"^(\d+(?:\.\d+)?)s$")


@dataclass
class _Counts:
    requests: int = 0
    errors: int = 0
    retries: int = 0
    seconds: float = 0.0


class GeminiBackend:
    kind = "gemini"

    def __init__(self, settings: GeminiBackendSettings, clients: HttpClients) -> None:
        self.settings = settings
        self.capabilities = Capabilities(
            function_calling=True,
            input_mime_prefixes=("image/", "audio/", "video/", "application/pdf", "text/"),
            reads_media_uris=True,  # fileData goes up as it is: Gemini fetches gs:// and https:// itself
            thinking=True,
            output_modalities=frozenset({"TEXT", "IMAGE", "AUDIO"}),
            safety_filtering=True,
            cached_content=True,  # openvertex's caches put their content in front of the request
            google_tools=frozenset(
                {"googleSearch", "codeExecution", "urlContext", "googleMaps", "enterpriseWebSearch", "retrieval"}
            ),
            thought_signatures=True,
            optional_fields=OPTIONAL_FIELDS,
            # Embedding models too (gemini-embedding-001, text-embedding-005): the upstream
            # knows each one's dimensions and input limit; it reads text only.
            embeddings=True,
            embedding_dimensions=None,
            embedding_token_ids=False,
        )
        key = settings.api_key.get_secret_value() if settings.api_key is not None else None
        self._key = key
        self._project = settings.project  # else the credentials', once loaded
        self._tokens = None if key else TokenSource(self._credentials, _no_credentials)
        # No total: a long stream is fine; the connection and each wait for bytes are bounded.
        timeout = aiohttp.ClientTimeout(total=None, connect=settings.connect_timeout_s, sock_read=settings.timeout_s)
        self._client = clients.add(SessionSpec(timeout=timeout, limit=settings.max_connections))
        self._urls: dict[tuple[str, str, bool], URL] = {}
        self._counts = _Counts()

    def _credentials(self) -> google.auth.credentials.Credentials:
        credentials, project = access_credentials(self.settings.credentials_file)
        self._project = self._project or project
        return credentials

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> bool:
        return True  # each request finds out for itself; nothing to load

    def load(self) -> BackendLoad:
        counts = self._counts
        return BackendLoad(
            upstream_requests=counts.requests,
            upstream_errors=counts.errors,
            upstream_retries=counts.retries,
            upstream_seconds=counts.seconds,
        )

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()  # Gemini keeps its context caches upstream

    async def start(self) -> None:
        return None  # its session is opened by its HttpClients, before backends start

    async def close(self) -> None:
        if self._tokens is not None:
            self._tokens.close()

    # ------------------------------------------------------------------ where requests go

    async def _url(self, model: str, method: str, *, sse: bool = False) -> URL:
        """The upstream URL of `method` on `model` (`publisher/M`, or a bare id: Google's); parsed
        once per model and method, not per request."""
        key = (model, method, sse)
        url = self._urls.get(key)
        if url is None:
            url = URL(await self._url_text(model, method) + ("?alt=sse" if sse else ""), encoded=True)
            if len(self._urls) >= MAX_KNOWN_URLS:
                self._urls.clear()
            self._urls[key] = url
        return url

    async def _url_text(self, model: str, method: str) -> str:
        settings = self.settings
        publisher, _, bare = model.rpartition("/")
        if not all(_NAME.fullmatch(name) for name in (publisher or "google", bare)):
            # Into the URL's path it goes: never `..`, `?`, `#` or another segment.
            raise InvalidArgumentError(f"not a model name Gemini serves: {model!r}", param="model")
        if settings.api == "gemini":
            base = settings.base_url or "https://generativelanguage.googleapis.com"
            return f"{base.rstrip('/')}/{settings.api_version or 'v1beta'}/models/{bare}:{method}"
        location = settings.location
        host = "aiplatform.googleapis.com" if location == "global" else f"{location}-aiplatform.googleapis.com"
        base = (settings.base_url or f"https://{host}").rstrip("/")
        path = f"publishers/{publisher or 'google'}/models/{bare}:{method}"
        if self._key is not None and self._project is None:  # express mode: no project, no location
            return f"{base}/{settings.api_version or 'v1beta1'}/{path}"
        if self._project is None:
            await self._auth_headers()  # the credentials may name the project
        project = self._project
        if project is None:
            raise InternalError(
                "No Google Cloud project: set `project` on the gemini backend, or use ADC that names one."
            )
        return f"{base}/{settings.api_version or 'v1beta1'}/projects/{project}/locations/{location}/{path}"

    async def _auth_headers(self) -> dict[str, str]:
        if self._key is not None:
            return {"x-goog-api-key": self._key}
        assert self._tokens is not None
        return await self._tokens.headers()

    @staticmethod
    def _body(request: gc.GenerateContentRequest) -> dict[str, Any]:
        return request.model_dump(mode="json", by_alias=True, exclude_none=True, exclude=_NOT_SENT)

    @staticmethod
    def _payload(request: gc.GenerateContentRequest) -> bytes:
        # openvertex's own context cache is already in front of the contents: Gemini must not look it up.
        # (`model` names the caller's resource; the URL names Gemini's.)
        return request.model_dump_json(by_alias=True, exclude_none=True, exclude=_NOT_SENT).encode()

    # ------------------------------------------------------------------ calls

    async def _post(
        self, model: str, method: str, body: dict[str, Any] | bytes, *, sse: bool = False
    ) -> aiohttp.ClientResponse:
        """POST with retries; the response is 200 (the caller reads and releases it), or an error is raised."""
        url = await self._url(model, method, sse=sse)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        attempt = 0
        while True:
            headers = {"content-type": "application/json", **await self._auth_headers()}
            try:
                response = await self._client.session.post(url, data=payload, headers=headers)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as error:  # never sent
                if attempt >= self.settings.max_retries:
                    raise UnavailableError(f"Gemini could not be reached: {error or type(error).__name__}") from None
                delay = 0.5 * 2**attempt
            except (aiohttp.SocketTimeoutError, TimeoutError):  # sent, unanswered: it may have run
                raise DeadlineExceededError("Gemini did not answer in time.") from None
            except aiohttp.ClientError as error:  # sent, then broken off: it may have run
                raise UnavailableError(f"Gemini broke the connection off: {error or type(error).__name__}") from None
            else:
                if response.status == 200:
                    return response
                async with response:
                    text = await _text(response)
                delay = self._retry_delay(response, text, attempt)
                if delay is None:
                    refused = _upstream_error(response.status, text)
                    retry_after = response.headers.get("retry-after")
                    if retry_after is not None and response.status in RETRY_STATUSES:
                        refused.headers["Retry-After"] = retry_after
                    raise refused
            attempt += 1
            self._counts.retries += 1
            await asyncio.sleep(delay)

    def _retry_delay(self, response: aiohttp.ClientResponse, text: str, attempt: int) -> float | None:
        """How long to wait before retrying a refused request, or None: do not retry."""
        if response.status not in RETRY_STATUSES or attempt >= self.settings.max_retries:
            return None
        delay = _retry_after(response.headers.get("retry-after"), text)
        if delay is None:
            delay = 0.5 * 2**attempt
        return delay if delay <= self.settings.max_retry_delay_s else None

    async def _timed(self, work: Callable[[], Any]) -> Any:
        started = time.monotonic()
        self._counts.requests += 1
        try:
            return await work()
        except asyncio.CancelledError:  # the client left: not the upstream's failure
            raise
        except BaseException:
            self._counts.errors += 1
            raise
        finally:
            self._counts.seconds += time.monotonic() - started

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        async def call() -> gc.GenerateContentResponse:
            response = await self._post(model, "generateContent", self._payload(request))
            async with response:
                return _parse(await _read_bytes(response))

        result: gc.GenerateContentResponse = await self._timed(call)
        return result

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        started = time.monotonic()
        self._counts.requests += 1
        failed = True
        try:
            response = await self._post(model, "streamGenerateContent", self._payload(request), sse=True)
            async with response:  # closing it (the client left) ends the upstream request
                decoder = _EventData()
                try:
                    async for chunk in response.content.iter_any():
                        for data in decoder.feed(chunk):
                            yield _event(data)
                except (aiohttp.SocketTimeoutError, TimeoutError):
                    raise DeadlineExceededError("Gemini stopped sending its answer.") from None
                except aiohttp.ClientError as error:
                    raise UnavailableError(f"Gemini's stream broke off: {error or type(error).__name__}") from None
                for data in decoder.finish():
                    yield _event(data)
            failed = False
        except (GeneratorExit, asyncio.CancelledError):  # the client left: not the upstream's failure
            failed = False
            raise
        finally:
            self._counts.errors += failed
            self._counts.seconds += time.monotonic() - started

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        body: dict[str, Any] = {"contents": [content.to_json_dict() for content in request.contents]}
        extra = self._body(
            gc.GenerateContentRequest(
                contents=[],
                system_instruction=request.system_instruction,
                tools=request.tools,
                generation_config=request.generation_config,
            )
        )
        extra.pop("contents", None)
        if self.settings.api == "gemini" and extra:  # the Gemini API takes them inside a whole request
            bare = model.rpartition("/")[2]
            body = {"generateContentRequest": {"model": f"models/{bare}", **body, **extra}}
        else:
            body |= extra

        async def call() -> int:
            response = await self._post(model, "countTokens", body)
            async with response:
                counted = await _read(response)
            return int(counted.get("totalTokens", 0)) if isinstance(counted, dict) else 0

        total: int = await self._timed(call)
        return total

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        calls = embed_calls(request, api=self.settings.api, model=model)

        async def one(call: EmbedCall) -> list[Embedding]:
            async def send() -> list[Embedding]:
                response = await self._post(model, call.method, call.body)
                async with response:
                    return read_answer(call, await _read_bytes(response), request.texts)

            embedded: list[Embedding] = await self._timed(send)
            return embedded

        if len(calls) == 1:
            return await one(calls[0])
        # Several calls (parameter groups, chunks, one per text for MaaS) go at once; the first
        # failure is the request's, and the others are let go.
        tasks = [asyncio.ensure_future(one(call)) for call in calls]
        try:
            answers = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        placed: dict[int, Embedding] = {}
        for call, embeddings in zip(calls, answers, strict=True):
            placed.update(zip(call.positions, embeddings, strict=True))
        return [placed[position] for position in range(len(request.texts))]

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        if self.settings.api == "gemini":
            raise unsupported("computeTokens", "computeTokens (the Gemini Developer API has none)")
        body = {"contents": [content.to_json_dict() for content in request.contents]}

        async def call() -> list[RoleTokens]:
            response = await self._post(model, "computeTokens", body)
            async with response:
                computed = await _read(response)
            turns = computed.get("tokensInfo", []) if isinstance(computed, dict) else []
            return [
                RoleTokens(
                    str(turn.get("role", "user")),
                    [int(i) for i in turn.get("tokenIds", [])],
                    [base64.b64decode(t) for t in turn.get("tokens", [])],
                )
                for turn in turns
            ]

        result: list[RoleTokens] = await self._timed(call)
        return result

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        return None  # Gemini caches implicitly what it sees again

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        return None

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        return None


# ---------------------------------------------------------------------- the wire


async def _read(response: aiohttp.ClientResponse) -> Any:
    return _json(await _read_bytes(response))


async def _read_bytes(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    except (aiohttp.SocketTimeoutError, TimeoutError):
        raise DeadlineExceededError("Gemini stopped sending its answer.") from None
    except aiohttp.ClientError as error:
        raise UnavailableError(f"Gemini's answer broke off: {error or type(error).__name__}") from None


async def _text(response: aiohttp.ClientResponse) -> str:
    try:
        return await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        return ""


def _json(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise InternalError("Gemini answered with something that is not JSON.") from None


def _parse(data: bytes) -> gc.GenerateContentResponse:
    try:
        return gc.upstream_answer(data)
    except ValidationError as error:
        if error.errors()[0]["type"] == "json_invalid":
            raise InternalError("Gemini answered with something that is not JSON.") from None
        log.warning("an upstream answer openvertex cannot read: %s", error)
        raise InternalError("Gemini answered in a shape openvertex cannot read.") from None


class _EventData:
    """The `data:` payloads of an SSE stream (LF or CRLF), one per event, fed the bytes as they
    come; other lines are framing. Lines are split here, not by aiohttp, whose line limit (128 to
    512 KiB) an image part exceeds."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        events = []
        buffer = self._buffer
        searched = len(buffer)
        buffer += chunk
        while (end := buffer.find(b"\n", searched)) >= 0:
            line = bytes(buffer[:end]).rstrip(b"\r")
            del buffer[: end + 1]
            searched = 0
            if not line:
                if self._lines:
                    events.append(b"\n".join(self._lines))
                    self._lines = []
            elif line.startswith(b"data:"):
                self._lines.append(line[5:].removeprefix(b" "))
        if len(buffer) > MAX_EVENT_BYTES:
            raise InternalError("Gemini sent an event larger than openvertex reads.")
        return events

    def finish(self) -> list[bytes]:
        tail = bytes(self._buffer).strip()
        if tail.startswith(b"data:"):
            self._lines.append(tail[5:].removeprefix(b" "))
        return [b"\n".join(self._lines)] if self._lines else []


def _event(data: bytes) -> gc.GenerateContentResponse:
    event = _parse(data)
    if event.model_extra and "error" in event.model_extra:
        raise _error_from(event.model_extra, 500)
    return event


def _error_from(body: Any, code: int) -> ApiError:
    """A Google error body (an object, or a one-element list of one) as ours."""
    if isinstance(body, list) and body:
        body = body[0]
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        status = error.get("status")
        given = error.get("code")
        ours = error_for(
            given if isinstance(given, int) else code,
            status if isinstance(status, str) else None,
            str(error.get("message") or f"Gemini answered {code}."),
        )
        details = error.get("details")
        if isinstance(details, list):
            ours.details = [detail for detail in details if isinstance(detail, dict)]
        return ours
    return error_for(code, None, f"Gemini answered {code}.")


def _upstream_error(code: int, text: str) -> ApiError:
    with contextlib.suppress(ValueError):
        return _error_from(json.loads(text), code)
    return error_for(code, None, f"Gemini answered {code}: {text[:200]}")


def _retry_after(header: str | None, text: str) -> float | None:
    """Seconds to wait: the Retry-After header, else the body's google.rpc.RetryInfo."""
    if header is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(header))
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError, IndexError):
        body = json.loads(text)
        body = body[0] if isinstance(body, list) else body
        for detail in body["error"].get("details", []):
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                match = _RETRY_DELAY.match(str(detail.get("retryDelay", "")))
                if match:
                    return float(match.group(1))
    return None


def _no_credentials(error: Exception) -> ApiError:
    log.error("could not get credentials for Vertex AI: %s", error)
    return UnavailableError("openvertex could not get its credentials for Vertex AI (see its log).")
