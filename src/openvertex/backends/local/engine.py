"""The decoding thread: continuous batching over llama.cpp's low-level API.

Every active sequence goes into one `llama_decode` per step: one token for each sequence
that is generating, and the rest of the batch for prompts, prefilled in chunks so a long
prompt never stalls running streams. Each sequence owns a slot: a KV stream of its own
(so what else is in the batch cannot change its numbers) and a sampler chain of its own
(so its seed alone decides its samples). Candidates of one request (n > 1) copy the
prompt's KV instead of computing it again; a finished slot keeps its KV, and the next
request whose prompt starts the same way reuses that prefix — if the same tenant sent it: a
slot remembers whose KV it holds, and a job reuses only its own tenant's, so neither the
reported cached tokens nor the time to the first token tell one tenant what another's prompts
start with. A context cache's prefix is
kept beyond the slots: a snapshot job prefills it and hands over the sequence's KV state
(`llama_state_seq_get_data`), and a job that carries a snapshot has it restored into its
slot (`llama_state_seq_set_data`) when no slot holds more of its prompt. An image in a prompt
(vision.py) is a run of placeholders: its embeddings are decoded in a batch of their own, before
the step's token batch.

Results cross to the event loop once per step, all jobs' events in one `deliver` call (one
wake-up of the loop, not one per token per stream); a job whose consumer went away is
marked cancelled and its slots are freed before the next step. A job whose consumer lags
(a slow reader) stops being decoded once its backlog of undelivered events is full, and
resumes when the consumer takes them.

Faults stay as small as they can: an error in one sequence's sampling ends that job alone; a
failed `llama_decode` ends the jobs that were in its batch (their KV is dropped). Anything
that escapes the loop ends the thread, and `on_exit` tells the owner, which fails the jobs
and starts a new engine.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
import numpy as np

from openvertex.backends.compute_thread import COMPUTE
from openvertex.backends.local.jobs import (
    CandidateDone,
    Deliver,
    Event,
    Failed,
    Job,
    Snapshotted,
    TextDelta,
    TokenLogprob,
)
from openvertex.backends.local.kernels import use_reference_kernels
from openvertex.backends.local.kv_pages import KvPages, KvShape, kv_shape
from openvertex.backends.local.llama_lib import Unavailable
from openvertex.backends.local.sampling import SequenceSampler, candidate_seed
from openvertex.backends.local.scheduling import WaitingRoom
from openvertex.backends.local.snapshots import Snapshot
from openvertex.backends.local.stop import StopMatcher
from openvertex.errors import ApiError, InternalError

log = logging.getLogger(__name__)
_LOCATING = threading.Lock()
_KV_SEARCHES = 3  # tries at finding the KV cache by its mark

MIN_SHARED_PREFIX = 16  # tokens a copy from another slot's KV must save to be worth copying
_FLASH_ATTENTION = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,  # one kernel for every row (kernels.py)
    "fast": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}
_KV_TYPE = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0}


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
    tenant: str | None = None  # whose prompt `context` is (None: it holds nothing)
    started: int = -1  # when it last took a job (the engine's count of starts)
    pending: list[int] = field(default_factory=list)  # prompt tokens still to prefill
    sequence: Sequence | None = None
    siblings: list[Slot] = field(default_factory=list)  # slots that copy this prompt's KV (n > 1)


class Engine:
    def __init__(
        self,
        model: llama_cpp.llama_model_p,
        deliver: Deliver,
        *,
        on_exit: Callable[[Engine], None],
        n_ctx: int,
        n_slots: int,
        n_batch: int,
        n_threads: int,
        n_embd: int | None = None,
        flash_attention: str = "on",
        kv_type: str = "f16",
        kv_unified: bool = False,
    ) -> None:
        """`n_embd`: the model's embedding size, where prompts may hold images (a projector).
        `kv_unified`: one pool of n_ctx * n_slots cells the slots share, instead of a stream each;
        a sequence still ends at n_ctx (`_continue`), as the prompt planner bounds it. What else is
        in the batch then changes a sequence's numbers a little (attention spans the pool)."""
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_slots
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_slots
        params.kv_unified = kv_unified  # else a KV stream per slot: n_ctx cells each
        params.type_k = params.type_v = _KV_TYPE[kv_type]
        params.n_threads = params.n_threads_batch = n_threads
        params.flash_attn_type = _FLASH_ATTENTION[flash_attention]
        self._ctx = llama_cpp.llama_init_from_model(model, params)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        try:
            if flash_attention == "on":
                use_reference_kernels(self._ctx)
            self._memory = llama_cpp.llama_get_memory(self._ctx)
        except BaseException:
            llama_cpp.llama_free(self._ctx)
            raise
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._n_batch = n_batch
        self.n_ctx = n_ctx
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._n_embd = n_embd or 0
        self._image_batch = llama_cpp.llama_batch_init(n_batch, n_embd, 1) if n_embd else None
        self._piece_buffer = ctypes.create_string_buffer(256)  # this engine's thread only
        self._slots = [Slot(seq_id) for seq_id in range(n_slots)]
        self._starts = 0
        # A small job may start ahead of one that does not fit yet, at most once per slot.
        self._waiting: WaitingRoom[Job] = WaitingRoom(max_bypasses=n_slots)
        # Other threads reach the engine's thread through these, under `_signal`.
        self._signal = threading.Condition()
        self._inbox: list[Job] = []
        self._woken = False  # something changed that may let a paused job go on
        self._stopping = False
        self._exited = False
        self._deliver = deliver
        self._on_exit = on_exit
        self._outbox: list[tuple[Job, Event]] = []
        self._copying: set[int] = set()  # seq ids in a KV copy that the next decode carries out
        # The KV cache's memory, given back where cells hold nothing (kv_pages.py); per slot only
        # with a stream each (in a shared pool a sequence's cells are not in position order).
        # Flash attention off stores V transposed.
        self._kv_changes = 0  # decodes and trims: what can change the KV's resident memory
        self._kv_resident: tuple[int, int] | None = None  # (changes, bytes) when last read
        self._kv_per_slot = not kv_unified
        self.tokens_generated = 0
        self.tokens_prefilled = 0
        # Before any job, so a ready engine's KV memory is known.
        self._pages = self._find_kv(model, _KV_TYPE[kv_type], kv_unified) if flash_attention != "off" else None
        self._thread = threading.Thread(target=self._run, name="openvertex-engine", daemon=True)
        self._thread.start()

    def _find_kv(self, model: llama_cpp.llama_model_p, kv_type: int, unified: bool) -> KvPages | None:
        """Write cell 0 of the first streams, find the KV cache by that mark, then give all of
        its memory back (with the mark gone, every cell is free and reads as zeros again)."""
        try:
            shape = kv_shape(model, self._ctx, kv_type, unified)
        except Unavailable:
            return None
        try:
            with _LOCATING:  # one engine's mark at a time: another's cache never looks like its own
                return self._mark_and_find(shape, unified)
        except Exception:  # /proc unreadable here, say: the KV stays reserved whole
            log.exception("could not look for the KV cache's memory")
            return None

    def _mark_and_find(self, shape: KvShape, unified: bool) -> KvPages | None:
        marked = 1 if unified else min(2, len(self._slots))
        batch = self._batch
        for seq_id in range(marked):
            batch.token[seq_id] = 0
            batch.pos[seq_id] = 0
            batch.n_seq_id[seq_id] = 1
            batch.seq_id[seq_id][0] = seq_id
            batch.logits[seq_id] = seq_id == marked - 1
        batch.n_tokens = marked
        try:
            status = COMPUTE.run(self, lambda: llama_cpp.llama_decode(self._ctx, batch))
            pages = None
            if status == 0:
                # Other threads map and unmap memory meanwhile (another server's engine let go of,
                # a load): a search that found no single place is tried again, with the mark kept
                for attempt in range(_KV_SEARCHES):
                    if attempt:
                        time.sleep(0.05)
                    pages = KvPages.find(shape, marked)
                    if pages is not None:
                        break
                else:
                    log.warning("the KV cache's memory was not found: it stays reserved whole")
        finally:
            llama_cpp.llama_memory_clear(self._memory, True)
        if pages is not None:
            try:
                pages.release_all()
            except Unavailable:
                log.exception("could not give the KV cache's memory back")
                return None
        return pages

    def _trim(self, slot: Slot, first_cell: int) -> None:
        """The slot's cells from `first_cell` on hold nothing now: give back their memory, unless
        a KV copy from or to the slot is still to run (it moves whole streams)."""
        pages = self._pages
        if pages is not None and self._kv_per_slot and slot.seq_id not in self._copying:
            try:
                pages.release(slot.seq_id, first_cell)
            except Unavailable:  # the memory stays resident; the engine goes on
                log.exception("could not give KV memory back; keeping all of it from now on")
                self._pages = None
            finally:
                self._kv_changes += 1  # after: a reading taken meanwhile is not kept as the new one

    def alive(self) -> bool:
        return not self._exited and self._thread.is_alive()

    def running(self) -> int:
        return sum(1 for slot in self._slots if slot.sequence is not None)

    def waiting(self) -> int:
        return len(self._waiting) + len(self._inbox)

    def kv_tokens(self) -> int:
        """Tokens whose KV the slots hold now (a finished slot's kept prefix included). Read from
        any thread: each slot's context is replaced or grown whole, and its length read at once."""
        return sum(len(slot.context) for slot in self._slots)

    def kv_resident_bytes(self) -> int | None:
        """The KV cache's bytes in memory now; None where its memory was not found (kv_pages.py).
        Read again only after the engine wrote or gave back KV since the last reading."""
        pages, changes, known = self._pages, self._kv_changes, self._kv_resident
        if pages is None:
            return None
        if known is None or known[0] != changes:
            known = self._kv_resident = (changes, pages.resident_bytes())
        return known[1]

    def submit(self, job: Job) -> None:
        if job.candidates > len(self._slots):  # it could never start, and would hold up the queue
            raise ValueError(f"a job of {job.candidates} candidates on an engine of {len(self._slots)} slots")
        with self._signal:
            self._inbox.append(job)
            self._signal.notify()

    def cancel(self, job: Job) -> None:
        """The job's consumer left: its slots are freed at the next step."""
        job.cancelled.set()
        self.wake()

    def taken(self, job: Job, count: int) -> None:
        """The job's consumer took `count` events; a job that was paused may go on."""
        if job.taken(count):
            self.wake()

    def wake(self) -> None:
        with self._signal:
            self._woken = True
            self._signal.notify()

    def close(self) -> None:
        with self._signal:
            if self._stopping:
                return  # closed already: llama.cpp's memory must be freed once
            self._stopping = True
            self._signal.notify()
        self._thread.join()
        COMPUTE.forget(self)
        llama_cpp.llama_batch_free(self._batch)
        if self._image_batch is not None:
            llama_cpp.llama_batch_free(self._image_batch)
        llama_cpp.llama_free(self._ctx)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # the thread must not end unseen: the owner restarts the engine
            log.critical("the engine thread failed", exc_info=True)
        finally:
            self._exited = True
            try:
                self._release_all()
            except Exception:
                log.exception("could not free the slots of a failed engine")
            if not self._stopping:
                self._on_exit(self)

    def _serve(self) -> None:
        idle = False
        while self._receive(block=idle):
            self._drop_cancelled()
            self._admit()
            # With nothing to decode (no work, or every sequence paused for its reader), wait
            # for a submit, a cancel or a reader to catch up instead of spinning.
            idle = not self._decodable()
            if not idle:
                try:
                    self._step()
                except Exception as error:  # not one job's (those end alone): every running job ends
                    log.exception("decode step failed")
                    for job in _jobs(self._slots):
                        self._fail(job, error)
            self._flush()

    def _receive(self, *, block: bool) -> bool:
        """Move submitted jobs to the waiting room, first waiting for news if `block`; False: stop."""
        with self._signal:
            if block:
                self._signal.wait_for(lambda: bool(self._inbox) or self._woken or self._stopping)
            jobs, self._inbox, self._woken = self._inbox, [], False
            stopping = self._stopping
        for job in jobs:
            self._waiting.add(job)
        return not stopping

    def _decodable(self) -> bool:
        return any(
            slot.pending or (slot.sequence.next_token is not None and not slot.sequence.job.paused)
            for slot in self._slots
            if slot.sequence is not None
        )

    def _emit(self, job: Job, event: Event) -> None:
        job.emitted()
        self._outbox.append((job, event))

    def _flush(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self._deliver(batch)

    def _drop_cancelled(self) -> None:
        self._waiting.discard(lambda job: job.cancelled.is_set())
        for slot in self._slots:
            if slot.sequence is not None and slot.sequence.job.cancelled.is_set():
                self._release(slot)

    def _admit(self) -> None:
        """Start waiting jobs while the waiting room's policy finds one that fits the free slots."""
        while True:
            free = [slot for slot in self._slots if slot.sequence is None]
            job = self._waiting.take(len(free))
            if job is None:
                return
            # The slot holding most of the prompt; where none holds any, an empty one, else the
            # least recently used (so one tenant's traffic does not overwrite the KV another just made).
            primary = max(
                free, key=lambda slot: (_reusable(slot, job.prompt, job.tenant), slot.tenant is None, -slot.started)
            )
            free.remove(primary)
            siblings = free[: job.candidates - 1]
            try:
                self._start(job, primary, siblings)
            except Exception as error:  # e.g. its grammar: that job fails, the others go on
                log.exception("could not start a request")
                self._fail(job, error)
                for slot in (primary, *siblings):  # those it had not given a sequence yet too
                    self._release(slot)

    def _fail(self, job: Job, error: BaseException) -> None:
        """End one job: its consumer gets the error, its slots (every candidate) are freed, KV dropped."""
        if not isinstance(error, ApiError):  # the cause is in the log; the client gets a 500
            error = InternalError("The local engine failed while generating this answer.")
        self._emit(job, Failed(error))
        for slot in self._slots:
            if slot.sequence is not None and slot.sequence.job is job:
                self._release(slot)

    def _release_all(self) -> None:
        for slot in self._slots:
            if slot.sequence is not None:
                self._release(slot)

    def _start(self, job: Job, primary: Slot, siblings: list[Slot]) -> None:
        # Reuse the longest prefix any slot holds (this slot's last conversation, or a system
        # prompt another request shares); at least one prompt token is decoded again,
        # because sampling needs its logits.
        limit = len(job.prompt) - 1
        if job.restore is not None:
            self._restore(job, primary, siblings)
        source = max(
            (slot for slot in self._slots if slot not in siblings),
            key=lambda slot: (_reusable(slot, job.prompt, job.tenant), slot is primary),
        )
        reuse = min(_reusable(source, job.prompt, job.tenant), limit)
        if source is not primary and reuse >= MIN_SHARED_PREFIX:
            # A copy between KV streams: llama.cpp moves the cells' bookkeeping at once and
            # the data at the start of the next decode, before that decode writes anything.
            llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, -1, -1)
            self._copy(source, primary)
        elif source is not primary:
            reuse = min(_reusable(primary, job.prompt, job.tenant), limit)
        llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, reuse, -1)
        primary.context = job.prompt[:reuse]
        self._trim(primary, reuse)
        self._starts += 1
        for slot in (primary, *siblings):
            slot.tenant, slot.started = job.tenant, self._starts
        for sibling in siblings:  # its old KV is another prompt's (maybe another tenant's) until the copy
            sibling.context = []
        primary.pending = job.prompt[reuse:]
        primary.siblings = siblings
        for candidate, slot in enumerate([primary, *siblings]):
            seed = candidate_seed(job.sampling.seed, candidate)
            slot.sequence = Sequence(
                job=job,
                candidate=candidate,
                sampler=SequenceSampler(self._vocab, self._n_vocab, job.sampling, seed),
                matcher=StopMatcher(list(job.sampling.stop), exempt=job.sampling.calls),
                decoder=codecs.getincrementaldecoder("utf-8")("replace"),
                cached_tokens=reuse,
                thinking=StopMatcher([job.sampling.thinking.close_text]) if job.sampling.thinking else None,
            )

    def _copy(self, source: Slot, target: Slot) -> None:
        llama_cpp.llama_memory_seq_cp(self._memory, source.seq_id, target.seq_id, -1, -1)
        self._copying.update((source.seq_id, target.seq_id))

    def _restore(self, job: Job, primary: Slot, siblings: list[Slot]) -> None:
        """Load a cached prefix's KV into `primary`, unless some slot of the job's tenant already
        holds as much of the prompt, or a copy from or to `primary` is still pending (its data
        would move over the restored state at the next decode, or the restored state into
        another slot)."""
        assert job.restore is not None
        snapshot, prompt = job.restore, job.prompt
        gain = _common_prefix(snapshot.tokens, prompt)
        held = max(_reusable(slot, prompt, job.tenant) for slot in self._slots if slot not in siblings)
        if gain < held + MIN_SHARED_PREFIX or primary.seq_id in self._copying:
            return
        llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, -1, -1)
        primary.context = []
        self._trim(primary, 0)
        state = ctypes.cast(ctypes.c_char_p(snapshot.state), ctypes.POINTER(ctypes.c_uint8))  # no copy
        restored = llama_cpp.llama_state_seq_set_data(self._ctx, state, len(snapshot.state), primary.seq_id)
        self._kv_changes += 1
        if restored == 0:
            log.warning("a cached prefix's KV could not be restored; computing the prompt instead")
            llama_cpp.llama_memory_seq_rm(self._memory, primary.seq_id, -1, -1)
            self._trim(primary, 0)
            return
        primary.context = list(snapshot.tokens)
        primary.tenant = job.tenant

    def _snapshot(self, slot: Slot) -> None:
        """A snapshot job's prompt is in: hand over its KV state, and end the job."""
        sequence = slot.sequence
        assert sequence is not None
        size = llama_cpp.llama_state_seq_get_size(self._ctx, slot.seq_id)
        state = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(self._ctx, state, size, slot.seq_id)
        if written == 0:
            raise InternalError("The local engine could not save the cached prefix's state.")
        self._emit(sequence.job, Snapshotted(Snapshot(tuple(slot.context), ctypes.string_at(state, written))))
        self._finish(slot, "STOP")

    # ------------------------------------------------------------------ one step

    def _step(self) -> None:
        for slot in self._slots:
            if slot.pending and slot.pending[0] < 0 and slot.sequence is not None:
                self._decode_image(slot, slot.sequence.job)
        outputs, batched = self._fill_batch()
        if not batched:
            return
        status = COMPUTE.run(self, lambda: llama_cpp.llama_decode(self._ctx, self._batch))
        self._kv_changes += 1
        if status != 0:  # its pending copies stay guarded: a failed decode may not have moved them
            # The batch failed as a whole and its sequences' KV may be half written: the jobs
            # in it end, their slots start clean; the jobs that were not in it go on.
            log.error("llama_decode returned %d; failing the %d sequences in its batch", status, len(batched))
            error = InternalError(f"The local engine could not decode (llama_decode returned {status}).")
            for job in _jobs(batched):
                self._fail(job, error)
            return
        copied, self._copying = self._copying, set()  # the decode moved the copies' data first
        for seq_id in copied:  # a copy moved a whole stream: its cells past the context hold nothing
            self._trim(self._slots[seq_id], len(self._slots[seq_id].context))
        for slot, index in outputs:
            sequence = slot.sequence
            if sequence is None:
                continue  # its job failed earlier in this step
            try:
                self._sample_outputs(slot, index)
            except Exception as error:  # this job's fault alone (its sampler, grammar or text)
                log.exception("a request failed while sampling")
                self._fail(sequence.job, error)

    def _fill_batch(self) -> tuple[list[tuple[Slot, int]], list[Slot]]:
        """The next batch: (slot, batch index) whose logits are sampled, and every slot in it."""
        batch = self._batch
        outputs: list[tuple[Slot, int]] = []
        batched: list[Slot] = []

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
            if not batched or batched[-1] is not slot:
                batched.append(slot)

        batch.n_tokens = 0
        for slot in self._slots:  # one token each: running streams never wait for prompts
            sequence = slot.sequence
            if sequence is not None and sequence.next_token is not None and not sequence.job.paused:
                add(slot, sequence.next_token, True)
                sequence.next_token = None
        for slot in self._slots:  # then prompts, in chunks, with what room is left
            chunk = slot.pending[: self._n_batch - batch.n_tokens]
            if slot.sequence is not None and slot.sequence.job.images:  # up to its next image
                chunk = chunk[: next((i for i, token in enumerate(chunk) if token < 0), len(chunk))]
            slot.pending = slot.pending[len(chunk) :]
            for position, token in enumerate(chunk, start=1):
                add(slot, token, position == len(chunk) and not slot.pending)
            self.tokens_prefilled += len(chunk)
        return outputs, batched

    def _decode_image(self, slot: Slot, job: Job) -> None:
        """Decode the image rows at the head of the slot's prompt (at most a batch of them). An
        image never ends a prompt (the answer's opening follows), so no logits are wanted."""
        batch = self._image_batch
        named = job.images.get(slot.pending[0])  # the placeholder's image and row
        if batch is None or named is None:
            self._fail(job, InternalError("The local engine was given an image it has no embeddings for."))
            return
        # One run is consecutive rows of one image: the same image twice in a row starts again
        # at row 0, and a run never reads past the image's embeddings.
        row_bytes = self._n_embd * ctypes.sizeof(ctypes.c_float)
        image, first_row = named
        rows = len(image.embeddings) // row_bytes
        run = 0
        while (
            run < min(len(slot.pending), self._n_batch)
            and first_row + run < rows
            and job.images.get(slot.pending[run]) == (image, first_row + run)
        ):
            run += 1
        if run == 0:
            self._fail(job, InternalError("The local engine was given an image row it has no embeddings for."))
            return
        ctypes.memmove(
            batch.embd, image.embeddings[first_row * row_bytes : (first_row + run) * row_bytes], run * row_bytes
        )
        start = len(slot.context)
        for i in range(run):
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot.seq_id
            batch.logits[i] = False
        batch.n_tokens = run
        if image.non_causal:
            llama_cpp.llama_set_causal_attn(self._ctx, False)
        try:
            status = COMPUTE.run(self, lambda: llama_cpp.llama_decode(self._ctx, batch))
        finally:
            if image.non_causal:
                llama_cpp.llama_set_causal_attn(self._ctx, True)
        self._kv_changes += 1
        if status != 0:  # its pending copies stay guarded, as in _step
            log.error("llama_decode returned %d for an image's embeddings", status)
            self._fail(
                job, InternalError(f"The local engine could not decode an image (llama_decode returned {status}).")
            )
            return
        self._copying.clear()  # moved by the decode, before its rows
        slot.context += slot.pending[:run]
        slot.pending = slot.pending[run:]
        self.tokens_prefilled += run

    def _sample_outputs(self, slot: Slot, index: int) -> None:
        if slot.sequence is not None and slot.sequence.job.snapshot:
            self._snapshot(slot)
            return
        if slot.siblings:  # the prompt is in: the other candidates copy its KV
            for sibling in slot.siblings:
                llama_cpp.llama_memory_seq_rm(self._memory, sibling.seq_id, -1, -1)
                self._copy(slot, sibling)
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
        if sequence.matcher.stopped or sequence.sampler.complete:  # a stop sequence, or the grammar's end
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
            self._emit(sequence.job, _delta(sequence, text, logprobs))

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
            self._answer(sequence, self._end_thinking(sequence, text, after=matcher.after))
            if sequence.matcher.stopped or sequence.sampler.complete:
                self._finish(slot, "STOP")
                return
        elif text:
            self._emit(sequence.job, _delta(sequence, text, thought=True))
        self._continue(slot, sequence, token)

    def _end_thinking(self, sequence: Sequence, text: str, *, after: str = "") -> str:
        """Emit the last thought text; `after` is answer text that came with the closing tag, of
        which the answer keeps what its grammar allows (returned)."""
        text += sequence.decoder.decode(b"", final=True)
        if text.strip():
            self._emit(sequence.job, _delta(sequence, text.rstrip(), thought=True))
        sequence.thinking = None
        sequence.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        return sequence.sampler.begin_answer(after)

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
            self._emit(sequence.job, _delta(sequence, tail))
        self._emit(
            sequence.job,
            CandidateDone(sequence.candidate, reason, sequence.tokens, sequence.cached_tokens, sequence.thoughts),
        )
        self._release(slot, keep_prefix=True)

    def _release(self, slot: Slot, *, keep_prefix: bool = False) -> None:
        """Free the slot; a finished one keeps its KV for the next request's prefix."""
        if slot.sequence is not None:
            slot.sequence.sampler.free()
        slot.sequence = None
        slot.pending = []
        for sibling in slot.siblings:  # candidates that never got the prompt
            self._release(sibling)
        slot.siblings = []
        if not keep_prefix:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.context = []
            slot.tenant = None
            self._trim(slot, 0)


def _reusable(slot: Slot, prompt: list[int], tenant: str) -> int:
    """How much of `prompt` the slot's KV holds, for a job of `tenant`: nothing of another's."""
    return _common_prefix(slot.context, prompt) if slot.tenant == tenant else 0


def _common_prefix(a: list[int] | tuple[int, ...], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _jobs(slots: list[Slot]) -> list[Job]:
    """The jobs running in `slots`, each once, in slot order."""
    return list(dict.fromkeys(slot.sequence.job for slot in slots if slot.sequence is not None))


def _delta(
    sequence: Sequence, text: str, logprobs: tuple[TokenLogprob, ...] = (), *, thought: bool = False
) -> TextDelta:
    """Text of a candidate, with its token counts so far (each chunk's usage comes from them)."""
    return TextDelta(sequence.candidate, text, logprobs, thought, sequence.tokens, sequence.thoughts)
