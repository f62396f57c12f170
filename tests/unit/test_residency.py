"""When models load and are let go: first use, keep-alive, the memory budget (least recently used
idle ones first, never one in use), bounded waits and failed loads; with stand-in loads."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import pytest

from openvertex.backends.compute_thread import ComputeThread
from openvertex.backends.residency import Residency, Roster
from openvertex.errors import UnavailableError


class Model:
    """A stand-in model: its load takes `load_s`, it counts loads and unloads, and it is busy while
    `users` is above 0."""

    def __init__(self, name: str, size: int = 100, load_s: float = 0.0, fails: bool = False) -> None:
        self.loads = self.unloads = self.users = 0
        self.load_s, self.fails = load_s, fails
        self.residency = Residency(
            name,
            load=self._load,
            unload=self._unload,
            idle=lambda: self.users == 0,
            size=lambda: size,
            keep_alive_s=None,
            load_timeout_s=5,
        )

    async def _load(self) -> None:
        await asyncio.sleep(self.load_s)
        if self.fails:
            raise RuntimeError("no such file")
        self.loads += 1

    async def _unload(self) -> None:
        self.unloads += 1


def _roster(budget: int | None, *models: Model) -> Roster:
    roster = Roster(budget)
    for model in models:
        roster.add(model.residency.what, model.residency)
    return roster


def test_a_model_loads_once_for_the_requests_that_wait_on_it() -> None:
    async def scenario() -> None:
        model = Model("a", load_s=0.05)
        _roster(None, model)
        assert model.residency.state == "unloaded"
        await asyncio.gather(*(model.residency.use() for _ in range(5)))
        assert model.loads == 1 and model.residency.state == "loaded"

    asyncio.run(scenario())


def test_the_budget_lets_go_of_the_least_recently_used_idle_model_first() -> None:
    async def scenario() -> None:
        a, b, c = Model("a"), Model("b"), Model("c")
        _roster(250, a, b, c)
        await a.residency.use()
        await b.residency.use()
        await a.residency.use()  # a is used more recently than b now
        await c.residency.use()  # 300 > 250: one must go, the least recently used
        assert (a.residency.state, b.residency.state, c.residency.state) == ("loaded", "unloaded", "loaded")
        assert b.unloads == 1 and a.unloads == 0

    asyncio.run(scenario())


def test_a_model_in_use_is_never_let_go_even_past_the_budget() -> None:
    async def scenario() -> None:
        a, b = Model("a"), Model("b")
        _roster(150, a, b)
        await a.residency.use()
        a.users = 1  # a request holds it
        await b.residency.use()
        assert a.residency.state == b.residency.state == "loaded" and a.unloads == 0
        a.users = 0
        c = Model("c")
        _roster(150, a, b, c)
        await c.residency.use()  # now a, idle and least recently used, goes first, then b
        assert (a.residency.state, b.residency.state) == ("unloaded", "unloaded")

    asyncio.run(scenario())


def test_an_idle_model_is_let_go_after_its_keep_alive_and_loads_again_on_use() -> None:
    async def scenario() -> None:
        model = Model("a")
        model.residency.keep_alive_s = 0.05
        roster = _roster(None, model)
        await model.residency.use()
        model.users = 1
        await asyncio.sleep(0.1)
        await roster.let_go_of_idle()
        assert model.residency.state == "loaded"  # busy: its idle time has not started
        model.users = 0
        model.residency.last_used -= 1  # idle for a second
        await roster.let_go_of_idle()
        assert model.residency.state == "unloaded" and model.unloads == 1
        await model.residency.use()
        assert model.loads == 2

    asyncio.run(scenario())


def test_a_load_longer_than_the_timeout_is_a_503_and_goes_on() -> None:
    async def scenario() -> None:
        model = Model("a", load_s=0.3)
        model.residency.load_timeout_s = 0.05
        _roster(None, model)
        with pytest.raises(UnavailableError, match="still loading") as raised:
            await model.residency.use()
        assert raised.value.headers["Retry-After"] == "5"
        model.residency.load_timeout_s = 5
        await model.residency.use()  # the same load, finished
        assert model.loads == 1

    asyncio.run(scenario())


def test_a_failed_load_fails_every_use_with_its_cause() -> None:
    async def scenario() -> None:
        model = Model("a", fails=True)
        _roster(None, model)
        for _ in range(2):
            with pytest.raises(UnavailableError, match="no such file"):
                await model.residency.use()
        assert not model.residency.serving()

    asyncio.run(scenario())


def test_the_load_at_start_holds_readiness_until_it_is_done() -> None:
    async def scenario() -> None:
        model = Model("a", load_s=0.05)
        _roster(None, model)
        starting = asyncio.ensure_future(model.residency.start(load=True))
        await asyncio.sleep(0.01)
        assert not model.residency.serving()
        await starting
        assert model.residency.serving() and model.residency.state == "loaded"
        lazy = Model("b")
        await lazy.residency.start(load=False)
        assert lazy.residency.serving() and lazy.residency.state == "unloaded"

    asyncio.run(scenario())


def test_every_computation_runs_on_one_thread_whoever_asks() -> None:
    """One OpenMP team for the process: calls from several threads all run on the compute thread,
    one at a time, and each caller gets its own result or exception."""
    compute = ComputeThread()
    running = threading.Lock()
    seen: list[int] = []

    def step(value: int) -> int:
        assert running.acquire(blocking=False), "two computations at once"
        try:
            seen.append(threading.get_ident())
            time.sleep(0.01)
            if value < 0:
                raise ValueError("bad step")
            return value * 2
        finally:
            running.release()

    with ThreadPoolExecutor(max_workers=4) as callers:
        results = list(callers.map(lambda v: compute.run(f"engine {v % 2}", lambda: step(v)), range(8)))
    assert results == [v * 2 for v in range(8)]
    assert len(set(seen)) == 1 and seen[0] != threading.get_ident()
    with pytest.raises(ValueError, match="bad step"):
        compute.run("engine 0", lambda: step(-1))
    assert compute.run("a", lambda: compute.run("b", lambda: step(3))) == 6  # from the compute thread: no deadlock


def test_the_thread_goes_to_the_engine_that_used_least_of_it_and_waits_a_moment_for_one_owed_it() -> None:
    compute = ComputeThread(anticipation_s=0.003)
    compute._used = {"chat": 0.2, "embedding": 1.5}
    compute._waiting = {"chat": deque([object()]), "embedding": deque([object()])}  # type: ignore[list-item]
    assert compute.next_owner(now=10.0) == ("chat", 0.0)
    compute._waiting["chat"].clear()
    compute._finished = {"chat": 9.999}  # it stepped a millisecond ago, and is owed the thread
    owner, wait_s = compute.next_owner(now=10.0)
    assert owner is None and wait_s is not None and 0 < wait_s <= 0.003
    assert compute.next_owner(now=10.01) == ("embedding", 0.0)  # it did not come back in time
    compute._used["chat"] = 2.0  # it had its share: nobody waits for it
    assert compute.next_owner(now=10.0) == ("embedding", 0.0)
    compute._waiting["embedding"].clear()
    assert compute.next_owner(now=10.0) == (None, None)  # nothing to run: wait for a step
    compute.forget("chat")
    assert "chat" not in compute._used and "chat" not in compute._finished
