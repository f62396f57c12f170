"""LocalBackend: GenerateContentRequest → prompt tokens → engine job → GenerateContentResponse chunks.

The model's load, its engine and restarts are supervisor.py's; building chunks from events is
responses.py's; this module plans requests (prompt, sampling, cached prefixes) and admits them."""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import llama_cpp
from llama_cpp._internals import LlamaModel

from openvertex.backends.base import BackendLoad, CacheUsage, Capabilities, LiveCaches, RoleTokens, collect_stream
from openvertex.backends.local import thinking
from openvertex.backends.local.calls import FunctionCalling, plan_function_calling
from openvertex.backends.local.digests import model_identity
from openvertex.backends.local.engine import Engine
from openvertex.backends.local.grammar import JSON_MIME, SUPPORTED_MIME_TYPES, TOOL_CALL_END_TAG, TOOL_CALL_TAG, Grammar
from openvertex.backends.local.jobs import CandidateDone, Job, Snapshotted
from openvertex.backends.local.kernels import repacks_q4_1, row_kernels
from openvertex.backends.local.media_text import READABLE_MIME_PREFIXES, RECOGNISERS, MediaText
from openvertex.backends.local.model import resolve_model_path, sampling_defaults
from openvertex.backends.local.prefixes import PrefixStore
from openvertex.backends.local.prompt import (
    Conversation,
    Tokenize,
    output_instruction,
    prompt_tokens,
    prompt_turns,
)
from openvertex.backends.local.responses import ChunkBuilder
from openvertex.backends.local.sampling import Sampling, Thinking
from openvertex.backends.local.snapshots import Snapshot
from openvertex.backends.local.supervisor import EngineSupervisor, LoadedModel
from openvertex.backends.local.thinking import thinking_budget
from openvertex.backends.local.vision import ImageRows, PromptImage, Vision, image_rows
from openvertex.backends.residency import Residency
from openvertex.errors import InvalidArgumentError, ResourceExhaustedError
from openvertex.executors import BoundedExecutor, cores, outlived
from openvertex.protocol import generate_content as gc
from openvertex.protocol.embeddings import Embedding, EmbedRequest
from openvertex.request_record import current_record
from openvertex.settings import LocalBackendSettings

log = logging.getLogger(__name__)

# Gemini's defaults where neither the request nor the model says otherwise; min_p is
# llama.cpp's quality floor.
GEMINI_TEMPERATURE = 1.0
GEMINI_TOP_P = 0.95
DEFAULT_TOP_K = 64
MIN_P = 0.05
MAX_CANDIDATES = 8  # Vertex's limit for n
# countTokens counts prompts of any length (up to the body limit), not only those that fit.
COUNT_LIMIT = 1 << 24

T = TypeVar("T")
Plan = tuple[list[int], Sampling, FunctionCalling | None, Snapshot | None, ImageRows]


class LocalBackend:
    kind = "local"

    def __init__(self, settings: LocalBackendSettings, *, kv_dir: Path | None = None) -> None:
        """`kv_dir`: where the KV of cached prefixes is kept on disk (None: in memory only)."""
        self.settings = settings
        # Candidates of one request decode side by side, one slot each.
        self.capabilities = Capabilities(
            function_calling=True,
            input_mime_prefixes=READABLE_MIME_PREFIXES,  # as text: OCR, a PDF's text (media_text.py)
            thinking=settings.thinking != "off",
            response_mime_types=SUPPORTED_MIME_TYPES,
            max_candidates=MAX_CANDIDATES,  # more than the slots decode in waves
            max_output_tokens=settings.max_output_tokens,
            cached_content=True,
            input_token_limit=settings.n_ctx,
            min_cached_content_tokens=settings.min_cached_content_tokens,
        )
        self.model_path: Path = resolve_model_path(settings.model)  # fail fast on a bad path
        self.projector_path = Path(settings.mmproj).expanduser() if settings.mmproj else None
        if self.projector_path is not None and not self.projector_path.is_file():
            raise FileNotFoundError(f"mmproj: no projector file at {self.projector_path}")
        self._supervisor = EngineSupervisor(settings, self.model_path, self.projector_path)
        # A snapshot depends on the model's content (and the projector's) and the context's layout.
        self._prefixes = PrefixStore(
            kv_dir,
            partial(model_identity, self.model_path, self.projector_path, context_layout(settings), keep=kv_dir),
            memory_bytes=settings.cache_memory_bytes,
            disk_bytes=settings.cache_disk_bytes,
        )
        self._media_text = MediaText()
        # Prompts are planned (templated, tokenized, images encoded) on threads of their own, never
        # the default ones the request path needs; every admitted request has a place (_admit). A
        # plan may wait on a recogniser (OCR, speech): as many more threads as those can hold, so
        # text-only prompts are never all stuck behind transcriptions.
        waiting_on_media = RECOGNISERS.workers + RECOGNISERS.queue
        self._planning = BoundedExecutor(
            "prompt plans", workers=cores() + waiting_on_media, queue=settings.n_parallel + settings.max_waiting
        )
        self._builds: dict[str, asyncio.Future[None]] = {}  # snapshots being built, by key
        model_defaults = sampling_defaults(settings.model)
        self._default_temperature = _first(settings.temperature, model_defaults.temperature, GEMINI_TEMPERATURE)
        self._default_top_p = _first(settings.top_p, model_defaults.top_p, GEMINI_TOP_P)
        self._repeat_penalty = _first(settings.repeat_penalty, model_defaults.repeat_penalty, 1.0)
        self._dynamic_budget = settings.dynamic_thinking_budget
        self._in_flight = 0  # requests admitted: being planned, waiting or running
        self._file_bytes = self.model_path.stat().st_size + (
            self.projector_path.stat().st_size if self.projector_path is not None else 0
        )
        self.residency = Residency(
            self.model_path.name,
            load=self._supervisor.open,
            unload=self._supervisor.unload,
            idle=lambda: self._in_flight == 0 and not self._builds,
            size=self._size,
            keep_alive_s=settings.keep_alive_s,
            load_timeout_s=settings.load_timeout_s,
        )

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> bool:
        residency = self.residency
        return residency.serving() and (residency.state != "loaded" or self._supervisor.ready())

    def load(self) -> BackendLoad:
        residency = self.residency
        return replace(self._supervisor.load(), model_state=residency.state, model_loads=residency.loads)

    def cache_usage(self) -> CacheUsage:
        prefixes = self._prefixes
        return CacheUsage(len(prefixes.names()), prefixes.memory_used(), prefixes.disk_used())

    async def start(self) -> None:
        await asyncio.gather(
            self.residency.start(load=self.settings.load == "start"), asyncio.to_thread(self._identify)
        )

    def _size(self) -> int:
        """Bytes the model holds (loaded: what its load added, at least its file, and its KV in
        use) or would take. What a load adds to the process is measured while other work runs
        too, so the file's size is the floor."""
        held = max(self.residency.load_bytes, self._file_bytes)
        if self.residency.state != "loaded":
            return held
        return held + (self._supervisor.load().kv_resident_bytes or 0)

    def _identify(self) -> None:
        """Hash the model files (once per file: digests.py keeps it) while the model loads."""
        try:
            self._prefixes.identity()
        except OSError:
            log.exception("could not hash %s; context caches cannot keep their KV until it can", self.model_path)

    async def close(self) -> None:
        await self._supervisor.close()

    async def _loaded(self) -> tuple[LoadedModel, Engine]:
        """The model and its engine, loaded first where they are not (the caller is admitted:
        the model is not let go while it is in use)."""
        await self.residency.use()
        return self._supervisor.loaded_now()

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

    def _release(self) -> None:
        self._in_flight -= 1
        self.residency.done()

    async def _on_model(self, work: Callable[[LoadedModel, Engine], T]) -> T:
        """`work` on a planning thread, admitted until the thread is done: a caller that leaves
        does not let the model go while the thread still reads it."""
        self._admit()
        try:
            loaded, engine = await self._loaded()
            planning = asyncio.wrap_future(self._planning.submit(work, loaded, engine))
            return await outlived(planning, hold=self._hold, release=self._release)
        finally:
            self._release()

    def _hold(self) -> None:
        """A place kept past its request, for a thread still working for it (no check: it is held)."""
        self._in_flight += 1

    # ------------------------------------------------------------------ generation

    def stream(
        self, request: gc.GenerateContentRequest, *, model: str
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        return self._run(request, model=model, streaming=True)

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        return await collect_stream(self._run(request, model=model, streaming=False))

    async def _run(
        self, request: gc.GenerateContentRequest, *, model: str, streaming: bool
    ) -> AsyncGenerator[gc.GenerateContentResponse, None]:
        """The one generator between the engine and the caller: closing it early cancels the job."""
        self._admit()  # before any await or work: the check and the count cannot race
        try:
            loaded, engine = await self._loaded()
            planning = asyncio.wrap_future(self._planning.submit(self._plan, loaded, engine.n_ctx, request))
            # A client that leaves does not stop the thread planning: its place stays taken until
            # then, so clients that hang up at once cannot pile up work that nothing counts.
            prompt, sampling, tools, restore, images = await outlived(planning, hold=self._hold, release=self._release)
            candidates = (request.generation_config or gc.GenerationConfig()).candidate_count or 1
            chunks = ChunkBuilder(
                model=model,
                prompt_tokens=len(prompt),
                candidates=candidates,
                tools=tools,
                streaming=streaming,
                min_reused=self.settings.min_implicit_cache_tokens,
            )
            # More candidates than slots decode in waves of at most a slot each; candidate i still
            # samples with seed + i, as it would in one job.
            for first in range(0, candidates, self.settings.n_parallel):
                count = min(self.settings.n_parallel, candidates - first)
                seed = None if sampling.seed is None else sampling.seed + first
                wave = Job(
                    prompt, replace(sampling, seed=seed), count, tenant=_tenant(), restore=restore, images=images
                )
                async with self._supervisor.subscribe(wave) as events:
                    running = set(range(first, first + count))
                    while running:
                        for event in await events.next_batch():
                            if isinstance(event, Snapshotted):
                                continue
                            candidate = event.candidate + first
                            if candidate not in running:  # ended here already (settled)
                                continue
                            if isinstance(event, CandidateDone):
                                running.discard(candidate)
                            yield chunks.feed(replace(event, candidate=candidate) if first else event)
                            if running and all(chunks.settled(c) for c in running):
                                # Each forced call left repeats one already made: the turn ends here
                                # (leaving the block cancels the job and frees its slots).
                                for settled in sorted(running):
                                    yield chunks.end(settled)
                                running.clear()
                            if not running:
                                break
        finally:
            self._release()

    # ------------------------------------------------------------------ planning

    def _conversation(
        self, loaded: LoadedModel, request: gc.GenerateContentRequest
    ) -> tuple[Conversation, str, FunctionCalling | None, int, list[PromptImage]]:
        """What the template gets for a request: the conversation, the markup that opens the
        answer, function calling, the thinking budget, and the images a projector sees (their
        places marked in the text). Runs on a worker thread."""
        images: list[PromptImage] = []
        if loaded.vision is not None:
            request, images = loaded.vision.with_markers(request)
        request = self._media_text.as_text(request)
        config = request.generation_config or gc.GenerationConfig()
        tools = plan_function_calling(request)
        mode = loaded.thinking_mode
        budget = thinking_budget(config.thinking_config, mode, dynamic=self._dynamic_budget)
        reasoning = thinking.INSTRUCTION if budget and mode == "prompted" else None
        instructions = [text for text in (output_instruction(config), reasoning) if text]
        conversation = Conversation(
            request.system_instruction,
            request.contents,
            instructions=instructions,
            tools=tools.declarations if tools else None,
            template_tools=loaded.template.template_tools,
            thought_tags=None if mode == "off" else (thinking.OPEN_TAG, thinking.CLOSE_TAG),
        )
        opening = ""  # markup after the template's: the answer turn opens with the reasoning
        if budget:
            opening = thinking.OPENING
        elif mode == "native":
            opening = thinking.OPENING + thinking.CLOSING.lstrip("\n")  # an empty one: no thinking
        return conversation, opening, tools, budget, images

    def _prompt(
        self, loaded: LoadedModel, request: gc.GenerateContentRequest, *, limit: int
    ) -> tuple[list[int], FunctionCalling | None, int, list[PromptImage]]:
        conversation, opening, tools, budget, images = self._conversation(loaded, request)
        tokenize = _tokenizer(loaded.model, loaded.vision, images)
        tokens = prompt_tokens(
            loaded.template, conversation, opening=opening, tokenize=tokenize, bos=_bos(loaded.model), limit=limit
        )
        return tokens, tools, budget, images

    def _plan(self, loaded: LoadedModel, n_ctx: int, request: gc.GenerateContentRequest) -> Plan:
        """Prompt tokens, sampling, function calling, the KV of a named context cache and the
        images' embeddings (off the event loop: it can be slow)."""
        config = request.generation_config or gc.GenerationConfig()
        tokens, tools, budget, images = self._prompt(loaded, request, limit=n_ctx - 1)  # room for an answer
        sampling = self._sampling(loaded, config, tools, room=n_ctx - len(tokens))
        if budget:
            sampling = replace(sampling, thinking=Thinking(budget, thinking.CLOSE_TAG, loaded.thinking_close))
        key = self._prefixes.key_of(request.cached_content) if request.cached_content else None
        return tokens, sampling, tools, self._prefixes.get(key) if key else None, _encode(loaded.vision, images)

    def _sampling(
        self, loaded: LoadedModel, config: gc.GenerationConfig, tools: FunctionCalling | None, *, room: int
    ) -> Sampling:
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
            grammar=_grammar(loaded, config, tools),
            logprobs=(config.logprobs or 0) if config.response_logprobs else None,
            calls=(TOOL_CALL_TAG, TOOL_CALL_END_TAG) if tools is not None else None,
        )

    # ------------------------------------------------------------------ tokens and cached prefixes

    async def count_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> int:
        # Tokenizing a large body is work like any other: it takes a place.
        tokens, _, _, _ = await self._on_model(lambda loaded, _: self._prompt(loaded, request, limit=COUNT_LIMIT))
        return len(tokens)

    async def embed(self, request: EmbedRequest, *, model: str) -> list[Embedding]:
        raise InvalidArgumentError("This model writes; it does not embed (embedding models: text-embedding-*).")

    async def compute_tokens(self, request: gc.GenerateContentRequest, *, model: str) -> list[RoleTokens]:
        def compute(loaded: LoadedModel) -> list[RoleTokens]:
            conversation, opening, _, _, images = self._conversation(loaded, request)
            tokenize = _tokenizer(loaded.model, loaded.vision, images)
            turns = prompt_turns(
                loaded.template, conversation, opening=opening, tokenize=tokenize, bos=_bos(loaded.model)
            )
            return [RoleTokens(role, ids, [_piece(loaded.model, token) for token in ids]) for role, ids in turns]

        return await self._on_model(lambda loaded, _: compute(loaded))

    async def cache_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        """Compute the cache's prompt KV once and keep a snapshot of it (memory, then disk); later
        requests naming the cache restore it instead of computing the prefix. Once the snapshot
        is there, this costs a lookup; a lost one (a restart, an eviction) or one whose file failed
        its check (prefixes.py) is built again, once however many requests ask for it at the same
        time, and stored again."""
        key = self._prefixes.key_of(name)
        if key is not None and await asyncio.to_thread(self._prefixes.get, key) is not None:
            return  # in memory now, where the budget allows: the request's plan finds it there
        key, tokens, images = await self._prefix_key(request, owner)
        # Noted before it is built: the sweep keeps what is noted (and young, or being built).
        await asyncio.to_thread(self._prefixes.refer, name, key)
        if await asyncio.to_thread(self._prefixes.get, key) is None:
            build = self._builds.get(key)
            if build is None:
                build = self._builds[key] = asyncio.ensure_future(self._build_prefix(key, tokens, images))
                build.add_done_callback(
                    lambda done: (self._builds.pop(key, None), done.cancelled() or done.exception())
                )
            await asyncio.shield(build)  # a caller that leaves does not stop it: others may wait on it
            self._prefixes.refer(name, key)  # young again: a new cache's row is written next

    async def _prefix_key(
        self, request: gc.GenerateContentRequest, owner: str | None
    ) -> tuple[str, list[int], list[PromptImage]]:
        tokens, _, _, images = await self._on_model(
            lambda loaded, engine: self._prompt(loaded, request, limit=engine.n_ctx - 1)
        )
        return await asyncio.to_thread(self._prefixes.key, owner, tokens), tokens, images

    async def _build_prefix(self, key: str, tokens: list[int], images: list[PromptImage]) -> None:
        self._admit()
        try:
            loaded, _ = await self._loaded()
            sampling = self._sampling(loaded, gc.GenerationConfig(), None, room=1)
            encoded = await self._planning.run(_encode, loaded.vision, images)
            job = Job(tokens, sampling, 1, tenant=_tenant(), snapshot=True, images=encoded)
            async with self._supervisor.subscribe(job) as events:
                while True:
                    for event in await events.next_batch():
                        if isinstance(event, Snapshotted):
                            await asyncio.to_thread(self._prefixes.put, key, event.snapshot)
                            return
        finally:
            self._release()

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        """Its snapshot goes too, unless another cache uses it (the records say which: on disk, so
        across restarts)."""
        await asyncio.to_thread(self._prefixes.forget, name)

    async def sweep_prefixes(self, live: LiveCaches) -> None:
        """Let go of the snapshots of caches that no longer exist (on this replica: another may
        have deleted them), of those no cache uses, of another model's, and of scratch files."""
        alive = await live(self._prefixes.names())
        await asyncio.to_thread(self._prefixes.sweep, alive, busy=set(self._builds))


def context_layout(settings: LocalBackendSettings) -> str:
    """What a KV snapshot restores only into the same of: llama.cpp's state format, as many KV
    streams of as many cells, flash attention and its kernels as they were (llama.cpp stores V
    transposed only without it; each kernel sums in its own order), the KV's number type and its
    pool (shared, or a stream per slot). The default KV options add nothing, so a layout names
    only what differs from them. "on" names its kernels (kernels.py: the tiled kernel of a patched
    build, or llama.cpp's row-at-a-time reference kernel): before it had either, "on" meant the
    shape-chosen ones ("fast" now), and each holds other numbers. So do Q4_1 weights repacked for
    the CPU (a patched build) and the same weights as they are."""
    kernels = row_kernels(settings.kv_type)
    attention = f"on|kernels={kernels}" if settings.flash_attention == "on" else settings.flash_attention
    layout = (
        f"llama.cpp {llama_cpp.__version__}|slots={settings.n_parallel}|ctx={settings.n_ctx}"
        f"|flash_attention={attention}"
    )
    if settings.kv_type != "f16":
        layout += f"|kv_type={settings.kv_type}"
    if repacks_q4_1():
        layout += "|weights=q4_1x8"
    return layout + ("|kv_unified" if settings.kv_unified else "")


def _tenant() -> str:
    """Whose request this is, for the engine's KV reuse (one tenant where keys are off)."""
    return current_record().tenant or ""


def _grammar(loaded: LoadedModel, config: gc.GenerationConfig, tools: FunctionCalling | None) -> Grammar | None:
    """The grammar that constrains the answer: function calls, or a JSON response (schema or not)."""
    if config.response_mime_type == JSON_MIME and tools is not None:
        raise InvalidArgumentError(
            "JSON output cannot be combined with function calling on the local model",
            param="generationConfig.responseMimeType",
        )
    if tools is not None:
        return loaded.grammars.tool_calls(tools.allowed, lazy=tools.lazy)
    named = "responseJsonSchema" if config.response_json_schema is not None else "responseSchema"
    schema = config.response_json_schema if config.response_json_schema is not None else config.response_schema
    return loaded.grammars.response(config.response_mime_type, schema, param=f"generationConfig.{named}")


def _encode(vision: Vision | None, images: list[PromptImage]) -> ImageRows:
    """The images' embeddings, each row by its placeholder."""
    if vision is None:
        return {}
    return image_rows(vision.encode(image) for image in images)


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


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)
