"""The generation pipeline both surfaces share: a GenerateContentRequest in, GenerateContentResponses out.

check what the backend cannot honour → put the named context cache in front → check thought
signatures → generate (deadline, signing, hiding thoughts not asked for, cache usage) → the
surface renders the responses its own way.
"""

from __future__ import annotations

import asyncio
import base64
import fnmatch
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openvertex.backends.base import Backend
from openvertex.errors import DeadlineExceededError, NotFoundError
from openvertex.metrics import Metrics
from openvertex.protocol import generate_content as gc
from openvertex.request_record import RequestRecord, current_record
from openvertex.service.cached_contents import CachedContents
from openvertex.service.capabilities import Namer, check_capabilities, native_name
from openvertex.service.grounding import Grounding, GroundingPolicy
from openvertex.service.keys import check_model
from openvertex.service.media import MediaReader
from openvertex.service.routing import Router
from openvertex.service.safety import SafetyCheck, SafetyPolicy
from openvertex.service.signatures import ThoughtSigner
from openvertex.settings import GroundingSettings, MediaSettings, SafetyConfig
from openvertex.translate.resources import ModelName

# Backend: the HTTP handlers hold one (opaque to them) between resolving a model and using it.
__all__ = ["GENERATION_METHODS", "Backend", "Generator", "Prepared"]

GENERATION_METHODS = ["generateContent", "streamGenerateContent", "countTokens", "computeTokens", "createCachedContent"]


@dataclass(frozen=True, slots=True)
class Prepared:
    backend: Backend
    request: gc.GenerateContentRequest
    model: ModelName
    include_thoughts: bool
    cached_tokens: int  # the prompt tokens a named context cache holds
    timeout_s: float  # until the answer must be complete
    safety: SafetyCheck | None = None  # what is checked here of the prompt and the answer
    grounding: Grounding | None = None  # the search done here for the request


class Generator:
    def __init__(
        self,
        router: Router,
        caches: CachedContents,
        *,
        metrics: Metrics,
        timeout_s: float,
        signer: ThoughtSigner,
        optional_signatures: Sequence[str] = (),
        media: MediaReader | None = None,
        safety: SafetyPolicy | None = None,
        grounding: GroundingPolicy | None = None,
    ) -> None:
        self.router = router
        self.media = media or MediaReader(MediaSettings())
        self.safety = safety or SafetyPolicy(SafetyConfig())
        self.grounding = grounding or GroundingPolicy(GroundingSettings(), Path("."))
        self.caches = caches
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.signer = signer
        self.optional_signatures = optional_signatures

    def _signs(self, backend: Backend) -> bool:
        """openvertex signs and checks thoughts for backends that do not do it themselves."""
        return not backend.capabilities.thought_signatures

    async def prepare(
        self,
        request: gc.GenerateContentRequest,
        model: ModelName,
        backend: Backend,
        *,
        dialect: gc.Dialect,
        name: Namer = native_name,
        timeout_s: float | None = None,
    ) -> Prepared:
        """Everything that can fail with a 4xx before any generation starts. `timeout_s`: the
        client's own deadline, within the server's."""
        record = current_record()
        record.model, record.backend = self.router.routed_id(model), self.router.name_of(backend)
        check_model(record, record.model)
        grounding = self.grounding.plan(request, backend.capabilities, name)
        if grounding is not None:
            request = grounding.without_search(request)
        check_capabilities(request, backend.capabilities, name)
        safety = self.safety.plan(request, backend.capabilities, name)
        request = await self._media(request, backend, name)
        deadline = min(timeout_s, self.timeout_s) if timeout_s is not None else self.timeout_s
        cached_tokens = 0
        if request.cached_content is not None:
            try:  # rebuilding a lost prefix is part of the request's time
                async with asyncio.timeout(deadline):
                    applied = await self.caches.apply(request, model, backend, dialect)
            except TimeoutError:
                raise self._deadline_error(deadline) from None
            request, cached_tokens = applied.request, applied.tokens
        if self._signs(backend):
            optional = any(
                fnmatch.fnmatchcase(name, glob) for glob in self.optional_signatures for name in model.route_ids()
            )
            self.signer.check_request(request.contents, required=not optional)
        thinking = request.generation_config.thinking_config if request.generation_config else None
        if grounding is not None:
            request = await grounding.search(request)
        include_thoughts = bool(thinking and thinking.include_thoughts)
        return Prepared(backend, request, model, include_thoughts, cached_tokens, deadline, safety, grounding)

    def backend(self, model: ModelName, *, dialect: gc.Dialect, version: str | None, method: str | None) -> Backend:
        """The backend serving a native model name, or the 404 each dialect words its own way."""
        backend = self.router.find_model(model)
        if backend is not None:
            return backend
        if model.publisher is None:
            raise NotFoundError(f"Endpoint `{model.resource}` not found.")
        if dialect == "gemini":
            raise NotFoundError(
                f"{model.resource} is not found for API version {version}, or is not supported for "
                f"{method or 'get'}. Call ListModels to see the list of available models and their supported methods."
            )
        raise NotFoundError(
            f"Publisher Model `{model.resource}` was not found or your project does not have access to it. "
            "Please ensure you are using a valid model version. For more information, see: "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
        )

    def model_info(self, model: ModelName, backend: Backend, dialect: gc.Dialect) -> gc.ModelInfo:
        caps = backend.capabilities
        publisher = model.publisher or "google"
        return gc.ModelInfo(
            name=f"models/{model.model}" if dialect == "gemini" else f"publishers/{publisher}/models/{model.model}",
            display_name=model.model,
            description=f"{model.model}, served by openvertex",
            version="001",
            version_id="001",
            input_token_limit=caps.input_token_limit,
            output_token_limit=caps.max_output_tokens,
            supported_generation_methods=GENERATION_METHODS,
            thinking=caps.thinking,
        )

    def listed(self, dialect: gc.Dialect) -> list[gc.ModelInfo]:
        """The routes that name one model (globs are not listable; any name they match answers a get).
        The Gemini API lists Google's models only."""
        listed = []
        for pattern, backend in self.router.models():
            publisher, _, bare = pattern.rpartition("/")
            if any(c in pattern for c in "*?[") or (dialect == "gemini" and publisher not in ("", "google")):
                continue
            listed.append(self.model_info(ModelName(pattern, publisher or None, bare), backend, dialect))
        return listed

    async def count_tokens(
        self, request: gc.GenerateContentRequest, model: ModelName, backend: Backend, *, dialect: gc.Dialect
    ) -> gc.CountTokensResponse:
        """What the model would read for `request` (a named cache's content included, not warmed)."""
        check_model(current_record(), self.router.routed_id(model))
        check_capabilities(request, backend.capabilities)
        request = await self._media(request, backend, native_name)
        cached = 0
        if request.cached_content is not None:
            applied = await self.caches.apply(request, model, backend, dialect, warm=False)
            request, cached = applied.request, applied.tokens
        total = await backend.count_tokens(request, model=model.routed)
        return gc.CountTokensResponse(
            total_tokens=total,
            cached_content_token_count=(cached or None) if dialect == "gemini" else None,
            prompt_tokens_details=[gc.ModalityTokenCount(modality="TEXT", token_count=total)],
        )

    async def compute_tokens(
        self, request: gc.GenerateContentRequest, model: ModelName, backend: Backend
    ) -> gc.ComputeTokensResponse:
        check_model(current_record(), self.router.routed_id(model))
        check_capabilities(request, backend.capabilities)
        request = await self._media(request, backend, native_name)
        turns = await backend.compute_tokens(request, model=model.routed)
        return gc.ComputeTokensResponse(
            tokens_info=[
                gc.TokensInfo(
                    tokens=[base64.b64encode(piece).decode() for piece in turn.pieces],
                    token_ids=[str(token) for token in turn.ids],
                    role=turn.role,
                )
                for turn in turns
            ]
        )

    async def _media(
        self, request: gc.GenerateContentRequest, backend: Backend, name: Namer
    ) -> gc.GenerateContentRequest:
        """Inline media checked; what URIs point at read, for a backend that does not read them."""
        await self.media.check_inline(request, name)
        if backend.capabilities.reads_media_uris:
            return request
        return await self.media.inline(request, name)

    def _deadline_error(self, timeout_s: float) -> DeadlineExceededError:
        return DeadlineExceededError(f"The request did not finish within {timeout_s:g} s.")

    def _finish(self, prepared: Prepared, response: gc.GenerateContentResponse, charge: _Charge) -> None:
        if not prepared.include_thoughts:
            _drop_thoughts(response)
        usage = response.usage_metadata
        if usage is None:
            return
        if prepared.cached_tokens:
            cached = min(prepared.cached_tokens, usage.prompt_token_count or 0)
            usage.cached_content_token_count = max(usage.cached_content_token_count or 0, cached) or None
        charge.count(usage)

    async def generate(self, prepared: Prepared) -> gc.GenerateContentResponse:
        try:  # a timeout, not wait_for: no task per request
            async with asyncio.timeout(prepared.timeout_s):
                blocked = await self._prompt_block(prepared)
                if blocked is not None:
                    self._finish(prepared, blocked, _Charge(current_record()))
                    return blocked
                response = await prepared.backend.generate(prepared.request, model=prepared.model.routed)
                if self._signs(prepared.backend):
                    self.signer.sign_response(response)
                if prepared.grounding is not None:
                    prepared.grounding.add_metadata(response, include_thoughts=prepared.include_thoughts)
                if prepared.safety is not None:  # what the client would get
                    await prepared.safety.check_answer(response)
        except TimeoutError:
            raise self._deadline_error(prepared.timeout_s) from None
        self._finish(prepared, response, _Charge(current_record()))
        return response

    async def _prompt_block(self, prepared: Prepared) -> gc.GenerateContentResponse | None:
        if prepared.safety is None:
            return None
        return await prepared.safety.prompt_block(prepared.request, prepared.backend, prepared.model.routed)

    async def stream(self, prepared: Prepared) -> AsyncIterator[gc.GenerateContentResponse]:
        clock = _StreamClock(self.metrics, current_record())
        charge = _Charge(current_record())
        try:
            async with asyncio.timeout(prepared.timeout_s):
                blocked = await self._prompt_block(prepared)
        except TimeoutError:
            raise self._deadline_error(prepared.timeout_s) from None
        if blocked is not None:  # the stream's first and only chunk
            self._finish(prepared, blocked, charge)
            clock.tick()
            yield blocked
            return
        upstream = prepared.backend.stream(prepared.request, model=prepared.model.routed)
        if self._signs(prepared.backend):
            upstream = self.signer.sign_stream(upstream)  # sees the thoughts it seals
        if prepared.grounding is not None:
            upstream = prepared.grounding.guard(upstream)
        if prepared.safety is not None:
            upstream = prepared.safety.guard(upstream)  # sees what the client would
        deadline = _Deadline(prepared.timeout_s)
        try:
            while True:
                deadline.waiting = asyncio.current_task()
                try:
                    response = await anext(upstream)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if deadline.passed():
                        raise self._deadline_error(prepared.timeout_s) from None
                    raise
                finally:
                    deadline.waiting = None
                self._finish(prepared, response, charge)
                clock.tick()
                yield response
                if deadline.expired:  # passed while the consumer had the chunk
                    raise self._deadline_error(prepared.timeout_s)
        finally:
            deadline.cancel()
            await upstream.aclose()  # type: ignore[attr-defined]


class _Deadline:
    """A stream's deadline: one timer for the whole stream (asyncio.timeout around each chunk's
    wait would arm one per chunk). It cancels the task only while it waits for the next chunk,
    never the consumer's own work between chunks."""

    def __init__(self, timeout_s: float) -> None:
        self.waiting: asyncio.Task[Any] | None = None  # the task waiting for the next chunk
        self.expired = False
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._expire)

    def _expire(self) -> None:
        self.expired = True
        if self.waiting is not None:
            self.waiting.cancel()

    def passed(self) -> bool:
        """After a CancelledError in the wait: whether it was this deadline's (and only its)."""
        return self.expired and self.waiting is not None and self.waiting.uncancel() == 0

    def cancel(self) -> None:
        self._timer.cancel()


def _drop_thoughts(response: gc.GenerateContentResponse) -> None:
    """Thoughts reach the client only when asked for (include_thoughts); their signatures
    carry them either way."""
    for candidate in response.candidates or []:
        if candidate.content is not None:
            candidate.content.parts = [part for part in candidate.content.parts if not part.thought]


class _Charge:
    """One generation's tokens, added to its request's record: a stream's usage is cumulative, and
    one request (a prediction of several instances) may hold several generations."""

    def __init__(self, record: RequestRecord) -> None:
        self._record = record
        self._prompt = self._output = 0

    def count(self, usage: gc.UsageMetadata) -> None:
        prompt = usage.prompt_token_count or 0
        output = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
        record = self._record
        record.prompt_tokens = (record.prompt_tokens or 0) + prompt - self._prompt
        record.output_tokens = (record.output_tokens or 0) + output - self._output
        self._prompt, self._output = prompt, output


class _StreamClock:
    """Time to first chunk and the gaps between chunks, for the latency histograms."""

    def __init__(self, metrics: Metrics, record: RequestRecord) -> None:
        self._metrics = metrics
        self._record = record
        self._started = self._last = time.monotonic()
        self._first = True

    def tick(self) -> None:
        now = time.monotonic()
        if self._first:
            self._metrics.time_to_first_token.observe(now - self._started)
            self._record.time_to_first_token_ms = round((now - self._started) * 1000, 3)
            self._first = False
        else:
            self._metrics.time_per_token.observe(now - self._last)
        self._last = now
