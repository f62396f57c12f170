"""How a request's work is stopped early: one task cancelled for one reason (its client hung up, its
deadline passed), told apart afterwards from any other cancellation of the same task.

A cancelled task raises CancelledError where it waits, through the `finally` blocks of what it
awaits (a backend's generator frees its engine sequences there). `Interrupt.claims()` then says
whether that CancelledError was this interrupt's alone, so the caller can raise the reason's own
error (499 CANCELLED, 504 DEADLINE_EXCEEDED) and let any other cancellation (shutdown) go on.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class Interrupt:
    """Cancels the task that made it when fired while armed; fired while disarmed, it only marks
    itself, and the task checks `fired` at its next safe point."""

    def __init__(self, *, armed: bool = True) -> None:
        task = asyncio.current_task()
        assert task is not None, "an Interrupt is made inside a task"
        self._task = task
        self.armed = armed
        self.fired = False
        self._cancelled = False  # this interrupt cancelled the task, not yet claimed

    def arm(self) -> None:
        """Cancel the task that runs now, if fired from here on."""
        task = asyncio.current_task()
        assert task is not None, "an Interrupt is armed inside a task"
        self._task, self.armed = task, True

    def fire(self) -> None:
        if self.fired:
            return
        self.fired = True
        if self.armed:
            self._cancelled = True
            self._task.cancel()

    def claims(self) -> bool:
        """After a CancelledError in the task: whether it was this interrupt's, and only its."""
        if not self._cancelled:
            return False
        self._cancelled = False
        return self._task.uncancel() == 0

    def release(self) -> None:
        """The work ended without seeing the cancellation (it swallowed it, or failed otherwise):
        take it back, so that it does not land on whatever the task does next."""
        if self._cancelled:
            self._cancelled = False
            self._task.uncancel()


class Deadline:
    """A whole answer's or stream's time limit: one timer, which cancels the task only while it waits
    inside `wait()` (for the backend or a stage), never while the consumer of a stream has a chunk."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._interrupt = Interrupt(armed=False)
        self._timer = asyncio.get_running_loop().call_later(timeout_s, self._interrupt.fire)

    @property
    def passed(self) -> bool:
        return self._interrupt.fired

    async def wait(self, work: Awaitable[T]) -> T:
        """`work`'s result; TimeoutError when the deadline passes first (or had passed)."""
        if self._interrupt.fired:
            if inspect.iscoroutine(work):
                work.close()  # never started: not left for the garbage collector to warn about
            raise TimeoutError
        self._interrupt.arm()  # whichever task waits: a stream may be pulled by more than one
        try:
            return await work
        except asyncio.CancelledError:
            if self._interrupt.claims():
                raise TimeoutError from None
            raise
        finally:
            self._interrupt.armed = False

    def cancel(self) -> None:
        self._timer.cancel()
        self._interrupt.release()
