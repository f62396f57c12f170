"""The decoding thread: owns the llama.cpp model and runs generation jobs one after another.

Results cross to the event loop through `Job.emit`, which is thread-safe; a job whose
consumer went away is marked cancelled and stops at the next token.
"""

from __future__ import annotations

import codecs
import logging
import queue
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import llama_cpp
from llama_cpp.llama_grammar import LlamaGrammar

from openvertex.backends.local.stop import StopMatcher

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    max_tokens: int  # already clamped to the context left after the prompt
    stop: tuple[str, ...]
    grammar: str | None


@dataclass(frozen=True, slots=True)
class TextDelta:
    candidate: int
    text: str


@dataclass(frozen=True, slots=True)
class CandidateDone:
    candidate: int
    finish_reason: str  # Gemini FinishReason: STOP or MAX_TOKENS
    tokens: int


@dataclass(frozen=True, slots=True)
class Failed:
    error: BaseException


Event = TextDelta | CandidateDone | Failed


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    prompt: list[int]
    sampling: Sampling
    candidates: int
    emit: Callable[[Event], None]
    cancelled: threading.Event = field(default_factory=threading.Event)


def candidate_seed(seed: int | None, candidate: int) -> int:
    """Candidate i of a seeded request uses seed + i, so n > 1 gives distinct, repeatable answers."""
    if seed is None:
        return random.getrandbits(32)
    return (seed + candidate) % 2**32


class Engine:
    def __init__(self, llama: llama_cpp.Llama) -> None:
        self._llama = llama
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="openvertex-engine", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                for candidate in range(job.candidates):
                    if job.cancelled.is_set():
                        break
                    self._generate(job, candidate)
            except Exception as error:  # reported to the request, the engine carries on
                log.exception("generation failed")
                job.emit(Failed(error))

    def _generate(self, job: Job, candidate: int) -> None:
        sampling = job.sampling
        llama = self._llama
        llama.set_seed(candidate_seed(sampling.seed, candidate))
        grammar = LlamaGrammar.from_string(sampling.grammar, verbose=False) if sampling.grammar else None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        matcher = StopMatcher(list(sampling.stop))
        tokens = 0
        finish = "MAX_TOKENS"
        for token in llama.generate(
            job.prompt,
            temp=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            min_p=sampling.min_p,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            repeat_penalty=sampling.repeat_penalty,
            grammar=grammar,
        ):
            if job.cancelled.is_set():
                return
            if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                finish = "STOP"
                break
            tokens += 1
            text = matcher.feed(decoder.decode(llama.detokenize([token])))
            if text:
                job.emit(TextDelta(candidate, text))
            if matcher.stopped:
                finish = "STOP"
                break
            if tokens >= sampling.max_tokens:
                break
        tail = matcher.feed(decoder.decode(b"", final=True)) + matcher.flush()
        if tail:
            job.emit(TextDelta(candidate, tail))
        job.emit(CandidateDone(candidate, finish, tokens))
