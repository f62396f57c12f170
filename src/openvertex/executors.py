"""Threads of their own for the heavy work a request can bring (recognising media, building
grammars), so that it never holds the threads the request path's short blocking calls run on
(asyncio's default executor: large bodies parsed, safety, key refreshes).

Each pool is bounded twice: `workers` threads, and at most `queue` jobs waiting for one. A job
past that is refused at once with a 429 that names the work, before it costs anything, rather
than piling up behind the others. The app's lifespan stops every pool at its end
(`shutdown_executors`); a job submitted afterwards starts fresh threads, as a process may run
one app after another (the tests do).
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from openvertex.errors import ResourceExhaustedError

T = TypeVar("T")
P = ParamSpec("P")

_POOLS: weakref.WeakSet[BoundedExecutor] = weakref.WeakSet()


async def outlived(running: asyncio.Future[T], *, hold: Callable[[], None], release: Callable[[], None]) -> T:
    """The result of work running on a thread, which a caller that leaves cannot stop: what the
    caller held (a place in a queue, a model in use) is then held again for the thread (`hold`)
    and given back when the thread ends (`release`), so nothing lets it go under the thread."""
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        hold()
        running.add_done_callback(lambda done: _released(done, release))
        raise


def _released(done: asyncio.Future[Any], release: Callable[[], None]) -> None:
    if not done.cancelled():
        done.exception()  # retrieved: work nobody waits for may have failed (a 400)
    release()


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BoundedExecutor:
    def __init__(self, what: str, *, workers: int, queue: int) -> None:
        """`what`: the work, as a 429 names it ("media recognitions")."""
        self.what = what
        self.workers = workers
        self.queue = queue
        self._places = threading.BoundedSemaphore(workers + queue)
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        _POOLS.add(self)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Queue `fn`, or raise the 429 when every worker is busy and the queue is full. It runs
        in the caller's context (its request's record), as asyncio.to_thread's work does."""
        if not self._places.acquire(blocking=False):
            raise ResourceExhaustedError(
                f"Resource exhausted: {self.workers + self.queue} {self.what} are running or waiting "
                f"({self.workers} at a time, {self.queue} waiting). Please try again later.",
                retry_after_s=1,
            )
        try:
            context = contextvars.copy_context()
            future = self._executor().submit(lambda: context.run(fn, *args, **kwargs))
        except BaseException:
            self._places.release()
            raise
        future.add_done_callback(self._release)
        return future

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on these threads and wait for its result (from a thread, never the event loop)."""
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Let the threads end once the jobs already taken are done; nothing waits for them."""
        with self._lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown(wait=False)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.workers, thread_name_prefix=f"openvertex {self.what}")
            return self._threads

    def _release(self, _: Future[Any]) -> None:
        self._places.release()


def shutdown_executors() -> None:
    """Stop every pool's threads (the app's lifespan, at its end)."""
    for pool in list(_POOLS):
        pool.shutdown()
