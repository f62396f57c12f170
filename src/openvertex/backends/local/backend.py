"""LocalBackend: GenerateContentRequest → prompt tokens → engine job → GenerateContentResponse chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import llama_cpp

from openvertex.backends.base import Capabilities, collect_stream
from openvertex.backends.local.engine import CandidateDone, Engine, Event, Failed, Job, Sampling, TextDelta
from openvertex.backends.local.grammar import SUPPORTED_MIME_TYPES, check_grammar, grammar_for
from openvertex.backends.local.model import resolve_model_path, sampling_defaults
from openvertex.backends.local.prompt import ChatTemplate, contents_to_messages, output_instruction
from openvertex.errors import InvalidArgumentError, UnavailableError
from openvertex.protocol import generate_content as gc
from openvertex.settings import LocalBackendSettings

log = logging.getLogger(__name__)

# Gemini's defaults where neither the request nor the model says otherwise; min_p is
# llama.cpp's quality floor.
GEMINI_TEMPERATURE = 1.0
GEMINI_TOP_P = 0.95
DEFAULT_TOP_K = 64
MIN_P = 0.05


class LocalBackend:
    capabilities = Capabilities(response_mime_types=SUPPORTED_MIME_TYPES)

    def __init__(self, settings: LocalBackendSettings) -> None:
        self.settings = settings
        self.model_path: Path = resolve_model_path(settings.model)  # fail fast on a bad path
        model_defaults = sampling_defaults(settings.model)
        self._default_temperature = _first(settings.temperature, model_defaults.temperature, GEMINI_TEMPERATURE)
        self._default_top_p = _first(settings.top_p, model_defaults.top_p, GEMINI_TOP_P)
        self._repeat_penalty = _first(settings.repeat_penalty, model_defaults.repeat_penalty, 1.0)
        self._llama: llama_cpp.Llama | None = None
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None
        self._loaded = asyncio.Event()
        self._load_error: str | None = None
        self._jobs: set[Job] = set()  # in flight, cancelled on close

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> bool:
        return self._engine is not None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._load)
        except Exception as error:
            self._load_error = str(error)
            log.exception("could not load %s", self.model_path)
        finally:
            self._loaded.set()

    def _load(self) -> None:
        threads = self.settings.n_threads or os.cpu_count() or 1
        llama = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.settings.n_ctx,
            n_batch=self.settings.n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )
        bos = (
            llama.detokenize([llama.token_bos()], special=True).decode(errors="ignore")
            if llama.token_bos() >= 0
            else ""
        )
        eos = (
            llama.detokenize([llama.token_eos()], special=True).decode(errors="ignore")
            if llama.token_eos() >= 0
            else ""
        )
        self._template = ChatTemplate(llama.metadata.get("tokenizer.chat_template"), bos_token=bos, eos_token=eos)
        self._llama = llama
        self._engine = Engine(llama)
        log.info("loaded %s (context %d, %d threads)", self.model_path.name, llama.n_ctx(), threads)

    async def close(self) -> None:
        for job in self._jobs:
            job.cancelled.set()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        if self._llama is not None:
            self._llama.close()
        self._engine = self._llama = None

    async def _wait_loaded(self) -> tuple[llama_cpp.Llama, Engine, ChatTemplate]:
        await self._loaded.wait()
        if self._llama is None or self._engine is None or self._template is None:
            raise UnavailableError(
                f"The model could not be loaded: {self._load_error or 'the server is shutting down'}"
            )
        return self._llama, self._engine, self._template

    # ------------------------------------------------------------------ requests

    def _plan(
        self, llama: llama_cpp.Llama, template: ChatTemplate, request: gc.GenerateContentRequest
    ) -> tuple[list[int], Sampling]:
        """Prompt tokens and sampling for a request (runs off the event loop: it can be slow)."""
        config = request.generation_config or gc.GenerationConfig()
        messages = contents_to_messages(
            request.system_instruction, request.contents, output_format=output_instruction(config)
        )
        tokens = llama.tokenize(template.render(messages).encode(), add_bos=True, special=True)
        limit = llama.n_ctx() - 1  # room for at least one generated token
        if len(tokens) > limit:
            raise InvalidArgumentError(
                f"The input token count ({len(tokens)}) exceeds the maximum number of tokens allowed ({limit})."
            )
        return tokens, self._sampling(llama, config, len(tokens))

    def _sampling(self, llama: llama_cpp.Llama, config: gc.GenerationConfig, prompt_tokens: int) -> Sampling:
        room = llama.n_ctx() - prompt_tokens
        grammar = grammar_for(config.response_mime_type, config.response_json_schema)
        if grammar is not None:
            check_grammar(llama_cpp.llama_model_get_vocab(llama.model), grammar)
        return Sampling(
            temperature=_first(config.temperature, self._default_temperature),
            top_p=_first(config.top_p, self._default_top_p),
            top_k=DEFAULT_TOP_K if config.top_k is None else config.top_k,
            min_p=MIN_P,
            repeat_penalty=self._repeat_penalty,
            presence_penalty=config.presence_penalty or 0.0,
            frequency_penalty=config.frequency_penalty or 0.0,
            seed=config.seed,
            max_tokens=min(config.max_output_tokens or room, room),
            stop=tuple(config.stop_sequences or ()),
            grammar=grammar,
        )

    async def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        llama, engine, template = await self._wait_loaded()
        prompt, sampling = await asyncio.to_thread(self._plan, llama, template, request)
        candidates = (request.generation_config or gc.GenerationConfig()).candidate_count or 1
        events: asyncio.Queue[Event] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def emit(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                loop.call_soon_threadsafe(events.put_nowait, event)

        job = Job(prompt=prompt, sampling=sampling, candidates=candidates, emit=emit)
        self._jobs.add(job)
        engine.submit(job)
        generated = 0
        try:
            finished = 0
            while finished < candidates:
                for event in await _next_batch(events):
                    if isinstance(event, Failed):
                        raise event.error
                    if isinstance(event, CandidateDone):
                        finished += 1
                        generated += event.tokens
                    usage = _usage(len(prompt), generated) if finished == candidates else None
                    yield _chunk(event, model, usage)
        finally:
            job.cancelled.set()  # a consumer that left frees the engine at the next token
            self._jobs.discard(job)

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        return await collect_stream(self.stream(request, model=model))


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


async def _next_batch(events: asyncio.Queue[Event]) -> list[Event]:
    """Wait for one event, then take what else is already there, merging adjacent text."""
    batch = [await events.get()]
    while not events.empty():
        event = events.get_nowait()
        last = batch[-1]
        if isinstance(event, TextDelta) and isinstance(last, TextDelta) and last.candidate == event.candidate:
            batch[-1] = TextDelta(event.candidate, last.text + event.text)
        else:
            batch.append(event)
    return batch


def _usage(prompt_tokens: int, generated: int) -> gc.UsageMetadata:
    return gc.UsageMetadata(
        prompt_token_count=prompt_tokens,
        candidates_token_count=generated,
        total_token_count=prompt_tokens + generated,
        traffic_type="ON_DEMAND",
    )


def _chunk(event: TextDelta | CandidateDone, model: str, usage: gc.UsageMetadata | None) -> gc.GenerateContentResponse:
    if isinstance(event, TextDelta):
        candidate = gc.Candidate(
            index=event.candidate, content=gc.Content(role="model", parts=[gc.Part(text=event.text)])
        )
    else:
        candidate = gc.Candidate(index=event.candidate, finish_reason=event.finish_reason)
    return gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage, model_version=model)
