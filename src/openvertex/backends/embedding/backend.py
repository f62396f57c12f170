"""The embedded embedding model as a backend: it embeds, counts and computes tokens, and writes nothing.

The model loads on its first use (or at start, as configured) on a worker thread (the packaged
model is converted to GGUF the first time), and may be let go when idle (residency.py). A text
becomes the model's input as: the task type's prompt (if configured), the title and a blank line
(a RETRIEVAL_DOCUMENT's), then the text; cut to `max_text_tokens` (its last token kept [SEP])
unless autoTruncate is off, which makes a longer text a 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path

from llama_cpp._logger import set_verbose as set_llama_verbose

from openvertex.backends.base import BackendLoad, CacheUsage, Capabilities, LiveCaches, RoleTokens, reduce_dimensions
from openvertex.backends.embedding.engine import EmbeddingEngine
from openvertex.backends.embedding.model_files import declared_dimensions, gguf_path
from openvertex.backends.residency import Residency
from openvertex.errors import InvalidArgumentError, UnavailableError
from openvertex.executors import outlived
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest, EmbedText
from openvertex.settings import EmbeddingBackendSettings

log = logging.getLogger(__name__)

# Tokenising this much text in one request moves off the event loop.
_INLINE_BYTES = 64 * 1024
_DEFAULT_SIZE = 100 << 20  # what an embedding model is taken to need before a load measured it


class EmbeddingBackend:
    kind = "embedding"

    def __init__(self, settings: EmbeddingBackendSettings, directory: Path) -> None:
        self.settings = settings
        self._directory = directory
        self._engine: EmbeddingEngine | None = None
        self._in_flight = 0  # requests using the model now
        self.residency = Residency(
            f"embedding model {settings.model}",
            load=self._open,
            unload=self._close_engine,
            idle=lambda: self._in_flight == 0,
            size=lambda: self.residency.load_bytes or _DEFAULT_SIZE,
            keep_alive_s=settings.keep_alive_s,
            load_timeout_s=settings.load_timeout_s,
        )
        self._read = self._embedded = 0  # by engines let go
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
        return self.residency.serving()

    def load(self) -> BackendLoad:
        engine, residency = self._engine, self.residency
        read, embedded = (engine.tokens_read, engine.texts_embedded) if engine is not None else (0, 0)
        return BackendLoad(
            tokens_prefilled=self._read + read,
            texts_embedded=self._embedded + embedded,
            model_state=residency.state,
            model_loads=residency.loads,
        )

    def cache_usage(self) -> CacheUsage:
        return CacheUsage()

    async def start(self) -> None:
        await self.residency.start(load=self.settings.load == "start")

    async def _open(self) -> None:
        engine = self._engine = await asyncio.to_thread(self._new_engine)
        self._dimensions = engine.dimensions  # known from now on, loaded or not

    def _new_engine(self) -> EmbeddingEngine:
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
        await self._close_engine()

    async def _close_engine(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            self._read += engine.tokens_read
            self._embedded += engine.texts_embedded
            await asyncio.to_thread(engine.close)

    @contextlib.asynccontextmanager
    async def _using(self) -> AsyncIterator[EmbeddingEngine]:
        """The loaded engine (loaded first where it is not), not let go until the block ends."""
        self._hold()
        try:
            await self.residency.use()
            engine = self._engine
            if engine is None:
                raise UnavailableError("The embedding model is not loaded.")
            yield engine
        finally:
            self._stop_using()

    def _stop_using(self) -> None:
        self._in_flight -= 1
        self.residency.done()

    async def _tokenized(self, engine: EmbeddingEngine, request: EmbedRequest) -> list[tuple[list[int], bool]]:
        """A large request's texts tokenized on a worker thread, the model in use until that
        thread is done: a caller that leaves does not let the model go under it."""
        tokenizing = asyncio.ensure_future(asyncio.to_thread(self._inputs, engine, request))
        return await outlived(tokenizing, hold=self._hold, release=self._stop_using)

    def _hold(self) -> None:
        self._in_flight += 1

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
        async with self._using() as engine:
            size = sum(len(text.text or "") for text in request.texts)
            inputs = await self._tokenized(engine, request) if size > _INLINE_BYTES else self._inputs(engine, request)
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
        async with self._using() as engine:
            return len(engine.tokenize(self._texts(request)))

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        async with self._using() as engine:
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
