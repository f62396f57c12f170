"""The native surface (generateContent, as google-genai speaks it in both dialects): a model's
backend or the dialect's own 404, the pipeline's answer rendered as the dialect writes it, token
counting, and the model list.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

from openvertex.backends.base import Backend
from openvertex.errors import NotFoundError
from openvertex.protocol import generate_content as gc
from openvertex.service.faults import refuse_requested_fault
from openvertex.service.pipeline import Pipeline, Prepared, Streamed
from openvertex.service.routing import Router
from openvertex.translate.context import new_response_id
from openvertex.translate.native import (
    billable_characters,
    check_native_request,
    count_tokens_request,
    format_time,
    render_response,
    with_enum_numbers,
)
from openvertex.translate.resources import ModelName

GENERATION_METHODS = ["generateContent", "streamGenerateContent", "countTokens", "computeTokens", "createCachedContent"]


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What a model URL names: the model, its dialect, and the API version and method (for the
    dialect's wording of a 404); whether the answer writes its enums as numbers."""

    model: ModelName
    dialect: gc.Dialect
    version: str | None
    method: str | None  # generateContent, …; None for a model get
    enum_numbers: bool = False


@dataclass(frozen=True, slots=True)
class PreparedNative:
    prepared: Prepared
    dialect: gc.Dialect
    model_version: str
    response_id: str
    create_time: str
    enum_numbers: bool = False

    def ids(self, response: gc.GenerateContentResponse) -> tuple[str, str]:
        """The answer's id and time: its backend's where it gives them (Gemini's own, a recording's),
        else openvertex's."""
        return response.response_id or self.response_id, response.create_time or self.create_time

    def render(self, response: gc.GenerateContentResponse, ids: tuple[str, str] | None = None) -> dict[str, Any]:
        response_id, create_time = ids or self.ids(response)
        rendered = render_response(
            response,
            dialect=self.dialect,
            model_version=self.model_version,
            response_id=response_id,
            create_time=create_time,
        )
        return with_enum_numbers(rendered, self.dialect) if self.enum_numbers else rendered


class _Rendering:
    """A native stream's translation: each chunk rendered as its dialect writes it, every one with
    the first chunk's id and time."""

    def __init__(self, native: PreparedNative) -> None:
        self._native = native
        self._ids: tuple[str, str] | None = None

    def feed(self, response: gc.GenerateContentResponse) -> list[dict[str, Any]]:
        self._ids = self._ids or self._native.ids(response)
        return [self._native.render(response, self._ids)]

    def finish(self) -> list[dict[str, Any]]:
        return []


class NativeService:
    def __init__(self, pipeline: Pipeline, router: Router) -> None:
        self.pipeline = pipeline
        self.router = router

    def backend(self, call: ModelCall) -> Backend:
        """The backend serving a native model name, or the 404 each dialect words its own way."""
        backend = self.router.find_model(call.model)
        if backend is not None:
            return backend
        model = call.model
        if model.publisher is None:
            raise NotFoundError(f"Endpoint `{model.resource}` not found.")
        if call.dialect == "gemini":
            raise NotFoundError(
                f"{model.resource} is not found for API version {call.version}, or is not supported for "
                f"{call.method or 'get'}. Call ListModels to see the list of available models and their supported "
                "methods."
            )
        raise NotFoundError(
            f"Publisher Model `{model.resource}` was not found or your project does not have access to it. "
            "Please ensure you are using a valid model version. For more information, see: "
            "https://cloud.google.com/vertex-ai/generative-ai/docs/learn/model-versions"
        )

    # ------------------------------------------------------------------ generation

    async def prepare(
        self, body: gc.GenerateContentRequest, call: ModelCall, *, timeout_s: float | None
    ) -> PreparedNative:
        """Everything that can fail with a 4xx before any generation starts. `timeout_s`: the
        client's own deadline (X-Server-Timeout), within the server's."""
        check_native_request(body)
        backend = self.backend(call)
        prepared = await self.pipeline.prepare(body, call.model, backend, dialect=call.dialect, timeout_s=timeout_s)
        return PreparedNative(
            prepared, call.dialect, call.model.model, new_response_id(), format_time(time.time()), call.enum_numbers
        )

    async def generate(self, native: PreparedNative) -> dict[str, Any]:
        return native.render(await self.pipeline.generate(native.prepared))

    def stream(self, native: PreparedNative) -> Streamed[dict[str, Any]]:
        return Streamed(self.pipeline.stream(native.prepared), _Rendering(native))

    # ------------------------------------------------------------------ tokens

    async def count_tokens(self, body: gc.CountTokensRequest, call: ModelCall) -> gc.CountTokensResponse:
        refuse_requested_fault("countTokens answers no model's answer")
        """What the model would read for the request (a named cache's content included, not warmed)."""
        request = count_tokens_request(body)
        check_native_request(request)
        backend = self.backend(call)
        billable = billable_characters(request)  # what the client sent, not a named cache's content
        request, cached = await self.pipeline.prompt(request, call.model, backend, dialect=call.dialect)
        total = await backend.count_tokens(request, model=call.model.routed)
        return gc.CountTokensResponse(
            total_tokens=total,
            cached_content_token_count=(cached or None) if call.dialect == "gemini" else None,
            total_billable_characters=billable if call.dialect == "vertex" else None,
            prompt_tokens_details=[gc.ModalityTokenCount(modality="TEXT", token_count=total)],
        )

    async def compute_tokens(self, body: gc.ComputeTokensRequest, call: ModelCall) -> gc.ComputeTokensResponse:
        refuse_requested_fault("computeTokens answers no model's answer")
        request = gc.GenerateContentRequest(contents=body.contents or [])
        check_native_request(request)
        backend = self.backend(call)
        request, _ = await self.pipeline.prompt(request, call.model, backend, dialect=call.dialect)
        turns = await backend.compute_tokens(request, model=call.model.routed)
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

    # ------------------------------------------------------------------ models

    def model_info(self, call: ModelCall) -> gc.ModelInfo:
        caps = self.backend(call).capabilities
        model = call.model
        publisher = model.publisher or "google"
        return gc.ModelInfo(
            name=f"models/{model.model}"
            if call.dialect == "gemini"
            else f"publishers/{publisher}/models/{model.model}",
            display_name=model.model,
            description=f"{model.model}, served by openvertex",
            version="001",
            version_id="001",
            input_token_limit=caps.input_token_limit,
            output_token_limit=caps.max_output_tokens,
            supported_generation_methods=GENERATION_METHODS,
            thinking=caps.thinking,
        )

    def listed(self, dialect: gc.Dialect) -> list[dict[str, Any]]:
        """The model routes that name one model (globs are not listable; any name they match answers
        a get). The Gemini API lists Google's models only."""
        listed = []
        for pattern, _ in self.router.models():
            publisher, _, bare = pattern.rpartition("/")
            if any(c in pattern for c in "*?[") or (dialect == "gemini" and publisher not in ("", "google")):
                continue
            call = ModelCall(ModelName(pattern, publisher or None, bare), dialect, None, None)
            listed.append(self.model_info(call).to_json_dict())
        return listed
