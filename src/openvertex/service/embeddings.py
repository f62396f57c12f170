"""Embedding requests, whichever surface they came by: the model's backend, the key's right to it,
the bounds a request is held to, one deadline, and the tokens counted for quotas and usage."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from openvertex.backends.base import Backend
from openvertex.errors import DeadlineExceededError, InvalidArgumentError
from openvertex.protocol.embeddings import Embedding, EmbedRequest
from openvertex.request_record import current_record
from openvertex.service.faults import Faults, before_answer
from openvertex.service.keys import check_model
from openvertex.service.routing import Router
from openvertex.translate.embeddings import EmbeddingLimits

# Texts in one request, as Google bounds them: the Gemini API's batchEmbedContents takes 100
# requests, Vertex's text-embedding :predict 250 instances; OpenAI's embeddings take 2048 inputs.
MAX_TEXTS = {"native": 100, "predict": 250, "openai": 2048}
MAX_TEXT_BYTES = 64 * 1024  # one text, before any tokenising (models read at most a few thousand tokens)


@dataclass(frozen=True, slots=True)
class EmbeddingModel:
    """A model an embedding request named, resolved: its routed id (`google/text-embedding-005`: as
    routes, allowlists and usage name it, and as its backend is asked for it) and its backend."""

    routed: str
    backend: Backend


class EmbeddingService:
    def __init__(self, router: Router, *, timeout_s: float, faults: Faults | None = None) -> None:
        self.router = router
        self.timeout_s = timeout_s
        self.faults = faults or Faults()

    def resolve(self, routed: str, backend: Backend) -> EmbeddingModel:
        """`backend` serves the model `routed`: the key must be allowed it, and it must embed."""
        record = current_record()
        record.model, record.backend = routed, self.router.name_of(backend)
        check_model(record, routed)
        if not backend.capabilities.embeddings:
            raise InvalidArgumentError(
                f"`{routed}` does not embed; embedding models are text-embedding-*, gemini-embedding-* and "
                "text-multilingual-embedding-*.",
                field="model",
            )
        return EmbeddingModel(routed, backend)

    def limits(self, model: EmbeddingModel, surface: str) -> EmbeddingLimits:
        caps = model.backend.capabilities
        return EmbeddingLimits(
            dimensions=caps.embedding_dimensions,
            max_texts=MAX_TEXTS[surface],
            max_text_bytes=MAX_TEXT_BYTES,
            token_arrays=caps.embedding_token_ids,
        )

    async def embed(self, model: EmbeddingModel, request: EmbedRequest) -> list[Embedding]:
        fault = self.faults.draw_for_embedding(model.routed, current_record().key)
        await before_answer(fault)
        try:
            async with asyncio.timeout(self.timeout_s):
                if fault is not None and fault.kind == "slow_first_byte":
                    await asyncio.sleep(fault.delay_s)
                embeddings = await model.backend.embed(request, model=model.routed)
        except TimeoutError:
            raise DeadlineExceededError(f"The request did not finish within {self.timeout_s:g} s.") from None
        record = current_record()
        record.prompt_tokens = sum(embedding.token_count for embedding in embeddings)
        record.output_tokens = 0
        return embeddings
