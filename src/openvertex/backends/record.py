"""A backend that records: another backend answers, and each generateContent exchange (a stream
with each chunk's offset from the request's start) is written to a cassette directory.

What is recorded: an answer that ended completely, and a refusal that would come again (an error
of 4xx but 401, 429 and 499: Gemini's INVALID_ARGUMENT, FAILED_PRECONDITION, PERMISSION_DENIED …,
replayed as it came). What is not: a transient failure (429, 5xx, a deadline, a broken connection),
a credential the upstream rejected (401: the recorder's, not the request's, and a replay has none),
a stream cut short (an error after its first chunk, a client that left); an earlier recording of
the same request stays. Failures on demand are the fault injection's job, not the cassettes'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator

from openvertex.backends.base import Backend, BackendLoad, CacheUsage, Capabilities, LiveCaches, RoleTokens
from openvertex.cassettes import Cassettes, Chunk, Exchange, Kind, Normalised, RecordedError, normalise
from openvertex.errors import ApiError
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest

log = logging.getLogger(__name__)

# Not the request's answer: a wait (429), a client gone (499), the recorder's own credentials
# (401); and every 5xx.
_NOT_RECORDED = frozenset({401, 429, 499})


def recordable(error: ApiError) -> bool:
    return 400 <= error.http_status < 500 and error.http_status not in _NOT_RECORDED


class RecordingBackend:
    kind = "record"

    def __init__(self, inner: Backend, cassettes: Cassettes) -> None:
        self.inner = inner
        self.cassettes = cassettes

    @property
    def capabilities(self) -> Capabilities:
        return self.inner.capabilities

    def ready(self) -> bool:
        return self.inner.ready()

    # The inner backend is configured on its own: the app starts, closes, sweeps and reads its
    # load under its own name (reporting it here too would count it twice).
    def load(self) -> BackendLoad:
        return BackendLoad()

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        return None

    # ------------------------------------------------------------------ generation, recorded

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        key = normalise(request, model)
        at, started = time.time(), time.monotonic()
        try:
            response = await self.inner.generate(request, model=model)
        except ApiError as error:
            await self._refused(key, "whole", error, at, started)
            raise
        # Written before it is returned: the pipeline's stages change the answer in place.
        answer = response.to_json_dict()
        await self._write(key, "whole", at, started, response=answer)
        return response

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        key = normalise(request, model)
        at, started = time.time(), time.monotonic()
        chunks: list[Chunk] = []
        async with contextlib.aclosing(self.inner.stream(request, model=model)) as upstream:
            try:
                async for chunk in upstream:
                    chunks.append(Chunk(time.monotonic() - started, chunk.to_json_dict()))
                    yield chunk
            except ApiError as error:
                if not chunks:  # refused before answering; an error later cut the answer short
                    await self._refused(key, "stream", error, at, started)
                raise
        await self._write(key, "stream", at, started, chunks=tuple(chunks))

    async def _refused(self, key: Normalised, kind: Kind, error: ApiError, at: float, started: float) -> None:
        if recordable(error):
            refusal = RecordedError(error.http_status, error.google_status, error.message, error.details)
            await self._write(key, kind, at, started, error=refusal)

    async def _write(
        self,
        key: Normalised,
        kind: Kind,
        at: float,
        started: float,
        *,
        response: dict[str, object] | None = None,
        chunks: tuple[Chunk, ...] | None = None,
        error: RecordedError | None = None,
    ) -> None:
        exchange = Exchange(
            digest=key.digest,
            model=key.model,
            kind=kind,
            request=key.request,
            recorded_at=at,
            elapsed_s=time.monotonic() - started,
            response=response,
            chunks=chunks,
            error=error,
        )
        try:
            await asyncio.to_thread(self.cassettes.write, exchange, key.media)
        except OSError as failed:  # the answer still goes out; the recording is missing
            log.error("could not record exchange %s in %s: %s", key.digest, self.cassettes.directory, failed)

    # ------------------------------------------------------------------ the rest, passed through

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        return await self.inner.count_tokens(request, model=model)

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        return await self.inner.compute_tokens(request, model=model)

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        return await self.inner.embed(request, model=model)

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        await self.inner.cache_prefix(name, request, model=model, owner=owner)

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        await self.inner.forget_prefix(name, request, model=model, owner=owner)
