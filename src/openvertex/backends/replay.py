"""A backend that answers from cassettes: a recorded request gets its recorded answer, exactly.

A stream replays its recorded chunks (at their recorded offsets with timing "original"); a whole
answer its recorded whole answer. Asked for the other kind than was recorded, a stream recorded
only whole is that answer as one chunk, and a whole answer recorded only as a stream is the merge
of its chunks as Gemini answers whole (runs of text joined, never two signed parts: base.py's
merge_chunks). A recorded refusal is raised again. An answer recorded without an id or a time
(a backend that gives none) is given ones drawn from the recording, so every replay is the same.

A request with no recording goes to the fallback backend, if one is configured; else it is a 400
FAILED_PRECONDITION (a 404 would read as a wrong model, and no retry can help) naming its digest
and the first JSON path where it differs from the nearest recording of its model. A damaged
recording is the same 400, naming the file: it is never answered from, nor passed to the fallback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import replace

from openvertex.backends.base import (
    OPTIONAL_FIELDS,
    Backend,
    BackendLoad,
    CacheUsage,
    Capabilities,
    LiveCaches,
    RoleTokens,
    merge_chunks,
)
from openvertex.cassettes import (
    Cassettes,
    DamagedCassette,
    Exchange,
    Kind,
    Normalised,
    format_time,
    nearest,
    normalise,
)
from openvertex.errors import ApiError, FailedPreconditionError, error_for
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest

log = logging.getLogger(__name__)

# Gemini's: what was recorded from Gemini passes the pipeline's checks as it did then, and its
# thought signatures go back to the client untouched (Gemini signed them; openvertex does not).
CAPABILITIES = Capabilities(
    function_calling=True,
    input_mime_prefixes=("image/", "audio/", "video/", "application/pdf", "text/"),
    reads_media_uris=True,
    thinking=True,
    output_modalities=frozenset({"TEXT", "IMAGE", "AUDIO"}),
    safety_filtering=True,
    cached_content=True,
    google_tools=frozenset(
        {"googleSearch", "codeExecution", "urlContext", "googleMaps", "enterpriseWebSearch", "retrieval"}
    ),
    thought_signatures=True,
    optional_fields=OPTIONAL_FIELDS,
)


class ReplayBackend:
    kind = "replay"

    def __init__(self, cassettes: Cassettes, *, fallback: Backend | None = None, timing: str = "none") -> None:
        self.cassettes = cassettes
        self.fallback = fallback
        self.original_timing = timing == "original"

    @property
    def capabilities(self) -> Capabilities:
        """Gemini's; and, as embeddings are never recorded but the fallback's, the fallback's
        embedding ones (read each time: an embedding model knows its dimensions once loaded)."""
        fallback = self.fallback.capabilities if self.fallback is not None else None
        if fallback is None or not fallback.embeddings:
            return CAPABILITIES
        return replace(
            CAPABILITIES,
            embeddings=True,
            embedding_dimensions=fallback.embedding_dimensions,
            embedding_input_tokens=fallback.embedding_input_tokens,
            embedding_token_ids=fallback.embedding_token_ids,
        )

    def ready(self) -> bool:
        return True  # a fallback is configured on its own, and ready on its own

    def load(self) -> BackendLoad:
        return BackendLoad()

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------------ generation

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        key = normalise(request, model)
        exchange = await self._find(key, "whole")
        if exchange is None:
            return await (await self._fallback(key)).generate(request, model=model)
        started = time.monotonic()
        answer = _answers(exchange)
        if exchange.error is None and exchange.chunks is not None:
            whole = merge_chunks(answer, join_text=True)
        else:
            whole = answer[0]
        await self._until(started, exchange.elapsed_s)
        return whole

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        key = normalise(request, model)
        exchange = await self._find(key, "stream")
        if exchange is None:
            fallback = await self._fallback(key)
            async with contextlib.aclosing(fallback.stream(request, model=model)) as answer:
                async for chunk in answer:
                    yield chunk
            return
        started = time.monotonic()
        answers = _answers(exchange)
        offsets = [chunk.offset_s for chunk in exchange.chunks or ()] or [exchange.elapsed_s]
        for offset, chunk in zip(offsets, answers, strict=True):
            await self._until(started, offset)
            yield chunk

    async def _until(self, started: float, offset_s: float) -> None:
        if self.original_timing:
            await asyncio.sleep(max(0.0, started + offset_s - time.monotonic()))

    async def _find(self, key: Normalised, kind: Kind) -> Exchange | None:
        """The recording of this kind, else of the other; a damaged one is an error."""
        other: Kind = "stream" if kind == "whole" else "whole"
        try:
            for wanted in (kind, other):
                exchange = await asyncio.to_thread(self.cassettes.find, key.digest, wanted)
                if exchange is not None:
                    return exchange
        except DamagedCassette as damaged:
            log.error("damaged cassette %s: %s", damaged.path, damaged.reason)
            raise FailedPreconditionError(
                f"The recording of this request ({damaged.path.name}) is damaged and is not replayed: "
                f"{damaged.reason}. Record it again, or remove the file."
            ) from None
        except OSError as error:
            raise FailedPreconditionError(f"The recording {key.digest} could not be read: {error.strerror}") from None
        return None

    async def _fallback(self, key: Normalised) -> Backend:
        if self.fallback is not None:
            return self.fallback
        raise await asyncio.to_thread(_no_recording, self.cassettes, key)

    # ------------------------------------------------------------------ the rest: the fallback's

    def _other(self, method: str) -> Backend:
        if self.fallback is not None:
            return self.fallback
        raise FailedPreconditionError(
            f"{method} is not recorded: this model is replayed from cassettes, which hold generateContent "
            "exchanges only; configure the replay backend's `fallback` to answer it."
        )

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        return await self._other("countTokens").count_tokens(request, model=model)

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        return await self._other("computeTokens").compute_tokens(request, model=model)

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        return await self._other("embedContent").embed(request, model=model)

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        if self.fallback is not None:
            await self.fallback.cache_prefix(name, request, model=model, owner=owner)

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        if self.fallback is not None:
            await self.fallback.forget_prefix(name, request, model=model, owner=owner)

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        return None  # the fallback is swept under its own name


def _answers(exchange: Exchange) -> list[gc.GenerateContentResponse]:
    """The recorded answer (fresh objects: the pipeline's stages change them), each with the
    recording's id and time where it had none; a recorded refusal is raised."""
    if exchange.error is not None:
        recorded = exchange.error
        error: ApiError = error_for(recorded.code, recorded.status, recorded.message)
        error.details = recorded.details
        raise error
    raw = [chunk.response for chunk in exchange.chunks] if exchange.chunks is not None else [exchange.response or {}]
    answers = [gc.upstream_answer(json.dumps(response).encode()) for response in raw]
    response_id = base64.urlsafe_b64encode(hashlib.sha256(exchange.digest.encode()).digest()[:16]).decode()
    for answer in answers:
        answer.response_id = answer.response_id or response_id.rstrip("=")
        answer.create_time = answer.create_time or format_time(exchange.recorded_at)
    return answers


def _no_recording(cassettes: Cassettes, key: Normalised) -> FailedPreconditionError:
    message = f"No recording of this request (digest {key.digest}, model {key.model})"
    try:
        difference = nearest(cassettes, key)
    except OSError:
        difference = None
    if difference is None:
        return FailedPreconditionError(f"{message}, nor of any request to this model.")
    return FailedPreconditionError(
        f"{message}. The nearest recording, {difference.digest}, differs first at {difference.path}: "
        f"recorded {difference.recorded}, requested {difference.requested}."
    )
