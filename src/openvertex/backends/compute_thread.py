"""Every llama.cpp computation in this process runs on one thread, shared fairly.

llama.cpp's CPU backend, built with OpenMP (as llama-cpp-python builds it), keeps a team of worker
threads for each thread that calls it, and OpenMP spins at a barrier only while the process's
OpenMP threads fit the cores. A second calling thread (the embedding model's, a projector's)
pushes them past, and from then on every barrier of every step sleeps and wakes instead: measured
here, a chat model decoding at half speed for the rest of the process's life after one embedding
request. Two engines computing at once on the same cores also leave threads spinning at barriers
for one that is not running. So every engine hands its steps (a decode, an encode, an image's
encoding) to one thread: one OpenMP team in the process, each step on every core.

The engines share that thread by the time they use (as a fair scheduler does): the next step is
the one of the engine that used least of it lately (seconds that halve every second). An engine
that steps without pause (a decoding chat model: a short step, then a millisecond of sampling,
then the next) is waited for a moment when it is owed the thread, so a neighbour's long steps (a
batch of embeddings) do not take every gap it leaves. One engine alone never waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

HALF_LIFE_S = 1.0  # how fast an engine's past use is forgotten
ANTICIPATION_S = 0.003  # how long an engine owed the thread is waited for after its last step


@dataclass(eq=False)
class _Step(Generic[T]):
    owner: Hashable
    compute: Callable[[], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: T | None = None
    error: BaseException | None = None


class ComputeThread:
    def __init__(self, *, anticipation_s: float = ANTICIPATION_S, half_life_s: float = HALF_LIFE_S) -> None:
        self._anticipation_s = anticipation_s
        self._half_life_s = half_life_s
        self._changed = threading.Condition()
        self._waiting: dict[Hashable, deque[_Step[Any]]] = {}
        self._used: dict[Hashable, float] = {}  # seconds of the thread, halving every half-life
        self._finished: dict[Hashable, float] = {}  # when each owner's last step ended
        self._decayed_at = time.monotonic()
        self._thread: threading.Thread | None = None
        self._thread_id: int | None = None

    def run(self, owner: Hashable, compute: Callable[[], T]) -> T:
        """`compute()` on the compute thread, when `owner`'s turn comes; its result, or its
        exception, here. `owner` is the engine asking (its share of the thread is counted)."""
        if threading.get_ident() == self._thread_id:  # already there
            return compute()
        step: _Step[T] = _Step(owner, compute)
        with self._changed:
            if self._thread is None:
                thread = threading.Thread(target=self._serve, name="openvertex-compute", daemon=True)
                thread.start()  # before it is kept: a thread that could not start is tried again
                self._thread = thread
            self._waiting.setdefault(owner, deque()).append(step)
            self._changed.notify()
        step.done.wait()
        if step.error is not None:
            raise step.error
        return step.result  # type: ignore[return-value]

    def forget(self, owner: Hashable) -> None:
        """`owner` is gone (an engine closed): nothing of it is kept."""
        with self._changed:
            for kept in (self._used, self._finished, self._waiting):
                kept.pop(owner, None)

    def next_owner(self, now: float) -> tuple[Hashable | None, float | None]:
        """Whose step runs next: the waiting owner that used least lately; or (None, how long to
        wait) when an owner that used less stepped just now and is likely to step again, and
        (None, None) when no step waits."""
        waiting = [owner for owner, steps in self._waiting.items() if steps]
        if not waiting:
            return None, None
        chosen = min(waiting, key=lambda owner: self._used.get(owner, 0.0))
        owed = [
            self._finished[owner] + self._anticipation_s - now
            for owner in self._finished
            if owner not in waiting
            and self._used.get(owner, 0.0) < self._used.get(chosen, 0.0)
            and now - self._finished[owner] < self._anticipation_s
        ]
        return (None, max(*owed, 1e-4)) if owed else (chosen, 0.0)

    def _serve(self) -> None:
        self._thread_id = threading.get_ident()
        while True:
            with self._changed:
                while True:
                    owner, wait_s = self.next_owner(time.monotonic())
                    if owner is not None:
                        break
                    self._changed.wait(wait_s)
                step = self._waiting[owner].popleft()
            started = time.monotonic()
            try:
                step.result = step.compute()
            except BaseException as error:  # the caller's to handle
                step.error = error
            finally:
                step.done.set()  # the caller goes on whatever happens to the bookkeeping below
            ended = time.monotonic()
            with self._changed:
                self._decay(ended)
                self._used[owner] = self._used.get(owner, 0.0) + (ended - started)
                self._finished[owner] = ended

    def _decay(self, now: float) -> None:
        factor = 0.5 ** ((now - self._decayed_at) / self._half_life_s)
        self._decayed_at = now
        for owner in list(self._used):
            self._used[owner] *= factor
            if self._used[owner] < 1e-6 and not self._waiting.get(owner):
                del self._used[owner]  # an engine gone (or long idle) is forgotten
                self._finished.pop(owner, None)
                self._waiting.pop(owner, None)


# One per process: the OpenMP team is the process's.
COMPUTE = ComputeThread()
