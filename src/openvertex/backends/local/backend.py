"""LocalBackend: GenerateContentRequest → prompt tokens → engine job → GenerateContentResponse chunks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import llama_cpp
from llama_cpp._internals import LlamaModel
from llama_cpp._logger import set_verbose as set_llama_verbose

from openvertex.backends.base import BackendLoad, Capabilities, collect_stream
from openvertex.backends.local import thinking
from openvertex.backends.local.calls import CallReader, FunctionCalling, plan_function_calling
from openvertex.backends.local.engine import (
    CandidateDone,
    Engine,
    Event,
    Failed,
    Job,
    TextDelta,
    TokenLogprob,
)
from openvertex.backends.local.grammar import (
    SUPPORTED_MIME_TYPES,
    TOOL_CALL_TAG,
    check_grammar,
    grammar_for,
)
from openvertex.backends.local.model import resolve_model_path, sampling_defaults
from openvertex.backends.local.prompt import ChatTemplate, contents_to_messages, output_instruction
from openvertex.backends.local.sampling import Sampling, Thinking
from openvertex.backends.local.thinking import resolve_mode, thinking_budget
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


class LocalBackend:
    def __init__(self, settings: LocalBackendSettings) -> None:
        self.settings = settings
        # Candidates of one request decode side by side, one slot each.
        self.capabilities = Capabilities(
            function_calling=True,
            thinking=settings.thinking != "off",
            response_mime_types=SUPPORTED_MIME_TYPES,
            max_candidates=min(MAX_CANDIDATES, settings.n_parallel),
        )
        self.model_path: Path = resolve_model_path(settings.model)  # fail fast on a bad path
        model_defaults = sampling_defaults(settings.model)
        self._default_temperature = _first(settings.temperature, model_defaults.temperature, GEMINI_TEMPERATURE)
        self._default_top_p = _first(settings.top_p, model_defaults.top_p, GEMINI_TOP_P)
        self._repeat_penalty = _first(settings.repeat_penalty, model_defaults.repeat_penalty, 1.0)
        self._dynamic_budget = settings.dynamic_thinking_budget
        self._thinking_mode: thinking.Mode = "off"  # known once the template is read
        self._thinking_close: tuple[int, ...] = ()  # thinking.CLOSING as tokens, once loaded
        self._model: LlamaModel | None = None
        self._engine: Engine | None = None
        self._template: ChatTemplate | None = None
        self._loaded = asyncio.Event()
        self._load_error: str | None = None
        self._queues: dict[Job, asyncio.Queue[Event]] = {}  # jobs in flight and where their events go
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ lifecycle

    def ready(self) -> bool:
        return self._engine is not None

    def load(self) -> BackendLoad:
        engine = self._engine
        if engine is None:
            return BackendLoad()
        return BackendLoad(engine.running(), engine.waiting(), engine.tokens_generated, engine.tokens_prefilled)

    def _admit(self) -> None:
        """Bounded admission: past the slots and the waiting room, answer 429 at once."""
        capacity = self.settings.n_parallel + self.settings.max_waiting
        if len(self._queues) >= capacity:
            raise ResourceExhaustedError(
                f"Resource exhausted: the local model is serving {len(self._queues)} requests "
                f"({self.settings.n_parallel} at a time, {self.settings.max_waiting} waiting). Please try again later.",
                retry_after_s=1,
            )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await asyncio.to_thread(self._load)
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
        self._engine = Engine(
            model.model,
            self._deliver,
            n_ctx=settings.n_ctx,
            n_slots=settings.n_parallel,
            n_batch=settings.n_batch,
            n_threads=threads,
        )
        self._model = model
        log.info(
            "loaded %s (%d slots of %d tokens, %d threads)",
            self.model_path.name,
            settings.n_parallel,
            settings.n_ctx,
            threads,
        )

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
        for job in self._queues:
            job.cancelled.set()
        if self._engine is not None:
            await asyncio.to_thread(self._engine.close)
        if self._model is not None:
            self._model.close()  # type: ignore[no-untyped-call]
        self._engine = self._model = None

    async def _wait_loaded(self) -> tuple[LlamaModel, Engine, ChatTemplate]:
        await self._loaded.wait()
        if self._model is None or self._engine is None or self._template is None:
            raise UnavailableError(
                f"The model could not be loaded: {self._load_error or 'the server is shutting down'}"
            )
        return self._model, self._engine, self._template

    # ------------------------------------------------------------------ requests

    def _plan(
        self, model: LlamaModel, n_ctx: int, template: ChatTemplate, request: gc.GenerateContentRequest
    ) -> tuple[list[int], Sampling, FunctionCalling | None]:
        """Prompt tokens, sampling and function calling for a request (off the event loop: it can be slow)."""
        config = request.generation_config or gc.GenerationConfig()
        tools = plan_function_calling(request)
        budget = thinking_budget(config.thinking_config, self._thinking_mode, dynamic=self._dynamic_budget)
        reasoning = thinking.INSTRUCTION if budget and self._thinking_mode == "prompted" else None
        instructions = [text for text in (output_instruction(config), reasoning) if text]
        messages = contents_to_messages(
            request.system_instruction,
            request.contents,
            instructions=instructions,
            tools=tools.declarations if tools else None,
            native_tools=template.native_tools,
            thought_tags=None if self._thinking_mode == "off" else (thinking.OPEN_TAG, thinking.CLOSE_TAG),
        )
        prompt = template.render(messages, tools=tools.declarations if tools else None)
        if budget:
            prompt += thinking.OPENING  # the answer turn opens with the reasoning
        elif self._thinking_mode == "native":
            prompt += thinking.OPENING + thinking.CLOSING.lstrip("\n")  # an empty one: no thinking
        tokens = model.tokenize(prompt.encode(), add_bos=True, special=True)
        limit = n_ctx - 1  # room for at least one generated token
        if len(tokens) > limit:
            raise InvalidArgumentError(
                f"The input token count ({len(tokens)}) exceeds the maximum number of tokens allowed ({limit})."
            )
        sampling = self._sampling(model, config, tools, room=n_ctx - len(tokens))
        if budget:
            sampling = replace(sampling, thinking=Thinking(budget, thinking.CLOSE_TAG, self._thinking_close))
        return tokens, sampling, tools

    def _sampling(
        self, model: LlamaModel, config: gc.GenerationConfig, tools: FunctionCalling | None, *, room: int
    ) -> Sampling:
        grammar = grammar_for(config.response_mime_type, config.response_json_schema)
        if grammar is not None and tools is not None:
            raise InvalidArgumentError(
                "JSON output cannot be combined with function calling on the local model", param="response_format"
            )
        if grammar is not None:
            check_grammar(model.vocab, grammar, param="response_format")
        elif tools is not None:
            grammar = tools.grammar
            check_grammar(model.vocab, grammar, param="tools")
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
            logprobs=(config.logprobs or 0) if config.response_logprobs else None,
            grammar_trigger=TOOL_CALL_TAG if tools is not None and tools.lazy else None,
        )

    def stream(self, request: gc.GenerateContentRequest, *, model: str) -> AsyncIterator[gc.GenerateContentResponse]:
        return self._run(request, model=model, streaming=True)

    async def generate(self, request: gc.GenerateContentRequest, *, model: str) -> gc.GenerateContentResponse:
        return await collect_stream(self._run(request, model=model, streaming=False))

    async def _run(
        self, request: gc.GenerateContentRequest, *, model: str, streaming: bool
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        loaded, engine, template = await self._wait_loaded()
        prompt, sampling, tools = await asyncio.to_thread(self._plan, loaded, engine.n_ctx, template, request)
        candidates = (request.generation_config or gc.GenerationConfig()).candidate_count or 1
        # Arguments arrive in pieces only in a stream that asked for them (spec §3.5).
        readers = (
            [CallReader(stream_arguments=streaming and tools.stream_arguments) for _ in range(candidates)]
            if tools is not None
            else None
        )
        job = Job(prompt=prompt, sampling=sampling, candidates=candidates)
        self._admit()  # no await between the check and the add: the count cannot race
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job] = events
        engine.submit(job)
        generated = cached = thoughts = 0
        try:
            finished = 0
            while finished < candidates:
                for event in await _next_batch(events):
                    if isinstance(event, Failed):
                        raise event.error
                    if isinstance(event, CandidateDone):
                        finished += 1
                        generated += event.tokens
                        thoughts += event.thought_tokens
                        cached = event.cached_tokens
                    usage = _usage(len(prompt), generated, cached, thoughts) if finished == candidates else None
                    yield _chunk(event, _parts(event, readers), model, usage)
        finally:
            job.cancelled.set()  # a consumer that left frees the engine at the next token
            self._queues.pop(job, None)


def _special_text(model: LlamaModel, token: int) -> str:
    return model.detokenize([token], special=True).decode(errors="ignore") if token >= 0 else ""


def _first(*values: float | None) -> float:
    return next(v for v in values if v is not None)


async def _next_batch(events: asyncio.Queue[Event]) -> list[Event]:
    """Wait for one event, then take what else is already there, merging adjacent text."""
    batch = [await events.get()]
    while not events.empty():
        event = events.get_nowait()
        last = batch[-1]
        if (
            isinstance(event, TextDelta)
            and isinstance(last, TextDelta)
            and (last.candidate, last.thought) == (event.candidate, event.thought)
        ):
            batch[-1] = TextDelta(
                event.candidate, last.text + event.text, last.logprobs + event.logprobs, event.thought
            )
        else:
            batch.append(event)
    return batch


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
