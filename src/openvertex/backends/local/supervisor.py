"""The local model's lifetime: load it off the event loop, keep an engine running on it (a dead one is
replaced, with backoff when it keeps dying), let go of both when asked (residency.py decides when),
and route each job's events to whoever follows the job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import llama_cpp
from llama_cpp._internals import LlamaModel
from llama_cpp._logger import set_verbose as set_llama_verbose

from openvertex.backends.base import BackendLoad
from openvertex.backends.local import thinking
from openvertex.backends.local.engine import Engine
from openvertex.backends.local.grammar import GrammarCompiler, GrammarLimits
from openvertex.backends.local.jobs import CandidateDone, Event, Failed, Job, Snapshotted, TextDelta
from openvertex.backends.local.kernels import repacks_q4_1
from openvertex.backends.local.model import tensor_types
from openvertex.backends.local.prompt import ChatTemplate
from openvertex.backends.local.responses import merge_text
from openvertex.backends.local.vision import Vision
from openvertex.errors import UnavailableError
from openvertex.settings import LocalBackendSettings

log = logging.getLogger(__name__)

# An engine that dies is replaced at once; one that keeps dying, less and less often.
STABLE_ENGINE_S = 60.0  # an engine that ran this long before dying counts as a first failure
MAX_RESTART_DELAY_S = 30.0


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """What planning a request needs of the loaded model."""

    model: LlamaModel
    template: ChatTemplate
    thinking_mode: thinking.Mode
    thinking_close: tuple[int, ...]  # thinking.CLOSING as tokens
    grammars: GrammarCompiler  # for the model's vocabulary
    vision: Vision | None  # the projector, when one is configured


def model_params(settings: LocalBackendSettings, model_path: Path) -> llama_cpp.llama_model_params:
    """How llama.cpp loads the model: its layers on the GPU as configured; mapped, as llama.cpp maps
    a model, unless its Q4_1 weights are repacked for the CPU into memory of their own, beside
    which the mapped file's pages would stay resident (SmolLM2: 63 MiB more, idle): then read."""
    params: llama_cpp.llama_model_params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = settings.n_gpu_layers
    if settings.n_gpu_layers == 0 and repacks_q4_1() and llama_cpp.GGML_TYPE_Q4_1 in tensor_types(model_path):
        params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return params


def load_model(settings: LocalBackendSettings, model_path: Path, projector_path: Path | None) -> LoadedModel:
    """Read the model file (and projector): slow, so called on a worker thread."""
    set_llama_verbose(log.isEnabledFor(logging.DEBUG))  # llama.cpp's own log lines
    params = model_params(settings, model_path)
    model = LlamaModel(path_model=str(model_path), params=params, verbose=False)
    bos, eos = _special_text(model, model.token_bos()), _special_text(model, model.token_eos())
    source = model.metadata().get("tokenizer.chat_template")
    grammars = GrammarCompiler(
        model.vocab,
        [t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(model.vocab, t)],
        GrammarLimits(settings.max_schema_bytes, settings.grammar_lexer_fuel, settings.max_grammar_size),
    )
    vision = None
    if projector_path is not None:
        vision = Vision(projector_path, model.model, n_threads=_threads(settings), n_batch=settings.n_batch)
    return LoadedModel(
        model,
        ChatTemplate(source, bos_token=bos, eos_token=eos),
        thinking.resolve_mode(settings.thinking, source),
        tuple(model.tokenize(thinking.CLOSING.encode(), add_bos=False, special=True)),
        grammars,
        vision,
    )


class EngineSupervisor:
    """Owns the model and the engine decoding on it; a job's events reach it through a Subscription."""

    def __init__(self, settings: LocalBackendSettings, model_path: Path, projector_path: Path | None) -> None:
        self.settings = settings
        self.model_path = model_path
        self.projector_path = projector_path
        self.loaded: LoadedModel | None = None  # None until loaded, once let go, and once closed
        self.engine: Engine | None = None  # None while a dead one is being replaced
        self._queues: dict[Job, asyncio.Queue[Event]] = {}  # jobs in flight and where their events go
        self._loop: asyncio.AbstractEventLoop | None = None
        self._restarting: asyncio.Task[None] | None = None  # replacing an engine that died
        self._halt = asyncio.Event()  # set while letting go (and once closed): no engine is restarted
        self._engine_started = 0.0  # monotonic time the current engine started
        self._failures = 0  # engine deaths in a row, each soon after the previous start
        self._retired = (0, 0)  # tokens generated and prefilled by engines that died

    def ready(self) -> bool:
        engine = self.engine
        return engine is not None and engine.alive()

    def load(self) -> BackendLoad:
        engine, (generated, prefilled) = self.engine, self._retired
        slots, n_ctx = self.settings.n_parallel, self.settings.n_ctx
        if engine is None:
            return BackendLoad(
                tokens_generated=generated,
                tokens_prefilled=prefilled,
                slots=slots,
                kv_tokens=0,
                kv_capacity=slots * n_ctx,
            )
        return BackendLoad(
            engine.running(),
            engine.waiting(),
            generated + engine.tokens_generated,
            prefilled + engine.tokens_prefilled,
            slots=slots,
            kv_tokens=engine.kv_tokens(),
            kv_capacity=slots * n_ctx,  # a KV stream of n_ctx cells per slot (engine.py)
            kv_resident_bytes=engine.kv_resident_bytes(),
        )

    async def open(self) -> None:
        """Load the model and start an engine on it (raises where it cannot)."""
        self._loop = asyncio.get_running_loop()
        self._halt.clear()
        await asyncio.to_thread(self._load)
        self._check_engine()

    def _load(self) -> None:
        loaded = load_model(self.settings, self.model_path, self.projector_path)
        try:
            self.engine = self._new_engine(loaded)
        except BaseException:
            _close_model(loaded)
            raise
        self.loaded = loaded  # last: a request plans once everything it needs is here
        log.info(
            "loaded %s (%d slots of %d tokens, %d threads)",
            self.model_path.name,
            self.settings.n_parallel,
            self.settings.n_ctx,
            _threads(self.settings),
        )

    async def close(self) -> None:
        await self.unload()

    async def unload(self) -> None:
        """Let go of the engine and the model (their memory with them); `open` brings them back.
        Jobs still there are cancelled: the caller lets go of an idle model only."""
        self._halt.set()  # a restart waiting out its backoff stops at once; one building finishes
        if self._restarting is not None:
            await self._restarting
            self._restarting = None
        for job in self._queues:
            job.cancelled.set()
        engine, loaded = self.engine, self.loaded
        self.engine = self.loaded = None
        if engine is not None:
            self._retired = (self._retired[0] + engine.tokens_generated, self._retired[1] + engine.tokens_prefilled)
            await asyncio.to_thread(engine.close)
        if loaded is not None:
            _close_model(loaded)

    def loaded_now(self) -> tuple[LoadedModel, Engine]:
        """The model and a live engine; 503 where there are none (not loaded, or restarting)."""
        if self.loaded is None:
            raise UnavailableError("The model is not loaded.")
        return self.loaded, self.live_engine()

    def live_engine(self) -> Engine:
        engine = self.engine
        if engine is None or not engine.alive():
            raise engine_unavailable()
        return engine

    def subscribe(self, job: Job) -> Subscription:
        """Submit a job to the live engine and follow its events; close the subscription when done."""
        engine = self.live_engine()  # it may have died, or been replaced, while the job was planned
        events: asyncio.Queue[Event] = asyncio.Queue()
        self._queues[job] = events  # before submitting: if the engine dies now, this job hears of it
        try:
            engine.submit(job)
        except BaseException:
            del self._queues[job]
            raise
        return Subscription(job, engine, events, self._queues)

    # ------------------------------------------------------------------ engine deaths and restarts

    def _new_engine(self, loaded: LoadedModel) -> Engine:
        settings = self.settings
        engine = Engine(
            loaded.model.model,
            self._deliver,
            on_exit=self._engine_exited,
            n_ctx=settings.n_ctx,
            n_slots=settings.n_parallel,
            n_batch=settings.n_batch,
            n_threads=_threads(settings),
            n_embd=loaded.vision.n_embd if loaded.vision is not None else None,
            flash_attention=settings.flash_attention,
            kv_type=settings.kv_type,
            kv_unified=settings.kv_unified,
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
        if engine is not self.engine or self._halt.is_set():
            return
        self.engine = None
        self._retired = (self._retired[0] + engine.tokens_generated, self._retired[1] + engine.tokens_prefilled)
        for job, events in self._queues.items():  # running, waiting and just submitted alike
            job.cancelled.set()
            events.put_nowait(Failed(engine_unavailable()))
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
            with contextlib.suppress(TimeoutError):  # unload() and close() cut the delay short
                await asyncio.wait_for(self._halt.wait(), delay)
            if self._halt.is_set() or self.loaded is None:
                return
            try:
                self.engine = await asyncio.to_thread(self._new_engine, self.loaded)
            except Exception:
                log.exception("could not start a new local engine")
                delay = min(MAX_RESTART_DELAY_S, max(1.0, 2 * delay))
                continue
            log.warning("the local engine was restarted")
            self._check_engine()
            return

    def _check_engine(self) -> None:
        """An engine that died before it was installed was not recognised as ours: fail it now."""
        engine = self.engine
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


def _close_model(loaded: LoadedModel) -> None:
    if loaded.vision is not None:
        loaded.vision.close()
    loaded.model.close()  # type: ignore[no-untyped-call]


class Subscription:
    """One submitted job's events, batch by batch; closing it (or leaving its `async with`) cancels
    the job, whose slots the engine frees at its next step."""

    def __init__(self, job: Job, engine: Engine, events: asyncio.Queue[Event], queues: dict[Job, asyncio.Queue[Event]]):
        self._job, self._engine, self._events, self._queues = job, engine, events, queues
        self._error: BaseException | None = None  # a failure that ends the job, once what came before is taken

    async def next_batch(self) -> list[TextDelta | CandidateDone | Snapshotted]:
        """Wait for one event, then take what else is already there, adjacent text merged; a failure
        of the job is raised here, after the events before it.

        Taking them frees the job's backlog: a job paused for a slow reader goes on."""
        if self._error is not None:
            raise self._error
        batch = [await self._events.get()]
        while not self._events.empty():
            batch.append(self._events.get_nowait())
        self._engine.taken(self._job, len(batch))
        taken: list[TextDelta | CandidateDone | Snapshotted] = []
        for event in merge_text(batch):
            if isinstance(event, Failed):
                self._error = event.error
                break
            taken.append(event)
        if not taken and self._error is not None:
            raise self._error
        return taken

    def close(self) -> None:
        self._engine.cancel(self._job)  # a consumer that left frees its slots at the next step
        self._queues.pop(self._job, None)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def engine_unavailable() -> UnavailableError:
    error = UnavailableError("The local model's engine stopped unexpectedly and is restarting. Please try again.")
    error.headers["Retry-After"] = "1"
    return error


def _threads(settings: LocalBackendSettings) -> int:
    return settings.n_threads or os.cpu_count() or 1


def _special_text(model: LlamaModel, token: int) -> str:
    return model.detokenize([token], special=True).decode(errors="ignore") if token >= 0 else ""
