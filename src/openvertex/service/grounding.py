"""Grounding with search (`googleSearch`, the OpenAI surface's `web_search_options`) for backends
without Google Search: the configured provider (service/search_providers.py) is searched with the
last user turn, its results go into the system instruction as numbered sources, and the answer
comes back with Gemini's `groundingMetadata`: the query, the sources as `groundingChunks`, and a
`groundingSupports` entry for each sentence that cites a source, by its number in brackets or,
failing that, by the words it shares with it. A segment's offsets are bytes into the candidate's
answer text (its text parts other than thoughts, joined), as Gemini counts them.

`googleSearchRetrieval` (the Gemini 1.5 tool) is Gemini 2's 400 on every backend.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from openvertex.backends.base import Capabilities
from openvertex.errors import InvalidArgumentError, unsupported
from openvertex.http_clients import HttpClients
from openvertex.protocol import generate_content as gc
from openvertex.service.capabilities import Namer
from openvertex.service.corpus_vectors import PassageEmbedder
from openvertex.service.routing import Router
from openvertex.service.search_providers import CorpusSearch, LocalCorpus, SearchProvider, Searxng, Source
from openvertex.settings import GroundingSettings

log = logging.getLogger(__name__)

RETRIEVAL_REFUSED = (
    "Unable to submit request because google_search_retrieval is not supported; please use google_search field "
    "instead. Learn more: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
)
MAX_QUERY_CHARS = 400
SOURCE_CHARS = 700  # of each source, in the prompt
INSTRUCTION = (
    "Answer the user with the help of these search results. After each sentence that uses a result, "
    "cite it by its number in brackets, like [1]."
)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|$)")
_CITATION = re.compile(r"\[(\d{1,2})\]")
_WORD = re.compile(r"\w{4,}", re.UNICODE)
_MIN_SHARED_WORDS = 2
_MIN_OVERLAP = 0.5  # of a sentence's words found in a source, to support it without a citation


class GroundingPolicy:
    def __init__(self, settings: GroundingSettings, state_dir: Path, clients: HttpClients, router: Router) -> None:
        """`router`: where the corpus's embedding model is found (a ValueError, at start, when the
        configuration asks for a search by meaning that no backend here can embed)."""
        self._settings = settings
        self._search_url = settings.searxng_url.rstrip("/") + "/search" if settings.searxng_url else None
        self._provider: SearchProvider | None = None
        if settings.provider == "searxng" and settings.searxng_url:
            self._provider = Searxng(settings.searxng_url, timeout_s=settings.timeout_s, clients=clients)
        elif settings.provider == "corpus" and settings.corpus_dir is not None:
            index = state_dir / "grounding" / "corpus.sqlite3"
            search, embedder = _corpus_search(settings, router)
            self._provider = LocalCorpus(
                settings.corpus_dir, index, base_url=settings.corpus_base_url, search=search, embedder=embedder
            )

    def plan(self, request: gc.GenerateContentRequest, caps: Capabilities, name: Namer) -> Grounding | None:
        """A Grounding when this server searches for the request, else None; the 400s for search
        tools no backend here honours."""
        searched = None
        for index, tool in enumerate(request.tools or []):
            extra = tool.model_extra or {}
            if "googleSearchRetrieval" in extra or "google_search_retrieval" in extra:
                raise InvalidArgumentError(RETRIEVAL_REFUSED, param=name(f"tools[{index}].googleSearchRetrieval"))
            if tool.google_search is not None:
                searched = index
        if searched is None or "googleSearch" in caps.google_tools:
            return None
        if self._provider is None:
            raise unsupported(name(f"tools[{searched}].googleSearch"), "search grounding (no grounding provider)")
        options = request.tools[searched].google_search if request.tools else None
        for option in options or {}:
            raise unsupported(name(f"tools[{searched}].googleSearch.{option}"), f"the search option {option!r}")
        return Grounding(self._provider, self._settings.max_sources, self._search_url)

    async def start(self) -> None:
        if self._provider is None:
            return
        try:
            await self._provider.start()
        except Exception:  # searches will try again, and fail with the same error in view
            log.exception("could not get the grounding provider ready")

    async def close(self) -> None:
        if self._provider is not None:
            await self._provider.close()


def _corpus_search(settings: GroundingSettings, router: Router) -> tuple[CorpusSearch, PassageEmbedder | None]:
    """How the corpus is searched, and with which embedding model. A search by meaning needs
    `embedding_model` routed to a backend that embeds: without one, "hybrid" left as the default
    searches words alone (with a warning), and a search by meaning that was asked for is an error."""
    if settings.corpus_search == "words":
        return "words", None
    name = settings.embedding_model
    backend = router.find(name)
    if backend is not None and backend.capabilities.embeddings:
        return settings.corpus_search, PassageEmbedder(backend, name)
    why = (
        "is routed to no backend"
        if backend is None
        else f"is routed to {router.name_of(backend)!r}, which does not embed"
    )
    if "corpus_search" in settings.model_fields_set:
        raise ValueError(
            f'grounding.corpus_search = "{settings.corpus_search}" needs grounding.embedding_model to be an '
            f"embedding model: `{name}` {why}"
        )
    log.warning("the grounding corpus is searched by its words only: the embedding model `%s` %s", name, why)
    return "words", None


@dataclass(slots=True)
class Grounding:
    """One request's search: run before generation, its metadata added to the answer."""

    provider: SearchProvider
    max_sources: int
    search_url: str | None
    query: str = ""
    sources: Sequence[Source] = ()

    @staticmethod
    def without_search(request: gc.GenerateContentRequest) -> gc.GenerateContentRequest:
        """The request as its backend sees it: no googleSearch tool (the search is done here)."""
        tools = [t for t in request.tools or [] if t.google_search is None or t.function_declarations]
        tools = [t.model_copy(update={"google_search": None}) for t in tools]
        return request.model_copy(update={"tools": tools or None})

    async def search(self, request: gc.GenerateContentRequest) -> gc.GenerateContentRequest:
        """Search with the last user turn; the request with the results in that turn, numbered, and
        the instruction to cite them in its system instruction."""
        turns = request.user_texts()
        self.query = next((turn for turn in reversed(turns) if turn.strip()), "")[:MAX_QUERY_CHARS].strip()
        self.sources = await self.provider.search(self.query, self.max_sources) if self.query else []
        if not self.sources:
            return request
        listed = "\n\n".join(
            f"[{number}] {source.title} ({source.uri})\n{source.text[:SOURCE_CHARS]}"
            for number, source in enumerate(self.sources, 1)
        )
        # The instruction is the server's, in the system turn; the results are the web's, in the
        # user's turn (a page cannot speak with the system's voice), before the question.
        system = request.system_instruction or gc.Content(parts=[])
        system = system.model_copy(update={"parts": [*system.parts, gc.Part(text=INSTRUCTION)]})
        contents = list(request.contents)
        last = max(i for i, content in enumerate(contents) if content.role in (None, "user"))
        results = gc.Part(text=f"Search results:\n\n{listed}\n\nEnd of the search results.\n\n")
        contents[last] = contents[last].model_copy(update={"parts": [results, *contents[last].parts]})
        return request.model_copy(update={"system_instruction": system, "contents": contents})

    def stage(self, *, include_thoughts: bool) -> GroundingStage:
        return GroundingStage(self, include_thoughts=include_thoughts)

    def metadata(self, answer: str, part_index: int) -> dict[str, Any]:
        """Gemini's groundingMetadata for an answer to this search."""
        chunks = [{"web": {"uri": s.uri, "title": s.title, "domain": s.domain}} for s in self.sources]
        return {
            "webSearchQueries": [self.query] if self.query else [],
            "groundingChunks": chunks,
            "groundingSupports": _supports(answer, self.sources, part_index),
            "searchEntryPoint": {"renderedContent": self._entry_point()},
        }

    def _entry_point(self) -> str:
        """The search chip Gemini asks apps to show: the query, linking to the search where there is one."""
        query = html.escape(self.query)
        chip = (
            f'<a class="chip" href="{html.escape(self.search_url)}?q={quote(self.query)}">{query}</a>'
            if self.search_url
            else f'<span class="chip">{query}</span>'
        )
        return (
            "<style>.container{display:flex;gap:8px;align-items:center;font-family:sans-serif}"
            ".chip{border:1px solid #ccc;border-radius:16px;padding:4px 12px;text-decoration:none;color:#333}</style>"
            f'<div class="container">{chip}</div>'
        )


class GroundingStage:
    """The response stage that puts the search's groundingMetadata on each candidate's last chunk:
    its supports are segments of the candidate's whole answer text, in the part the client gets
    that text in (runs of text parts merge into one part; thoughts count only when shown)."""

    stopped = False

    def __init__(self, grounding: Grounding, *, include_thoughts: bool) -> None:
        self._grounding = grounding
        self._include_thoughts = include_thoughts
        self._answers: dict[int, str] = {}
        self._shapes: dict[int, _PartShapes] = {}

    async def feed(self, chunk: gc.GenerateContentResponse) -> list[gc.GenerateContentResponse]:
        for position, candidate in enumerate(chunk.candidates or []):
            index = candidate.index_at(position)
            self._answers[index] = self._answers.get(index, "") + candidate.text()
            shapes = self._shapes.setdefault(index, _PartShapes())
            for part in candidate.content_parts():
                if self._include_thoughts or not part.thought:
                    shapes.add(part)
            if candidate.finish_reason is not None:
                candidate.grounding_metadata = self._grounding.metadata(self._answers[index], shapes.first_answer or 0)
        return [chunk]

    async def finish(self) -> list[gc.GenerateContentResponse]:
        return []


@dataclass(slots=True)
class _PartShapes:
    """The parts a client gets of one candidate, as far as their positions go: where its answer
    text starts once runs of text parts are merged."""

    count: int = 0
    last: tuple[bool, bool] | None = None  # of the last part: (a text part, a thought)
    first_answer: int | None = None

    def add(self, part: gc.Part) -> None:
        shape = (part.text is not None and part.function_call is None, bool(part.thought))
        if not (shape[0] and shape == self.last):  # not the continuation of a run of text
            self.count += 1
        if shape == (True, False) and self.first_answer is None:
            self.first_answer = self.count - 1
        self.last = shape


def _supports(answer: str, sources: Sequence[Source], part_index: int) -> list[dict[str, Any]]:
    words = [set(w.lower() for w in _WORD.findall(source.title + " " + source.text)) for source in sources]
    supports = []
    for found in _SENTENCE.finditer(answer):
        sentence = found.group().strip()
        if not sentence:
            continue
        start = found.start() + (len(found.group()) - len(found.group().lstrip()))
        end = start + len(sentence)
        cited = [int(n) - 1 for n in _CITATION.findall(sentence) if 1 <= int(n) <= len(sources)]
        scores = [1.0] * len(cited)
        if not cited:
            said = {w.lower() for w in _WORD.findall(_CITATION.sub("", sentence))}
            for index, known in enumerate(words):
                shared = len(said & known)
                if said and shared >= _MIN_SHARED_WORDS and shared / len(said) >= _MIN_OVERLAP:
                    cited.append(index)
                    scores.append(round(shared / len(said), 3))
        if cited:
            unique = list(dict.fromkeys(cited))
            supports.append(
                {
                    "segment": {
                        "partIndex": part_index,
                        "startIndex": len(answer[:start].encode()),
                        "endIndex": len(answer[:end].encode()),
                        "text": sentence,
                    },
                    "groundingChunkIndices": unique,
                    "confidenceScores": [scores[cited.index(i)] for i in unique],
                }
            )
    return supports
