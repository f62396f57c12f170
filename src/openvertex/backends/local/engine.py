"""The decoding thread: continuous batching over llama.cpp's low-level API.

Every active sequence goes into one `llama_decode` per step: one token for each sequence
that is generating, and the rest of the batch for prompts, prefilled in chunks so a long
prompt never stalls running streams. Each sequence owns a slot: a KV stream of its own
(so what else is in the batch cannot change its numbers) and a sampler chain of its own
(so its seed alone decides its samples). Candidates of one request (n > 1) copy the
prompt's KV instead of computing it again; a finished slot keeps its KV, and the next
request whose prompt starts the same way reuses that prefix.

Results cross to the event loop once per step, all jobs' events in one `deliver` call (one
wake-up of the loop, not one per token per stream); a job whose consumer went away is
marked cancelled and its slots are freed before the next step.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from openvertex.backends.local.sampling import Sampling, SequenceSampler, candidate_seed
from openvertex.backends.local.stop import StopMatcher

log = logging.getLogger(__name__)

MIN_SHARED_PREFIX = 16  # tokens a copy from another slot's KV must save to be worth copying


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """A sampled token's log-probability (before sampling transforms), with the top alternatives."""

    token_id: int
    token: str
    logprob: float
    top: tuple[tuple[int, str, float], ...]


@dataclass(frozen=True, slots=True)
class TextDelta:
    candidate: int
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    thought: bool = False


@dataclass(frozen=True, slots=True)
class CandidateDone:
    candidate: int
    finish_reason: str  # Gemini FinishReason: STOP or MAX_TOKENS
    tokens: int  # of the answer
    cached_tokens: int  # prompt tokens whose KV was reused instead of computed
    thought_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


Event = TextDelta | CandidateDone | Failed


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    prompt: list[int]
    sampling: Sampling
    candidates: int
    cancelled: threading.Event = field(default_factory=threading.Event)


Deliver = Callable[[list[tuple[Job, Event]]], None]


@dataclass(eq=False)
class Sequence:
    """One candidate being generated in one slot."""

    job: Job
    candidate: int
    sampler: SequenceSampler
    matcher: StopMatcher
    decoder: codecs.IncrementalDecoder
    cached_tokens: int
    tokens: int = 0  # of the answer
    next_token: int | None = None  # sampled, not yet decoded
    thinking: StopMatcher | None = None  # while reasoning: watches for the closing text
    thoughts: int = 0
    answered: bool = False  # the answer's first visible text is out
    reasoned: bool = False  # the first thought text is out


@dataclass(eq=False)
class Slot:
    seq_id: int
    context: list[int] = field(default_factory=list)  # tokens whose KV this slot holds
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    sequence: Sequence | None = None
    siblings: list[Slot] = field(default_factory=list)  # slots that copy this prompt's KV (n > 1)


class Engine:
    def __init__(
        self,
        model: llama_cpp.llama_model_p,
        deliver: Deliver,
        *,
        n_ctx: int,
        n_slots: int,
        n_batch: int,
        n_threads: int,
    ) -> None:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False  # a KV stream per slot: n_ctx cells each
        params.n_threads = params.n_threads_batch = n_threads
        # Flash attention is slower on CPUs for a model this small (about 10% measured here).
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._n_batch = n_batch
        self.n_ctx = n_ctx
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._piece_buffer = ctypes.create_string_buffer(256)  # this engine's thread only
        self._slots = [Slot(seq_id) for seq_id in range(n_slots)]
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._deliver = deliver
        self._outbox: list[tuple[Job, Event]] = []
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        self._thread = threading.Thread(target=self._run, name="openvertex-engine", daemon=True)
        self._thread.start()

    def running(self) -> int:
        return sum(1 for slot in self._slots if slot.sequence is not None)

    def waiting(self) -> int:
        return len(self._waiting) + self._inbox.qsize()

    def submit(self, job: Job) -> None:
        self._inbox.put(job)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join()
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while True:
            busy = any(slot.sequence for slot in self._slots)
            try:
                # Block only when there is nothing to decode.
                job = self._inbox.get(block=not busy and not self._waiting)
                if job is None:
                    break
                self._waiting.append(job)
                continue  # drain the inbox before stepping
            except queue.Empty:
                pass
            self._drop_cancelled()
            self._admit()
            if any(slot.sequence for slot in self._slots):
                try:
                    self._step()
                except Exception as error:  # reported to every running request; the engine carries on
                    log.exception("decode step failed")
                    for slot in self._slots:
                        if slot.sequence is not None:
                            self._emit(slot.sequence.job, Failed(error))
                            self._release(slot)
            self._flush()
        for slot in self._slots:
            if slot.sequence is not None:
                self._release(slot)

    def _emit(self, job: Job, event: Event) -> None:
        self._outbox.append((job, event))

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._deliver(batch)

    def _drop_cancelled(self) -> None:
        self._waiting = deque(job for job in self._waiting if not job.cancelled.is_set())
        for slot in self._slots:
            if slot.sequence is not None and slot.sequence.job.cancelled.is_set():
                self._release(slot)

    def _admit(self) -> None:
        """Start waiting jobs, in order, while there are free slots for all their candidates."""
        while self._waiting:
            job = self._waiting[0]
            free = [slot for slot in self._slots if slot.sequence is None]
            if len(free) < job.candidates:
                return
            self._waiting.popleft()
            primary = max(free, key=lambda slot: _common_prefix(slot.context, job.prompt))
            free.remove(primary)
            self._start(job, primary, free[: job.candidates - 1])

    def _start(self, job: Job, primary: Slot, siblings: list[Slot]) -> None:
        # Reuse the longest prefix any slot holds (this slot's last conversation, or a system
        # prompt another request shares); at least one prompt token is decoded again,
        # because sampling needs its logits.
        limit = len(job.prompt) - 1
        source = max(
            (slot for slot in self._slots if slot not in siblings),
            key=lambda slot: (_common_prefix(slot.context, job.prompt), slot is primary),
        )
        reuse = min(_common_prefix(source.context, job.prompt), limit)
        if source is not primary and reuse >= MIN_SHARED_PREFIX:
            # A copy between KV streams: llama.cpp moves the cells' bookkeeping at once and
            # the data at the start of the next decode, before that decode writes anything.
            llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, primary.seq_id, -1, -1)
        elif source is not primary:
            reuse = min(_common_prefix(primary.context, job.prompt), limit)
        llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, reuse, -1)
        primary.context = job.prompt[:reuse]
        primary.pending = job.prompt[reuse:]
        primary.siblings = siblings
        for candidate, slot in enumerate([primary, *siblings]):
            seed = candidate_seed(job.sampling.seed, candidate)
            slot.sequence = Sequence(
                job=job,
                candidate=candidate,
                sampler=SequenceSampler(self._vocab, self._n_vocab, job.sampling, seed),
                matcher=StopMatcher(list(job.sampling.stop)),
                decoder=codecs.getincrementaldecoder("utf-8")("replace"),
                cached_tokens=reuse,
                thinking=StopMatcher([job.sampling.thinking.close_text]) if job.sampling.thinking else None,
            )

    # ------------------------------------------------------------------ one step

    def _step(self) -> None:
        batch = self._batch
        outputs: list[tuple[Slot, int]] = []  # (slot, batch index) whose logits we sample

        def add(slot: Slot, token: int, logits: bool) -> None:
            i = batch.n_tokens
            batch.token[i] = token
            batch.pos[i] = len(slot.context)
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq_id
            batch.logits[i] = logits
            batch.n_tokens = i + 1
            slot.context.append(token)
            if logits:
                outputs.append((slot, i))

        batch.n_tokens = 0
        generating = [s for s in self._slots if s.sequence is not None and s.sequence.next_token is not None]
        for slot in generating:  # one token each: running streams never wait for prompts
            assert slot.sequence is not None and slot.sequence.next_token is not None
            add(slot, slot.sequence.next_token, True)
            slot.sequence.next_token = None
        for slot in self._slots:  # then prompts, in chunks, with what room is left
            chunk = slot.pending[: self._n_batch - batch.n_tokens]
            slot.pending = slot.pending[len(chunk) :]
            for position, token in enumerate(chunk, start=1):
                add(slot, token, position == len(chunk) and not slot.pending)
            self.tokens_prefilled += len(chunk)
        if batch.n_tokens == 0:
            return
        status = llama_cpp.llama_decode(self._ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        for slot, index in outputs:
            if slot.siblings:  # the prompt is in: the other candidates copy its KV
                for sibling in slot.siblings:
                    llama_cpp.llama_memory_seq_rm(self._memory, sibling.seq_id, -1, -1)
                    llama_cpp.llama_memory_seq_cp(self._memory, slot.seq_id, sibling.seq_id, -1, -1)
                    sibling.context = list(slot.context)
                    self._sample(sibling, index)
                slot.siblings = []
            self._sample(slot, index)

    def _sample(self, slot: Slot, index: int) -> None:
        sequence = slot.sequence
        if sequence is None:
            return
        token = sequence.sampler.sample(self._ctx, index)
        if sequence.thinking is not None:
            self._think(slot, sequence, token)
            return
        if llama_cpp.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "STOP")
            return
        sequence.tokens += 1
        self.tokens_generated += 1
        self._answer(sequence, sequence.decoder.decode(self._piece(token)), index, token)
        if sequence.matcher.stopped:
            self._finish(slot, "STOP")
        else:
            self._continue(slot, sequence, token)

    def _answer(self, sequence: Sequence, text: str, index: int | None = None, token: int = -1) -> None:
        text = sequence.matcher.feed(text)
        if not sequence.answered and sequence.job.sampling.thinking is not None:
            text = text.lstrip()  # the blank line after the reasoning is not the answer's
        sequence.answered = sequence.answered or bool(text)
        top_n = sequence.job.sampling.logprobs
        # A token's logprob travels with the delta it was sampled in, even when a stop
        # sequence holds its text back.
        logprobs = (self._logprob(index, token, top_n),) if top_n is not None and index is not None else ()
        if text or logprobs:
            self._emit(sequence.job, TextDelta(sequence.candidate, text, logprobs))

    def _continue(self, slot: Slot, sequence: Sequence, token: int) -> None:
        """Decode `token` next, unless the answer or the context is full."""
        if (
            sequence.tokens + sequence.thoughts >= sequence.job.sampling.max_tokens
            or len(slot.context) + 1 >= self.n_ctx
        ):
            self._finish(slot, "MAX_TOKENS")
        else:
            sequence.next_token = token

    def _think(self, slot: Slot, sequence: Sequence, token: int) -> None:
        """A token of reasoning; the end of the budget (or the model stopping) closes it."""
        matcher, thinking = sequence.thinking, sequence.job.sampling.thinking
        assert matcher is not None and thinking is not None
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) or sequence.thoughts >= thinking.budget:
            # Close the reasoning for the model and let it answer: the closing text is
            # decoded in place of this token.
            self._end_thinking(sequence, matcher.flush())
            if len(slot.context) + len(thinking.close_tokens) + 1 >= self.n_ctx:
                self._finish(slot, "MAX_TOKENS")
            else:
                slot.pending = list(thinking.close_tokens)
            return
        sequence.thoughts += 1
        self.tokens_generated += 1
        text = matcher.feed(sequence.decoder.decode(self._piece(token)))
        if not sequence.reasoned:
            text = text.lstrip()  # the line break after the opening tag is the format's
            sequence.reasoned = bool(text)
        if matcher.stopped:  # the model closed its reasoning itself
            self._end_thinking(sequence, text, after=matcher.after)
            self._answer(sequence, matcher.after)
            if sequence.matcher.stopped:
                self._finish(slot, "STOP")
                return
        elif text:
            self._emit(sequence.job, TextDelta(sequence.candidate, text, thought=True))
        self._continue(slot, sequence, token)

    def _end_thinking(self, sequence: Sequence, text: str, *, after: str = "") -> None:
        """Emit the last thought text; `after` is answer text that came with the closing tag."""
        text += sequence.decoder.decode(b"", final=True)
        if text.strip():
            self._emit(sequence.job, TextDelta(sequence.candidate, text.rstrip(), thought=True))
        sequence.thinking = None
        sequence.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        sequence.sampler.begin_answer(after)

    def _logprob(self, index: int, token: int, top_n: int) -> TokenLogprob:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
        shifted = logits - logits.max()
        logprobs = shifted - np.log(np.exp(shifted).sum())
        best = np.argpartition(-logprobs, top_n)[:top_n] if top_n else np.array([], dtype=int)
        best = best[np.argsort(-logprobs[best])]
        top = tuple((int(t), self._text(int(t)), float(logprobs[t])) for t in best)
        return TokenLogprob(token, self._text(token), float(logprobs[token]), top)

    def _piece(self, token: int) -> bytes:
        buffer = self._piece_buffer
        size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, False)
        return buffer.raw[:size] if size > 0 else b""

    def _text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace")

    def _finish(self, slot: Slot, reason: str) -> None:
        sequence = slot.sequence
        assert sequence is not None
        if sequence.thinking is not None:  # cut off while reasoning
            self._end_thinking(sequence, sequence.thinking.flush())
        tail = sequence.matcher.feed(sequence.decoder.decode(b"", final=True)) + sequence.matcher.flush()
        if tail:
            self._emit(sequence.job, TextDelta(sequence.candidate, tail))
        self._emit(
            sequence.job,
            CandidateDone(sequence.candidate, reason, sequence.tokens, sequence.cached_tokens, sequence.thoughts),
        )
        self._release(slot, keep_cache=True)

    def _release(self, slot: Slot, *, keep_cache: bool = False) -> None:
        """Free the slot; a finished one keeps its KV for the next request's prefix."""
        if slot.sequence is not None:
            slot.sequence.sampler.free()
        slot.sequence = None
        slot.pending = []
        for sibling in slot.siblings:  # candidates that never got the prompt
            self._release(sibling)
        slot.siblings = []
        if not keep_cache:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.context = []


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
