"""The embedded embedding model as a backend: it embeds, counts and computes tokens, and writes nothing.

The model loads at start on a worker thread (the packaged model is converted to GGUF the first
time). A text becomes the model's input as: the task type's prompt (if configured), the title and a
blank line (a RETRIEVAL_DOCUMENT's), then the text; cut to `max_text_tokens` (its last token kept
[SEP]) unless autoTruncate is off, which makes a longer text a 400.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator
from pathlib import Path

from llama_cpp._logger import set_verbose as set_llama_verbose

from openvertex.backends.base import BackendLoad, CacheUsage, Capabilities, LiveCaches, RoleTokens, reduce_dimensions
from openvertex.backends.embedding.engine import EmbeddingEngine
from openvertex.backends.embedding.model_files import declared_dimensions, gguf_path
from openvertex.errors import InvalidArgumentError, UnavailableError
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest, EmbedText
from openvertex.settings import EmbeddingBackendSettings

log = logging.getLogger(__name__)

# Tokenising this much text in one request moves off the event loop.
_INLINE_BYTES = 64 * 1024


class EmbeddingBackend:
    kind = "embedding"

    def __init__(self, settings: EmbeddingBackendSettings, directory: Path) -> None:
        self.settings = settings
        self._directory = directory
        self._engine: EmbeddingEngine | None = None
        self._load_error: str | None = None
        self._loaded = asyncio.Event()
        # Known before the model loads where a folder says it, so a request's dimensions are judged
        # while it loads too (a GGUF file tells once loaded).
        self._dimensions = declared_dimensions(settings.model)

    @property
    def capabilities(self) -> Capabilities:
        engine = self._engine
        return Capabilities(
            generation=False,
            embeddings=True,
            embedding_dimensions=engine.dimensions if engine is not None else self._dimensions,
            embedding_input_tokens=self.settings.max_text_tokens,
            embedding_token_ids=True,
            input_token_limit=self.settings.max_text_tokens,
        )

    def ready(self) -> bool:
        return self._loaded.is_set()

    def load(self) -> BackendLoad:
        engine = self._engine
        if engine is None:
            return BackendLoad()
        return BackendLoad(tokens_prefilled=engine.tokens_read, texts_embedded=engine.texts_embedded)

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()

    async def start(self) -> None:
        try:
            self._engine = await asyncio.to_thread(self._open)
        except Exception as error:
            self._load_error = str(error)
            log.exception("could not load the embedding model %s", self.settings.model)
        finally:
            self._loaded.set()

    def _open(self) -> EmbeddingEngine:
        set_llama_verbose(log.isEnabledFor(logging.DEBUG))
        path = gguf_path(self.settings.model, self._directory)
        return EmbeddingEngine(
            path,
            n_threads=self.settings.n_threads or os.cpu_count() or 1,
            max_batch_tokens=self.settings.max_batch_tokens,
            max_sequences=self.settings.max_batch_texts,
            max_waiting=self.settings.max_waiting_texts,
        )

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await asyncio.to_thread(engine.close)

    async def _ready_engine(self) -> EmbeddingEngine:
        await self._loaded.wait()
        if self._engine is None:
            raise UnavailableError(f"The embedding model could not be loaded: {self._load_error or 'closed'}.")
        return self._engine

    # ------------------------------------------------------------------ embeddings

    def _input(self, engine: EmbeddingEngine, text: EmbedText) -> tuple[list[int], bool]:
        """The token ids the model reads for `text`, and whether they were cut."""
        if text.tokens is not None:
            bad = next((t for t in text.tokens if not 0 <= t < engine.n_vocab), None)
            if bad is not None:
                raise InvalidArgumentError(f"token id {bad} is not in this model's vocabulary", param=text.where)
            tokens = list(text.tokens)
            if tokens[0] != engine.cls_token:
                tokens.insert(0, engine.cls_token)
            if tokens[-1] != engine.sep_token:
                tokens.append(engine.sep_token)
        else:
            prompt = self.settings.task_prompts.get(text.task_type or "", "")
            title = f"{text.title}\n\n" if text.title else ""
            tokens = engine.tokenize(prompt + title + (text.text or ""))
        limit = self.settings.max_text_tokens
        if len(tokens) <= limit:
            return tokens, False
        if not text.auto_truncate:
            raise InvalidArgumentError(
                f"the text is {len(tokens)} tokens; this model reads at most {limit} (autoTruncate is off)",
                param=text.where or None,
            )
        return [*tokens[: limit - 1], engine.sep_token], True

    def _inputs(self, engine: EmbeddingEngine, request: EmbedRequest) -> list[tuple[list[int], bool]]:
        return [self._input(engine, text) for text in request.texts]

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        engine = await self._ready_engine()
        size = sum(len(text.text or "") for text in request.texts)
        inputs = (
            await asyncio.to_thread(self._inputs, engine, request)
            if size > _INLINE_BYTES
            else self._inputs(engine, request)
        )
        vectors = await engine.embed([tokens for tokens, _ in inputs])
        return [
            Embedding(reduce_dimensions(vector.tolist(), text.output_dimensionality), len(tokens), truncated)
            for vector, (tokens, truncated), text in zip(vectors, inputs, request.texts, strict=True)
        ]

    # ------------------------------------------------------------------ tokens

    @staticmethod
    def _texts(request: gc.GenerateContentRequest) -> str:
        contents = [*(request.contents or []), *([request.system_instruction] if request.system_instruction else [])]
        for content in contents:
            for part in content.parts:
                if part.text is None:
                    raise InvalidArgumentError("this model reads text only", field="contents")
        return "\n".join(part.text or "" for content in contents for part in content.parts)

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        engine = await self._ready_engine()
        return len(engine.tokenize(self._texts(request)))

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        engine = await self._ready_engine()
        ids = engine.tokenize(self._texts(request))
        return [RoleTokens("user", ids, [engine.piece(token) for token in ids])]

    # ------------------------------------------------------------------ what it does not do

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        raise InvalidArgumentError("This is an embedding model: it does not generate content.", field="model")

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        raise InvalidArgumentError("This is an embedding model: it does not generate content.", field="model")
        yield  # pragma: no cover  (a generator, as the protocol asks)

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        raise InvalidArgumentError("An embedding model keeps no context caches.", field="model")

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        return None

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        return None
