"""The embedding thread: llama.cpp in embedding mode, batching every waiting text into one forward pass.

Requests hand over their texts as token ids; the thread takes as many waiting texts as fit in one
batch (by tokens and by sequences, first come first served), decodes them together, reads each
sequence's pooled embedding, and hands the vectors back to the event loop. While it decodes, new
texts queue up and go into the next batch, so concurrent requests share forward passes without
any of them waiting on a timer. An encoder-only model keeps no KV between batches: each sequence
attends only to itself, so what shares its batch does not change its vector.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from openvertex.backends.compute_thread import COMPUTE
from openvertex.errors import InternalError, ResourceExhaustedError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Job:
    texts: list[list[int]]
    future: asyncio.Future[list[np.ndarray]]
    loop: asyncio.AbstractEventLoop
    vectors: list[np.ndarray | None] = field(default_factory=list)
    next: int = 0  # the first text not yet taken into a batch
    done: int = 0

    def cancelled(self) -> bool:
        return self.future.done()  # cancelled (the client left), or failed in an earlier batch


class EmbeddingEngine:
    def __init__(
        self, model_path: Path, *, n_threads: int, max_batch_tokens: int, max_sequences: int, max_waiting: int
    ) -> None:
        """`max_batch_tokens` bounds one forward pass (and so one text); `max_waiting`, the texts
        queued beyond it (more: 429)."""
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {model_path}")
        context = llama_cpp.llama_context_default_params()
        context.embeddings = True
        context.n_ctx = context.n_batch = context.n_ubatch = max_batch_tokens
        context.n_seq_max = max_sequences
        context.kv_unified = True  # no per-sequence share of n_ctx: a text may use the whole batch
        context.n_threads = context.n_threads_batch = n_threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, context)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise RuntimeError("llama.cpp could not create an embedding context")
        self._memory = llama_cpp.llama_get_memory(self._ctx)  # none for an encoder-only model
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.dimensions = llama_cpp.llama_model_n_embd(self._model)
        self.cls_token = llama_cpp.llama_vocab_bos(self._vocab)
        self.sep_token = llama_cpp.llama_vocab_sep(self._vocab)
        self.max_batch_tokens = max_batch_tokens
        self._max_sequences = max_sequences
        self._max_waiting = max_waiting
        self._batch = llama_cpp.llama_batch_init(max_batch_tokens, 0, 1)
        self._queue: deque[_Job] = deque()
        self._waiting = 0  # texts queued and not yet taken into a batch
        self._signal = threading.Condition()
        self._stopping = False
        self.texts_embedded = 0
        self.tokens_read = 0
        self.batches = 0  # forward passes
        self._thread = threading.Thread(target=self._run, name="openvertex-embedding", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    def tokenize(self, text: str) -> list[int]:
        """The text's tokens, [CLS] and [SEP] around them (the vocabulary is read-only: any thread)."""
        data = text.encode()
        size = len(data) + 8
        while True:
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(self._vocab, data, len(data), buffer, size, True, False)
            if count >= 0:
                return list(buffer[:count])
            size = -count

    def piece(self, token: int) -> bytes:
        """The token's text as the model spells it."""
        buffer = ctypes.create_string_buffer(64)
        count = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, len(buffer), 0, True)
        return buffer.raw[: max(count, 0)]

    async def embed(self, texts: list[list[int]]) -> list[np.ndarray]:
        """Unit-length vectors, one per token list (each at most `max_batch_tokens` long)."""
        loop = asyncio.get_running_loop()
        job = _Job(texts, loop.create_future(), loop, [None] * len(texts))
        with self._signal:
            if self._stopping:
                raise InternalError("The embedding model is shutting down.")
            if self._waiting + len(texts) > self._max_waiting and self._queue:
                raise ResourceExhaustedError(
                    f"Too many texts are waiting to be embedded ({self._waiting}); try again shortly."
                )
            self._queue.append(job)
            self._waiting += len(texts)
            self._signal.notify()
        return await job.future

    def close(self) -> None:
        with self._signal:
            self._stopping = True
            self._signal.notify()
        self._thread.join(timeout=30)
        COMPUTE.forget(self)
        if not self._thread.is_alive():
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)

    # ------------------------------------------------------------------ the engine's thread

    def _run(self) -> None:
        while True:
            with self._signal:
                while not self._queue and not self._stopping:
                    self._signal.wait()
                if self._stopping:
                    failed, self._queue = list(self._queue), deque()
                    break
                taken = self._take()
            if taken:
                self._decode(taken)
        for job in failed:
            job.loop.call_soon_threadsafe(_fail, job.future, InternalError("The embedding model shut down."))

    def _take(self) -> list[tuple[_Job, int]]:
        """Texts for one batch, oldest first (under the lock); a cancelled job's are dropped."""
        taken: list[tuple[_Job, int]] = []
        tokens = 0
        while self._queue and len(taken) < self._max_sequences:
            job = self._queue[0]
            if job.cancelled():
                self._waiting -= len(job.texts) - job.next
                self._queue.popleft()
                continue
            size = len(job.texts[job.next])
            if taken and tokens + size > self.max_batch_tokens:
                break
            taken.append((job, job.next))
            tokens += size
            job.next += 1
            self._waiting -= 1
            if job.next == len(job.texts):
                self._queue.popleft()
        return taken

    def _decode(self, taken: list[tuple[_Job, int]]) -> None:
        batch = self._batch
        batch.n_tokens = 0
        for seq_id, (job, index) in enumerate(taken):
            tokens = job.texts[index]
            for position, token in enumerate(tokens):
                at = batch.n_tokens
                batch.token[at] = token
                batch.pos[at] = position
                batch.n_seq_id[at] = 1
                batch.seq_id[at][0] = seq_id
                batch.logits[at] = True  # pooling reads every token's output
                batch.n_tokens += 1
        if self._memory:
            llama_cpp.llama_memory_clear(self._memory, True)
        try:
            status = COMPUTE.run(
                self, lambda: llama_cpp.llama_encode(self._ctx, batch)
            )  # encoder-only: one pass, no KV
            if status != 0:
                raise InternalError(f"llama.cpp could not embed this batch (llama_encode returned {status}).")
            for seq_id, (job, index) in enumerate(taken):
                pointer = llama_cpp.llama_get_embeddings_seq(self._ctx, seq_id)
                if not pointer:
                    raise InternalError("llama.cpp gave no embedding for a text.")
                vector = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), (self.dimensions,))
                vector = vector.astype(np.float64)
                norm = float(np.linalg.norm(vector))
                job.vectors[index] = vector / norm if norm > 0 else vector
        except Exception as error:  # this batch's jobs fail; the thread goes on
            log.exception("embedding batch failed")
            failure = error if isinstance(error, InternalError) else InternalError("The embedding model failed.")
            for job in {job for job, _ in taken}:
                job.loop.call_soon_threadsafe(_fail, job.future, failure)
            return
        self.batches += 1
        self.texts_embedded += len(taken)
        self.tokens_read += batch.n_tokens
        for job, _ in taken:
            job.done += 1
            if job.done == len(job.texts):
                job.loop.call_soon_threadsafe(_finish, job.future, job.vectors)


def _finish(future: asyncio.Future[list[np.ndarray]], vectors: list[np.ndarray | None]) -> None:
    if not future.done():
        future.set_result([vector for vector in vectors if vector is not None])


def _fail(future: asyncio.Future[list[np.ndarray]], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
