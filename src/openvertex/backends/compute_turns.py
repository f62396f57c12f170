"""Engines in one process take turns on the CPU.

Within a step, llama.cpp's CPU threads wait for each other at barriers by spinning. Two engines
whose threads together outnumber the cores (each uses every core by default), computing at the
same time, leave a thread spinning for one that is not running: on two cores both slow down many
times over (a decoding chat model beside a busy embedding model). So while the engines' threads
outnumber the cores, each step of every engine (a decode, an encode) takes its turn under one
lock: the engines alternate step by step, each step at full speed. Engines whose threads fit the
cores together run at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator


class ComputeTurns:
    def __init__(self, cores: int | None = None) -> None:
        self.cores = cores or os.cpu_count() or 1
        self._lock = threading.Lock()
        self._threads: dict[int, int] = {}  # each engine's threads, by a token `join` gave it
        self._tokens = 0
        self._guard = threading.Lock()

    def join(self, threads: int) -> int:
        """An engine starts, with `threads` compute threads: its token, for `turn` and `leave`."""
        with self._guard:
            self._tokens += 1
            self._threads[self._tokens] = threads
            return self._tokens

    def leave(self, token: int) -> None:
        with self._guard:
            self._threads.pop(token, None)

    def shared(self) -> bool:
        """Whether the engines' threads outnumber the cores (the steps take turns)."""
        return sum(self._threads.values()) > self.cores

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """One step: alone on the CPU where the engines must share it."""
        if not self.shared():
            yield
            return
        with self._lock:
            yield


# The CPU is the process's: one set of turns for every engine in it.
TURNS = ComputeTurns()
