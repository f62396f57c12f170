"""Heavy work on threads of its own: media recognitions and grammar builds run on bounded pools,
so six audio clips at once leave the quota and usage work (on the database's threads) and the
default worker threads free, and what is past a pool's queue is a 429 at once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from openvertex.backends.local.grammar import GRAMMAR_BUILDS, GrammarCompiler, GrammarLimits
from openvertex.backends.local.media_text import RECOGNISERS, MediaText
from openvertex.errors import ResourceExhaustedError
from openvertex.executors import BoundedExecutor
from openvertex.store.database import DATABASE_FILE, SqliteDatabase
from openvertex.store.usage import UsageRow, UsageStore

CLIPS = 6


def test_a_full_pool_refuses_at_once_and_takes_work_again_once_free() -> None:
    pool = BoundedExecutor("test jobs", workers=1, queue=1)
    release = threading.Event()
    try:
        taken = [pool.submit(release.wait), pool.submit(release.wait)]
        with pytest.raises(
            ResourceExhaustedError, match=r"2 test jobs are running or waiting \(1 at a time, 1 waiting\)"
        ):
            pool.submit(release.wait)
        release.set()
        assert [future.result(timeout=30) for future in taken] == [True, True]
        assert pool.call(lambda: "again") == "again"
    finally:
        release.set()
        pool.shutdown()


def test_six_clips_at_once_leave_the_quota_work_and_the_default_threads_free(tmp_path: Path) -> None:
    """Each clip is described on a default worker thread, as a request's planning is; the
    recogniser is held busy until the end. Meanwhile usage is written and a default worker thread
    runs a job: both finish while every admitted clip still waits."""
    media = MediaText()
    release = threading.Event()
    heard: list[str] = []

    def transcribe(mime: str, data: bytes, *, param: str) -> str:
        heard.append(threading.current_thread().name)
        release.wait(60)
        return f"[{data.decode()}]"

    media._audio = transcribe  # type: ignore[method-assign]  # the recogniser, held busy
    database = SqliteDatabase(tmp_path / DATABASE_FILE)
    database.open()

    async def scenario() -> tuple[list[str | BaseException], list[UsageRow]]:
        clips = [
            asyncio.ensure_future(asyncio.to_thread(media.describe, "audio/wav", f"clip {i}".encode(), param="c"))
            for i in range(CLIPS)
        ]
        admitted = RECOGNISERS.workers + RECOGNISERS.queue
        refused = await asyncio.wait_for(_settled(clips, CLIPS - admitted), timeout=60)
        assert all(isinstance(clip.exception(), ResourceExhaustedError) for clip in refused)
        # The quota and usage work, and a default worker thread, while the admitted clips wait.
        store = UsageStore(database)
        await asyncio.wait_for(store.add([UsageRow("k", "m", 1, 1, 2, 3)]), timeout=60)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=60) == "free"
        assert not release.is_set() and sum(not clip.done() for clip in clips) == admitted
        release.set()
        results = await asyncio.gather(*clips, return_exceptions=True)
        return [r if isinstance(r, BaseException) else str(r) for r in results], await asyncio.to_thread(
            store.totals, since_minute=0
        )

    try:
        results, usage = asyncio.run(scenario())
    finally:
        release.set()
        database.close()
    described = [r for r in results if isinstance(r, str)]
    assert len(described) == RECOGNISERS.workers + RECOGNISERS.queue
    assert all(text.startswith("[clip ") for text in described)
    assert heard and all(name.startswith("openvertex media recognitions") for name in heard)
    assert usage == [UsageRow("k", "m", 1, 1, 2, 3)]


async def _settled(futures: list[asyncio.Future[str]], count: int) -> list[asyncio.Future[str]]:
    """The first `count` futures to finish, once they have."""
    while len(done := [f for f in futures if f.done()]) < count:
        await asyncio.sleep(0.01)
    return done


def test_grammars_are_built_on_the_grammar_builders_threads(model: LlamaModel, monkeypatch: pytest.MonkeyPatch) -> None:
    eog = [t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(model.vocab, t)]
    compiler = GrammarCompiler(model.vocab, eog, GrammarLimits())
    built_on: list[str] = []
    build = GrammarCompiler._build

    def recording(self: GrammarCompiler, grammar: str, param: str, source: str) -> object:
        built_on.append(threading.current_thread().name)
        return build(self, grammar, param, source)

    monkeypatch.setattr(GrammarCompiler, "_build", recording)
    assert compiler.response("application/json", {"type": "object"}, param="p") is not None
    assert compiler.response("application/json", {"type": "object"}, param="p") is not None  # cached: not built again
    assert len(built_on) == 1 and built_on[0].startswith(f"openvertex {GRAMMAR_BUILDS.what}")
