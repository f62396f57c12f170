"""Every llama.cpp computation in this process runs on one thread.

llama.cpp's CPU backend, built with OpenMP (as llama-cpp-python builds it), keeps a team of worker
threads for each thread that calls it, and OpenMP spins at a barrier only while the process's
OpenMP threads fit the cores. A second calling thread (the embedding model's, a projector's)
pushes them past, and from then on every barrier of every step sleeps and wakes instead: measured
here, a chat model decoding at half speed for the rest of the process's life after one embedding
request. Two engines computing at once on the same cores also leave threads spinning at barriers
for one that is not running. So every engine hands its steps (a decode, an encode, an image's
encoding) to one thread: one OpenMP team in the process, and the engines take turns step by step,
each step at full speed. The hand-over costs tens of microseconds against milliseconds a step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ComputeThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openvertex-compute")
        self._thread_id: int | None = None

    def run(self, compute: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`compute(*args, **kwargs)` on the compute thread, once the steps before it are done;
        its result, or its exception, here."""
        if threading.get_ident() == self._thread_id:  # already there
            return compute(*args, **kwargs)

        def on_thread() -> T:
            self._thread_id = threading.get_ident()
            return compute(*args, **kwargs)

        return self._executor.submit(on_thread).result()


# One per process: the OpenMP team is the process's.
COMPUTE = ComputeThread()
