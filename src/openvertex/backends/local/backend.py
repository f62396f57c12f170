"""LocalBackend: GenerateContentRequest → prompt tokens → engine job → GenerateContentResponse chunks."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import llama_cpp
from llama_cpp._internals import LlamaModel
from llama_cpp._logger import set_verbose as set_llama_verbose

from openvertex.backends.base import BackendLoad, Capabilities, RoleTokens, collect_stream
from openvertex.backends.local import thinking
from openvertex.backends.local.calls import CallReader, FunctionCalling, plan_function_calling
from openvertex.backends.local.engine import Engine
from openvertex.backends.local.grammar import (
    JSON_MIME,
    SUPPORTED_MIME_TYPES,
    Grammar,
    GrammarCompiler,
    GrammarLimits,
)
from openvertex.backends.local.jobs import CandidateDone, Event, Failed, Job, Snapshotted, TextDelta, TokenLogprob
from openvertex.backends.local.media_text import READABLE_MIME_PREFIXES, MediaText
from openvertex.backends.local.model import resolve_model_path, sampling_defaults
from openvertex.backends.local.prefixes import PrefixStore, Snapshot, snapshot_key
from openvertex.backends.local.prompt import (
    ChatTemplate,
    Conversation,
    Tokenize,
    output_instruction,
    prompt_tokens,
    prompt_turns,
)
from openvertex.backends.local.sampling import Sampling, Thinking
from openvertex.backends.local.thinking import resolve_mode, thinking_budget
from openvertex.backends.local.vision import EncodedImage, PromptImage, Vision
from openvertex.errors import InvalidArgumentError, ResourceExhaustedError, UnavailableError
from openvertex.protocol import generate_content as gc
from openvertex.settings import LocalBackendSettings

log = logging.getLogger(__name__)

# Gemini's defaults where neither the request nor the model says otherwise; min_p is
# llama.cpp's quality floor.
GEMINI_TEMPERATURE = 1.0
GEMINI_TOP_P = 0.95
DEFAULT_TOP_K = 64
MIN_P = 0.05
MAX_CANDIDATES = 8  # Vertex's limit for n
# An engine that dies is replaced at once; one that keeps dying, less and less often.
STABLE_ENGINE_S = 60.0  # an engine that ran this long before dying counts as a first failure
MAX_RESTART_DELAY_S = 30.0
# countTokens counts prompts of any length (up to the body limit), not only those that fit.
COUNT_LIMIT = 1 << 24


class LocalBackend:
    def __init__(self, settings: LocalBackendSettings, *, kv_dir: Path | None = None) -> None:
        """`kv_dir`: where the KV of cached prefixes is kept on disk (None: in memory only)."""
        self.settings = settings
        # Candidates of one request decode side by side, one slot each.
        self.capabilities = Capabilities(
            function_calling=True,
            input_mime_prefixes=READABLE_MIME_PREFIXES,  # as text: OCR, a PDF's text (media_text.py)
            thinking=settings.thinking != "off",
            response_mime_types=SUPPORTED_MIME_TYPES,
            max_candidates=min(MAX_CANDIDATES, settings.n_parallel),
            max_output_tokens=settings.max_output_tokens,
            cached_content=True,
            input_token_limit=settings.n_ctx,
            min_cached_content_tokens=settings.min_cached_content_tokens,
        )
        self.model_path: Path = resolve_model_path(settings.model)  # fail fast on a bad path
        self.projector_path = Path(settings.mmproj).expanduser() if settings.mmproj else None
        if self.projector_path is not None and not self.projector_path.is_file():
            raise FileNotFoundError(f"mmproj: no projector file at {self.projector_path}")
        # A snapshot depends on the model file (and projector), llama.cpp's state format and the
        # context's layout (it restores only into a context with as many KV streams).
        self._model_identity = (
            f"{llama_cpp.__version__}|{self.model_path.name}|{self.model_path.stat().st_size}"
            f"|slots={settings.n_parallel}|ctx={settings.n_ctx}"
        )
        if self.projector_path is not None:
            self._model_identity += f"|mmproj={self.projector_path.name}|{self.projector_path.stat().st_size}"
        self._prefixes = PrefixStore(
            kv_dir, memory_bytes=settings.cache_memory_bytes, disk_bytes=settings.cache_disk_bytes
        )
        self._prefix_keys: dict[str, str] = {}  # context cache name → its snapshot's key
        self._media_text = MediaText()
        self._builds: dict[str, asyncio.Future[None]] = {}  # snapshots being built, by key
        model_defaults = sampling_defaults(settings.model)
        self._default_temperature = _first(settings.temperature, model_defaults.temperature, GEMINI_TEMPERATURE)
        self._default_top_p = _first(settings.top_p, model_defaults.top_p, GEMINI_TOP_P)
        self._repeat_penalty = _first(settings.repeat_penalty, model_defaults.repeat_penalty, 1.0)
        self._dynamic_budget = settings.dynamic_thinking_budget
        self._thinking_mode: thinking.Mode = "off"  # known once the template is read
        self._thinking_close: tuple[int, ...] = ()  # thinking.CLOSING as tokens, once loaded
        self._model: LlamaModel | None = None
        self._vision: Vision | None = None  # the projector, when one is configured
        self._grammars: GrammarCompiler | None = None  # for the model's vocabulary, once loaded
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None
        self._loaded = asyncio.Event()
        self._load_error: str | None = None
        self._queues: dict[Job, asyncio.Queue[Event]] = {}  # jobs in flight and where their events go
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0  # requests admitted: being planned, waiting or running
        self._restarting: asyncio.Task[None] | None = None  # replacing an engine that died
        self._closing = asyncio.Event()
        self._engine_started = 0.0  # monotonic time the current engine started
        self._failures = 0  # engine deaths in a row, each soon after the previous start
        self._retired = (0, 0)  # tokens generated and prefilled by engines that died

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> bool:
        engine = self._engine
        return engine is not None and engine.alive()

    def load(self) -> BackendLoad:
        engine, (generated, prefilled) = self._engine, self._retired
        if engine is None:
            return BackendLoad(tokens_generated=generated, tokens_prefilled=prefilled)
        return BackendLoad(
            engine.running(),
            engine.waiting(),
            generated + engine.tokens_generated,
            prefilled + engine.tokens_prefilled,
        )

    def _admit(self) -> None:
        """Bounded admission, before any work is done for the request: past the slots and the
        waiting room, answer 429 at once. The caller releases its place when it ends."""
        capacity = self.settings.n_parallel + self.settings.max_waiting
        if self._in_flight >= capacity:
            raise ResourceExhaustedError(
                f"Resource exhausted: the local model is serving {self._in_flight} requests "
                f"({self.settings.n_parallel} at a time, {self.settings.max_waiting} waiting). Please try again later.",
                retry_after_s=1,
            )
        self._in_flight += 1

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._load)
            self._check_engine()
        except Exception as error:
            self._load_error = str(error)
            log.exception("could not load %s", self.model_path)
        finally:
            self._loaded.set()

    def _load(self) -> None:
        settings = self.settings
        threads = settings.n_threads or os.cpu_count() or 1
        set_llama_verbose(log.isEnabledFor(logging.DEBUG))  # llama.cpp's own log lines
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = settings.n_gpu_layers
        model = LlamaModel(path_model=str(self.model_path), params=params, verbose=False)
        bos, eos = _special_text(model, model.token_bos()), _special_text(model, model.token_eos())
        source = model.metadata().get("tokenizer.chat_template")
        self._template = ChatTemplate(source, bos_token=bos, eos_token=eos)
        self._thinking_mode = resolve_mode(settings.thinking, source)
        self._thinking_close = tuple(model.tokenize(thinking.CLOSING.encode(), add_bos=False, special=True))
        self._grammars = GrammarCompiler(
            model.vocab,
            [t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(model.vocab, t)],
            GrammarLimits(settings.max_schema_bytes, settings.grammar_lexer_fuel, settings.max_grammar_size),
        )
        if self.projector_path is not None:
            self._vision = Vision(self.projector_path, model.model, n_threads=threads, n_batch=settings.n_batch)
        self._model = model
        self._engine = self._new_engine(model)  # last: ready() once everything a request needs is here
        log.info(
            "loaded %s (%d slots of %d tokens, %d threads)",
            self.model_path.name,
            settings.n_parallel,
            settings.n_ctx,
            threads,
        )

    def _new_engine(self, model: LlamaModel) -> Engine:
        settings = self.settings
        engine = Engine(
            model.model,
            self._deliver,
            on_exit=self._engine_exited,
            n_ctx=settings.n_ctx,
            n_slots=settings.n_parallel,
            n_batch=settings.n_batch,
            n_threads=settings.n_threads or os.cpu_count() or 1,
            n_embd=self._vision.n_embd if self._vision is not None else None,
        )
        self._engine_started = time.monotonic()
        return engine

    def _engine_exited(self, engine: Engine) -> None:
        """Engine thread: it ended without being closed; the event loop takes it from here."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self._engine_failed, engine)

    def _engine_failed(self, engine: Engine) -> None:
        """Every request it had fails fast with 503, /readyz turns red, and a new engine starts."""
        if engine is not self._engine or self._closing.is_set():
            return
        self._engine = None
        self._retired = (self._retired[0] + engine.tokens_generated, self._retired[1] + engine.tokens_prefilled)
        for job, events in self._queues.items():  # running, waiting and just submitted alike
            job.cancelled.set()
            events.put_nowait(Failed(_engine_unavailable()))
        recent = time.monotonic() - self._engine_started < STABLE_ENGINE_S
        self._failures = self._failures + 1 if recent else 1
        delay = 0.0 if self._failures == 1 else min(MAX_RESTART_DELAY_S, 2.0 ** (self._failures - 2))
        log.error("the local engine stopped unexpectedly; starting a new one in %g s", delay)
        self._restarting = asyncio.create_task(self._restart(engine, delay))

    async def _restart(self, dead: Engine, delay: float) -> None:
        try:
            await asyncio.to_thread(dead.close)
        except Exception:  # its memory is lost; a new one can still start
            log.exception("could not free the engine that stopped")
        while True:
            with contextlib.suppress(TimeoutError):  # close() cuts the delay short
                await asyncio.wait_for(self._closing.wait(), delay)
            if self._closing.is_set() or self._model is None:
                return
            try:
                self._engine = await asyncio.to_thread(self._new_engine, self._model)
            except Exception:
                log.exception("could not start a new local engine")
                delay = min(MAX_RESTART_DELAY_S, max(1.0, 2 * delay))
                continue
            log.warning("the local engine was restarted")
            self._check_engine()
            return

    def _check_engine(self) -> None:
        """An engine that died before it was installed was not recognised as ours: fail it now."""
        engine = self._engine
        if engine is not None and not engine.alive():
            self._engine_failed(engine)

    def _deliver(self, batch: list[tuple[Job, Event]]) -> None:
        """Engine thread: hand a step's events to the event loop in one wake-up."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                self._loop.call_soon_threadsafe(self._dispatch, batch)

    def _dispatch(self, batch: list[tuple[Job, Event]]) -> None:
        for job, event in batch:
            events = self._queues.get(job)
            if events is not None:  # a consumer that already left gets nothing
                events.put_nowait(event)

    async def close(self) -> None:
        self._closing.set()
        if self._restarting is not None:  # a restart under way finishes first (it cannot be cut mid-build)
            await self._restarting
        for job in self._queues:
            job.cancelled.set()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        if self._vision is not None:
            self._vision.close()
        if self._model is not None:
            self._model.close()  # type: ignore[no-untyped-call]
        self._engine = self._model = self._vision = None

    async def _wait_loaded(self) -> tuple[LlamaModel, Engine, ChatTemplate]:
        await self._loaded.wait()
        if self._model is None or self._template is None:
            raise UnavailableError(
                f"The model could not be loaded: {self._load_error or 'the server is shutting down'}"
            )
        return self._model, self._live_engine(), self._template

    def _live_engine(self) -> Engine:
        engine = self._engine
        if engine is None or not engine.alive():
            raise _engine_unavailable()
        return engine

    # ------------------------------------------------------------------ requests

    def _conversation(
        self, template: ChatTemplate, request: gc.GenerateContentRequest
    ) -> tuple[Conversation, str, FunctionCalling | None, int, list[PromptImage]]:
        """What the template gets for a request: the conversation, the markup that opens the
        answer, function calling, the thinking budget, and the images a projector sees (their
        places marked in the text). Runs on a worker thread."""
        images: list[PromptImage] = []
        if self._vision is not None:
            request, images = self._vision.with_markers(request)
        request = self._media_text.as_text(request)
        config = request.generation_config or gc.GenerationConfig()
        tools = plan_function_calling(request)
        budget = thinking_budget(config.thinking_config, self._thinking_mode, dynamic=self._dynamic_budget)
        reasoning = thinking.INSTRUCTION if budget and self._thinking_mode == "prompted" else None
        instructions = [text for text in (output_instruction(config), reasoning) if text]
        conversation = Conversation(
            request.system_instruction,
            request.contents,
            instructions=instructions,
            tools=tools.declarations if tools else None,
            native_tools=template.native_tools,
            thought_tags=None if self._thinking_mode == "off" else (thinking.OPEN_TAG, thinking.CLOSE_TAG),
        )
        opening = ""  # markup after the template's: the answer turn opens with the reasoning
        if budget:
            opening = thinking.OPENING
        elif self._thinking_mode == "native":
            opening = thinking.OPENING + thinking.CLOSING.lstrip("\n")  # an empty one: no thinking
        return conversation, opening, tools, budget, images

    def _prompt(
        self, model: LlamaModel, template: ChatTemplate, request: gc.GenerateContentRequest, *, limit: int
    ) -> tuple[list[int], FunctionCalling | None, int, list[PromptImage]]:
        conversation, opening, tools, budget, images = self._conversation(template, request)
        tokenize = _tokenizer(model, self._vision, images)
        tokens = prompt_tokens(template, conversation, opening=opening, tokenize=tokenize, bos=_bos(model), limit=limit)
        return tokens, tools, budget, images

    def _plan(
        self, model: LlamaModel, n_ctx: int, template: ChatTemplate, request: gc.GenerateContentRequest
    ) -> tuple[list[int], Sampling, FunctionCalling | None, Snapshot | None, dict[int, EncodedImage]]:
        """Prompt tokens, sampling, function calling, the KV of a named context cache and the
        images' embeddings (off the event loop: it can be slow)."""
        config = request.generation_config or gc.GenerationConfig()
        tokens, tools, budget, images = self._prompt(model, template, request, limit=n_ctx - 1)  # room for an answer
        sampling = self._sampling(config, tools, room=n_ctx - len(tokens))
        if budget:
            sampling = replace(sampling, thinking=Thinking(budget, thinking.CLOSE_TAG, self._thinking_close))
        key = self._prefix_keys.get(request.cached_content) if request.cached_content else None
        return tokens, sampling, tools, self._prefixes.get(key) if key else None, self._encode(images)

    def _encode(self, images: list[PromptImage]) -> dict[int, EncodedImage]:
        """The images' embeddings, by the key their placeholders carry."""
        if self._vision is None:
            return {}
        return dict(self._vision.encode(image) for image in images)

    def _sampling(self, config: gc.GenerationConfig, tools: FunctionCalling | None, *, room: int) -> Sampling:
        assert self._grammars is not None
        if config.response_mime_type == JSON_MIME and tools is not None:
            raise InvalidArgumentError(
                "JSON output cannot be combined with function calling on the local model",
                param="generationConfig.responseMimeType",
            )
        grammar: Grammar | None
        if tools is not None:
            grammar = self._grammars.tool_calls(tools.allowed, lazy=tools.lazy)
        else:
            named = "responseJsonSchema" if config.response_json_schema is not None else "responseSchema"
            schema = config.response_json_schema if config.response_json_schema is not None else config.response_schema
            grammar = self._grammars.response(config.response_mime_type, schema, param=f"generationConfig.{named}")
        return Sampling(
            temperature=_first(config.temperature, self._default_temperature),
            top_p=_first(config.top_p, self._default_top_p),
            top_k=DEFAULT_TOP_K if config.top_k is None else config.top_k,
            min_p=MIN_P,
            repeat_penalty=self._repeat_penalty,
            presence_penalty=config.presence_penalty or 0.0,
            frequency_penalty=config.frequency_penalty or 0.0,
            seed=config.seed,
            max_tokens=min(config.max_output_tokens or self.settings.max_output_tokens, room),
            stop=tuple(config.stop_sequences or ()),
            grammar=grammar,
            logprobs=(config.logprobs or 0) if config.response_logprobs else None,
        )

    def stream(self, request: gc.GenerateContentRequest, *, model: str) -> AsyncIterator[gc.GenerateContentResponse]:
        return self._run(request, model=model, streaming=True)

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        return await collect_stream(self._run(request, model=model, streaming=False))

    async def _run(
        self, request: gc.GenerateContentRequest, *, model: str, streaming: bool
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        self._admit()  # before any await or work: the check and the count cannot race
        release = True
        try:
            loaded, engine, template = await self._wait_loaded()
            planning = asyncio.get_running_loop().run_in_executor(
                None, self._plan, loaded, engine.n_ctx, template, request
            )
            try:
                prompt, sampling, tools, restore, images = await asyncio.shield(planning)
            except asyncio.CancelledError:
                # The client left, but the thread plans on: its place stays taken until then,
                # so clients that hang up at once cannot pile up work that nothing counts.
                release = False
                planning.add_done_callback(self._release_after)
                raise
            candidates = (request.generation_config or gc.GenerationConfig()).candidate_count or 1
            # Arguments arrive in pieces only in a stream that asked for them (spec §3.5).
            readers = (
                [
                    CallReader(
                        stream_arguments=streaming and tools.stream_arguments,
                        names=frozenset(d.name for d in tools.allowed),
                    )
                    for _ in range(candidates)
                ]
                if tools is not None
                else None
            )
            job = Job(prompt=prompt, sampling=sampling, candidates=candidates, restore=restore, images=images)
            cached = finished = 0
            counts: dict[int, tuple[int, int]] = {}  # per candidate: answer and reasoning tokens so far
            async with contextlib.aclosing(self._events(job)) as events:
                async for event in events:
                    if isinstance(event, Snapshotted):
                        continue
                    if isinstance(event, CandidateDone):
                        finished += 1
                        counts[event.candidate] = (event.tokens, event.thought_tokens)
                        cached = event.cached_tokens
                    else:
                        counts[event.candidate] = (event.tokens, event.thoughts)
                    # Every chunk has the usage so far, as Gemini's do: a stream cut short (a client
                    # that left, a blocked answer) is still counted.
                    generated, thoughts = map(sum, zip(*counts.values(), strict=True))
                    usage = _usage(len(prompt), generated, cached, thoughts)
                    yield _chunk(event, _parts(event, readers), model, usage)
                    if finished == candidates:
                        break
        finally:
            if release:
                self._release()

    async def _events(self, job: Job) -> AsyncGenerator[TextDelta | CandidateDone | Snapshotted]:
        """Submit a job and follow its events; leaving early (or failing) cancels it."""
        engine = self._live_engine()  # it may have died, or been replaced, while the job was planned
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job] = events  # before submitting: if the engine dies now, this job hears of it
        engine.submit(job)
        try:
            while True:
                for event in await _next_batch(events, engine, job):
                    if isinstance(event, Failed):
                        raise event.error
                    yield event
        finally:
            engine.cancel(job)  # a consumer that left frees its slots at the next step
            self._queues.pop(job, None)

    def _release(self) -> None:
        self._in_flight -= 1

    # ------------------------------------------------------------------ tokens and cached prefixes

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        loaded, _, template = await self._wait_loaded()
        self._admit()  # tokenizing a large body is work like any other: it takes a place
        try:
            tokens, _, _, _ = await asyncio.to_thread(self._prompt, loaded, template, request, limit=COUNT_LIMIT)
        finally:
            self._release()
        return len(tokens)

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        loaded, _, template = await self._wait_loaded()

        def compute() -> list[RoleTokens]:
            conversation, opening, _, _, images = self._conversation(template, request)
            tokenize = _tokenizer(loaded, self._vision, images)
            turns = prompt_turns(template, conversation, opening=opening, tokenize=tokenize, bos=_bos(loaded))
            return [RoleTokens(role, ids, [_piece(loaded, token) for token in ids]) for role, ids in turns]

        self._admit()
        try:
            return await asyncio.to_thread(compute)
        finally:
            self._release()

    async def cache_prefix(self, name: str, request: gc.GenerateContentRequest, *, model: str) -> None:
        """Compute the cache's prompt KV once and keep a snapshot of it (memory, then disk); later
        requests naming the cache restore it instead of computing the prefix. Once the snapshot
        is there, this costs a lookup; a lost one (a restart, an eviction) is built again, once
        however many requests ask for it at the same time."""
        key = self._prefix_keys.get(name)
        if key is not None and self._prefixes.has(key):
            return
        key, tokens, images = await self._prefix_key(request)
        if not self._prefixes.has(key):
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = asyncio.ensure_future(self._build_prefix(key, tokens, images))
                build.add_done_callback(
                    lambda done: (self._builds.pop(key, None), done.cancelled() or done.exception())
                )
            await asyncio.shield(build)  # a caller that leaves does not stop it: others may wait on it
        self._prefix_keys[name] = key

    async def _prefix_key(self, request: gc.GenerateContentRequest) -> tuple[str, list[int], list[PromptImage]]:
        loaded, engine, template = await self._wait_loaded()
        tokens, _, _, images = await asyncio.to_thread(self._prompt, loaded, template, request, limit=engine.n_ctx - 1)
        return snapshot_key(self._model_identity, tuple(tokens)), tokens, images

    async def _build_prefix(self, key: str, tokens: list[int], images: list[PromptImage]) -> None:
        self._admit()
        try:
            sampling = self._sampling(gc.GenerationConfig(), None, room=1)
            encoded = await asyncio.to_thread(self._encode, images)
            job = Job(tokens, sampling, 1, snapshot=True, images=encoded)
            async with contextlib.aclosing(self._events(job)) as events:
                async for event in events:
                    if isinstance(event, Snapshotted):
                        await asyncio.to_thread(self._prefixes.put, key, event.snapshot)
                        return
        finally:
            self._release()

    async def forget_prefix(self, name: str, request: gc.GenerateContentRequest, *, model: str) -> None:
        key = self._prefix_keys.pop(name, None)
        if key is None:  # not used since the start: its snapshot is found by its content
            if self._model is None:
                return
            key, _, _ = await self._prefix_key(request)
        if key not in self._prefix_keys.values():  # no other cache shares it
            await asyncio.to_thread(self._prefixes.discard, key)

    def _release_after(self, planning: asyncio.Future[Any]) -> None:
        if not planning.cancelled():
            planning.exception()  # retrieved: a plan nobody waits for may have failed (a 400)
        self._release()


def _tokenizer(model: LlamaModel, vision: Vision | None = None, images: list[PromptImage] | None = None) -> Tokenize:
    def plain(text: str, special: bool) -> list[int]:
        tokens: list[int] = model.tokenize(text.encode(), add_bos=False, special=special)
        return tokens

    if vision is None or not images:
        return plain

    def with_images(text: str, special: bool) -> list[int]:  # each image's marker → its tokens
        tokens: list[int] = []
        for piece in vision.split(text):
            tokens += vision.tokens(images[piece]) if isinstance(piece, int) else plain(piece, special)
        return tokens

    return with_images


def _bos(model: LlamaModel) -> list[int]:
    return [model.token_bos()] if model.add_bos_token() else []


def _piece(model: LlamaModel, token: int) -> bytes:
    """A token's bytes, control tokens written out; an image's placeholder has none."""
    if token < 0:
        return b""
    buffer = ctypes.create_string_buffer(256)
    size = llama_cpp.llama_token_to_piece(model.vocab, token, buffer, len(buffer), 0, True)
    return buffer.raw[:size] if size > 0 else b""


def _special_text(model: LlamaModel, token: int) -> str:
    return model.detokenize([token], special=True).decode(errors="ignore") if token >= 0 else ""


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


async def _next_batch(events: asyncio.Queue[Event], engine: Engine, job: Job) -> list[Event]:
    """Wait for one event, then take what else is already there, merging adjacent text.

    Taking them frees the job's backlog: a job paused for a slow reader goes on."""
    batch = [await events.get()]
    while not events.empty():
        batch.append(events.get_nowait())
    engine.taken(job, len(batch))
    return _merge_text(batch)


def _merge_text(events: list[Event]) -> list[Event]:
    """Runs of text for the same candidate and kind become one delta (joined once: linear)."""
    merged: list[Event] = []
    for key, run in itertools.groupby(events, key=_text_run):
        if key is None:
            merged.extend(run)
            continue
        deltas = [event for event in run if isinstance(event, TextDelta)]
        text = "".join(delta.text for delta in deltas)
        logprobs = tuple(logprob for delta in deltas for logprob in delta.logprobs)
        last = deltas[-1]
        merged.append(TextDelta(last.candidate, text, logprobs, last.thought, last.tokens, last.thoughts))
    return merged


def _text_run(event: Event) -> tuple[int, bool] | None:
    return (event.candidate, event.thought) if isinstance(event, TextDelta) else None


def _engine_unavailable() -> UnavailableError:
    error = UnavailableError("The local model's engine stopped unexpectedly and is restarting. Please try again.")
    error.headers["Retry-After"] = "1"
    return error


def _usage(prompt_tokens: int, generated: int, cached: int, thoughts: int) -> gc.UsageMetadata:
    return gc.UsageMetadata(
        prompt_token_count=prompt_tokens,
        cached_content_token_count=cached or None,
        candidates_token_count=generated,
        thoughts_token_count=thoughts or None,
        total_token_count=prompt_tokens + generated + thoughts,
        traffic_type="ON_DEMAND",
    )


def _logprobs_result(logprobs: tuple[TokenLogprob, ...]) -> gc.LogprobsResult | None:
    if not logprobs:
        return None

    def candidate(token_id: int, token: str, logprob: float) -> gc.LogprobsCandidate:
        return gc.LogprobsCandidate(token=token, token_id=token_id, log_probability=logprob)

    return gc.LogprobsResult(
        chosen_candidates=[candidate(lp.token_id, lp.token, lp.logprob) for lp in logprobs],
        top_candidates=[gc.TopCandidates(candidates=[candidate(*top) for top in lp.top]) for lp in logprobs],
    )


def _parts(event: TextDelta | CandidateDone, readers: list[CallReader] | None) -> list[gc.Part]:
    reader = readers[event.candidate] if readers is not None else None
    if isinstance(event, CandidateDone):
        return reader.finish() if reader is not None else []
    if event.thought:
        return [gc.Part(text=event.text, thought=True)] if event.text else []
    if reader is not None:
        return reader.feed(event.text)
    return [gc.Part(text=event.text)] if event.text else []


def _chunk(
    event: TextDelta | CandidateDone, parts: list[gc.Part], model: str, usage: gc.UsageMetadata | None
) -> gc.GenerateContentResponse:
    if isinstance(event, TextDelta):
        candidate = gc.Candidate(
            index=event.candidate,
            content=gc.Content(role="model", parts=parts),
            logprobs_result=_logprobs_result(event.logprobs),
        )
    else:
        content = gc.Content(role="model", parts=parts) if parts else None
        candidate = gc.Candidate(index=event.candidate, content=content, finish_reason=event.finish_reason)
    return gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage, model_version=model)
