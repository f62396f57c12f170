"""What crosses between the event loop and the engine thread: a job, and the events it produces.

The consumer of a job's events may lag (a slow reader): the job counts the events emitted and
not yet taken, and the engine stops decoding it while that backlog is full.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from openvertex.backends.local.sampling import Sampling
from openvertex.backends.local.snapshots import Snapshot
from openvertex.backends.local.vision import ImageRows

# Events a job's consumer may leave untaken, per candidate, before its sequences pause: a
# few hundred milliseconds of tokens, so a reader that keeps up never notices.
BACKLOG_PER_CANDIDATE = 64


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
    tokens: int = 0  # the candidate's answer tokens so far
    thoughts: int = 0  # and its reasoning tokens


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


@dataclass(frozen=True, slots=True)
class Snapshotted:
    """A snapshot job's prompt is in: its KV state (then the job is done)."""

    snapshot: Snapshot


Event = TextDelta | CandidateDone | Failed | Snapshotted


@dataclass(eq=False)  # compared and hashed by identity
class Job:
    prompt: list[int]
    sampling: Sampling
    candidates: int
    tenant: str = ""  # whose prompt it is: KV is reused only within a tenant (engine.py)
    restore: Snapshot | None = None  # KV of a cached prefix, restored where no slot holds more of the prompt
    snapshot: bool = False  # prefill the prompt, answer with its KV state (Snapshotted), generate nothing
    images: ImageRows = field(default_factory=dict)  # what the prompt's placeholders name
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Events emitted and not yet taken by the consumer; the engine adds, the consumer takes.
    _backlog: int = field(default=0, repr=False)
    _backlog_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def paused(self) -> bool:
        """The consumer lags: decode nothing more for this job until it catches up."""
        return self._backlog > BACKLOG_PER_CANDIDATE * self.candidates

    def emitted(self) -> None:
        with self._backlog_lock:
            self._backlog += 1

    def taken(self, count: int) -> bool:
        """The consumer took `count` events; True when that ends a pause."""
        with self._backlog_lock:
            was_paused = self.paused
            self._backlog -= count
            return was_paused and not self.paused


Deliver = Callable[[list[tuple[Job, Event]]], None]
