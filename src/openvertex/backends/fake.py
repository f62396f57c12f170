"""A scripted backend for tests: records every request and replays scripted responses.

With nothing scripted it echoes the last user text, which is enough to drive the spine.
It never stands in for the real engine where the behaviour is the engine's.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import AsyncGenerator, Iterable, Sequence
from pathlib import Path

from openvertex.backends.base import (
    OPTIONAL_FIELDS,
    BackendLoad,
    CacheUsage,
    Capabilities,
    LiveCaches,
    RoleTokens,
    collect_stream,
    reduce_dimensions,
)
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest

# A turn is the chunks of one answer; an exception in it is raised when the stream reaches it.
Turn = Sequence[gc.GenerateContentResponse | Exception] | Exception


class FakeBackend:
    kind = "fake"

    def __init__(self, script: Iterable[Turn] = (), *, capabilities: Capabilities | None = None) -> None:
        self._script: deque[Turn] = deque(script)
        self._capabilities = capabilities or Capabilities(
            function_calling=True,
            input_mime_prefixes=("image/", "audio/", "video/", "application/", "text/"),
            reads_media_uris=True,  # like Gemini: URIs stay URIs
            thinking=True,
            output_modalities=frozenset({"TEXT", "IMAGE", "AUDIO"}),
            safety_filtering=True,
            cached_content=True,
            google_tools=frozenset({"googleSearch", "codeExecution", "urlContext"}),
            thought_signatures=True,  # scripted signatures pass through, like Gemini's
            min_cached_content_tokens=1,
            optional_fields=OPTIONAL_FIELDS,
        )
        self.requests: list[gc.GenerateContentRequest] = []
        self.embedded: list[EmbedRequest] = []
        self.prefixes: dict[str, gc.GenerateContentRequest] = {}  # context caches announced, by name

    @classmethod
    def from_file(cls, path: Path) -> FakeBackend:
        """A JSON list of turns; each turn is a list of GenerateContentResponse chunks."""
        turns = json.loads(path.read_text())
        return cls([[gc.GenerateContentResponse.model_validate(c) for c in turn] for turn in turns])

    def add(self, turn: Turn) -> None:
        self._script.append(turn)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def ready(self) -> bool:
        return True

    def load(self) -> BackendLoad:
        return BackendLoad()

    def cache_usage(self) -> CacheUsage:
        return CacheUsage(count=len(self.prefixes))

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def _next_turn(self, request: gc.GenerateContentRequest) -> Sequence[gc.GenerateContentResponse | Exception]:
        self.requests.append(request)
        turn = self._script.popleft() if self._script else [_echo(request)]
        if isinstance(turn, Exception):
            raise turn
        return turn

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        return await collect_stream(self.stream(request, model=model))

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        for item in self._next_turn(request):
            if isinstance(item, Exception):
                raise item
            yield item

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        """With `embeddings` among its capabilities: a vector drawn from each text's digest (one
        token per word), so equal texts embed equally and different ones apart."""
        self.embedded.append(request)
        if not self._capabilities.embeddings:
            raise InvalidArgumentError("This model does not embed.")
        size = self._capabilities.embedding_dimensions or 8
        embeddings = []
        for text in request.texts:
            seed = hashlib.sha256(repr((text.text, text.tokens, text.task_type, text.title)).encode()).digest()
            raw = [(seed[i % len(seed)] - 127.5) / 127.5 + i * 1e-3 for i in range(size)]
            count = len(text.tokens) if text.tokens is not None else len((text.text or "").split())
            embeddings.append(Embedding(reduce_dimensions(raw, text.output_dimensionality), count))
        return embeddings

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        return sum(len(tokens.ids) for tokens in await self.compute_tokens(request, model=model))

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        """One token per word: enough to drive counting and caching rules."""
        system = [request.system_instruction] if request.system_instruction is not None else []
        counted = []
        for content in system + request.contents:
            words = [w.encode() for p in content.parts if p.text for w in p.text.split()]
            counted.append(RoleTokens(content.role or "user", list(range(len(words))), words))
        return counted

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        self.prefixes[name] = request

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        self.prefixes.pop(name, None)

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        alive = await live(list(self.prefixes))
        for name in [name for name in self.prefixes if name not in alive]:
            del self.prefixes[name]


def _echo(request: gc.GenerateContentRequest) -> gc.GenerateContentResponse:
    texts = [p.text for c in request.contents if c.role == "user" for p in c.parts if p.text]
    text = texts[-1] if texts else ""
    words = len(text.split())
    return gc.GenerateContentResponse(
        candidates=[
            gc.Candidate(index=0, content=gc.Content(role="model", parts=[gc.Part(text=text)]), finish_reason="STOP")
        ],
        usage_metadata=gc.UsageMetadata(
            prompt_token_count=words, candidates_token_count=words, total_token_count=2 * words
        ),
    )
