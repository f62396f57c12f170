"""Who gets the engine's free slots next: the waiting room's admission policy.

Jobs start in arrival order, each once there are free slots for all its candidates. A job
that does not fit yet (an `n=8` request while a few slots are busy) must neither freeze the
queue behind it nor be starved by the small jobs that go past it: later jobs that fit may
start ahead of it, but only a bounded number of times; after that nothing starts until it
has, so the slots that free up are kept for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class Demand(Protocol):
    @property
    def candidates(self) -> int:
        """Slots the job needs at once: one per candidate."""
        ...


J = TypeVar("J", bound=Demand)


class WaitingRoom(Generic[J]):
    """Jobs submitted but not started, and the order in which they get slots."""

    def __init__(self, *, max_bypasses: int) -> None:
        self._jobs: deque[J] = deque()
        self._max_bypasses = max_bypasses
        self._head: J | None = None  # the head job the bypass count is about
        self._bypasses = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def __iter__(self) -> Iterator[J]:
        return iter(self._jobs)

    def add(self, job: J) -> None:
        self._jobs.append(job)

    def discard(self, leaving: Callable[[J], bool]) -> None:
        """Forget the jobs for which `leaving` is true (their clients went away)."""
        self._jobs = deque(job for job in self._jobs if not leaving(job))

    def take(self, free: int) -> J | None:
        """The job to start now on `free` slots, removed from the room; None: none may start."""
        if not self._jobs:
            return None
        head = self._jobs[0]
        if head is not self._head:  # a new head: its own count of jobs let past
            self._head, self._bypasses = head, 0
        if head.candidates <= free:
            return self._jobs.popleft()
        if self._bypasses >= self._max_bypasses:
            return None  # hold the free slots for the head
        job = next((job for job in self._jobs if job.candidates <= free), None)
        if job is not None:
            self._jobs.remove(job)
            self._bypasses += 1
        return job
