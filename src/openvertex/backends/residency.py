"""Which local models are in memory, and when they come and go.

A local model (a chat model with its engine, an embedding model) loads when the server starts or
on its first use, and is let go after `keep_alive_s` without a request, as Ollama's keep_alive or
llama-swap's ttl; a request for a model that is not in memory waits for its load, at most
`load_timeout_s`, then gets 503 (the load goes on). With `models_memory_bytes`, loading a model
first lets go of the least recently used idle ones until it fits. A model in use (a request
admitted, running or waiting) is never let go, so the budget can be passed while all are busy:
it says what to let go of, it never refuses a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol, runtime_checkable

from openvertex.errors import UnavailableError

log = logging.getLogger(__name__)

State = Literal["unloaded", "loading", "loaded"]


class Residency:
    """One model's place in memory, kept by the backend it belongs to: the backend says how to
    load, let go and measure the model, and whether anything uses it now."""

    def __init__(
        self,
        what: str,
        *,
        load: Callable[[], Awaitable[None]],
        unload: Callable[[], Awaitable[None]],
        idle: Callable[[], bool],
        size: Callable[[], int],
        keep_alive_s: float | None,
        load_timeout_s: float,
    ) -> None:
        """`what`: the model, for messages. `size`: its bytes in memory now (loaded), or what it is
        expected to take (not loaded: its file's size until a load measured it, `load_bytes`)."""
        self.what = what
        self._load, self._unload, self.idle, self._size = load, unload, idle, size
        self.keep_alive_s = keep_alive_s
        self.load_timeout_s = load_timeout_s
        self.roster: Roster | None = None  # where budgets and idle times are kept, once added
        self.state: State = "unloaded"
        self.last_used = time.monotonic()
        self.loads = 0
        self.load_seconds = 0.0  # the last load's
        self.load_bytes = 0  # what the last load added to the process's memory (other work runs meanwhile)
        self._loading: asyncio.Future[None] | None = None
        self._error: str | None = None  # a load that failed fails every later use: the cause is set up
        self._starting = False
        self._transition = asyncio.Lock()  # a load and a letting-go never overlap

    def serving(self) -> bool:
        """Whether requests can be served: loaded, or able to load on demand; not while the load
        at start runs (/readyz waits for it), nor after a load failed."""
        return self._error is None and not self._starting

    async def start(self, *, load: bool) -> None:
        """At the server's start: load now (`load`), or wait for the first use."""
        if not load:
            return
        self._starting = True
        try:
            loading = self._begin_load()
            if loading is not None:
                await asyncio.shield(loading)  # however long it takes: /readyz waits for it
        finally:
            self._starting = False

    def done(self) -> None:
        """A use ended: the model's idle time counts from now."""
        self.last_used = time.monotonic()

    def size(self) -> int:
        return self._size()

    def loaded(self) -> bool:
        return self.state == "loaded"

    async def use(self) -> None:
        """A request needs the model: loaded at once, or after its load (which this starts where
        none runs). Raises 503 past `load_timeout_s`, or where the load failed."""
        self.last_used = time.monotonic()
        if self.state == "loaded":
            return
        if self._error is not None:
            raise UnavailableError(f"The model could not be loaded: {self._error}")
        loading = self._begin_load()
        try:
            if loading is not None:
                await asyncio.wait_for(asyncio.shield(loading), self.load_timeout_s)
        except TimeoutError:
            raise UnavailableError(
                f"The model {self.what} is still loading (over {self.load_timeout_s:g} s); try again shortly.",
                retry_after_s=5,
            ) from None
        if not self.loaded():
            raise UnavailableError(f"The model could not be loaded: {self._error or 'it was let go'}")

    def _begin_load(self) -> asyncio.Future[None] | None:
        """The load under way, started here where none is; None once loaded or failed."""
        if self.state == "loaded" or self._error is not None:
            return None
        if self._loading is None:
            self._loading = asyncio.ensure_future(self._load_now())
        return self._loading

    async def _load_now(self) -> None:
        try:
            async with self._transition:
                if self.state == "loaded":
                    return
                self.state = "loading"  # counted by the budget from now: another load makes room for it too
                if self.roster is not None:
                    try:
                        await self.roster.make_room(self)
                    except Exception:  # another model's unload failed: this one loads all the same
                        log.exception("could not make room for %s", self.what)
                started, before = time.monotonic(), resident_memory_bytes()
                try:
                    await self._load()
                except BaseException as error:
                    self.state = "unloaded"
                    if not isinstance(error, Exception):
                        raise  # cancelled (shutting down): no cause to remember
                    self._error = str(error) or type(error).__name__
                    log.exception("could not load %s", self.what)
                    return
                self.load_bytes = max(resident_memory_bytes() - before, 0)
                self.state = "loaded"
                self.loads += 1
                self.load_seconds = time.monotonic() - started
                self.last_used = time.monotonic()
                log.info("loaded %s in %.1f s", self.what, self.load_seconds)
        finally:
            self._loading = None

    async def let_go(self, why: str) -> bool:
        """Unload the model if it is loaded and idle; whether it was let go."""
        async with self._transition:
            if self.state != "loaded" or not self.idle():
                return False
            self.state = "unloaded"
            await self._unload()
            log.info("let go of %s (%s)", self.what, why)
            return True

    def idle_for(self, now: float) -> float:
        return now - self.last_used if self.idle() else 0.0


@runtime_checkable
class Resident(Protocol):
    """A backend whose model lives in this process's memory."""

    residency: Residency


class Roster:
    """Every resident model of the process: the memory budget they share, and the clock that lets
    go of the ones idle past their keep-alive."""

    def __init__(self, budget_bytes: int | None = None) -> None:
        self.budget_bytes = budget_bytes
        self.residents: dict[str, Residency] = {}

    def add(self, name: str, residency: Residency) -> None:
        residency.roster = self
        self.residents[name] = residency

    async def make_room(self, coming: Residency) -> None:
        """Before `coming` loads: let go of idle models, least recently used first, until the
        loaded ones and it fit the budget (or none idle is left)."""
        if self.budget_bytes is None:
            return
        while True:
            held = [r for r in self.residents.values() if r is not coming and r.state != "unloaded"]
            if sum(r.size() for r in held) + coming.size() <= self.budget_bytes:
                return
            idle = sorted((r for r in held if r.loaded() and r.idle()), key=lambda r: r.last_used)
            if not idle:
                log.warning(
                    "loading %s passes models_memory_bytes: every other model is in use or loading", coming.what
                )
                return
            await idle[0].let_go(f"models_memory_bytes: {coming.what} is loading")

    async def let_go_of_idle(self) -> None:
        now = time.monotonic()
        for residency in list(self.residents.values()):
            keep_alive = residency.keep_alive_s
            if keep_alive is not None and residency.state == "loaded" and residency.idle_for(now) >= keep_alive:
                await residency.let_go(f"idle for {keep_alive:g} s")

    async def keep(self, interval_s: float = 1.0) -> None:
        """Let go of idle models as their keep-alive runs out, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.let_go_of_idle()
            except Exception:  # one model's unload failing must not stop the others'
                log.exception("could not let go of an idle model")


def resident_memory_bytes() -> int:
    """This process's resident memory (VmRSS), for what a load adds; 0 where not known."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        found = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)
        if found:
            return int(found.group(1)) * 1024
    return 0
