"""Backpressure on the real engine: a reader that stops taking events pauses its own sequence
(it keeps its slot, generates nothing more) and resumes when it reads again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from openvertex.backends.local.backend import LocalBackend
from openvertex.backends.local.jobs import BACKLOG_PER_CANDIDATE
from openvertex.protocol import generate_content as gc
from openvertex.settings import LocalBackendSettings
from tests.integration.test_local_capacity import ENDLESS

SCHEMA = ENDLESS["response_format"]["json_schema"]["schema"]  # type: ignore[index]


async def settled_tokens(backend: LocalBackend, *, above: int, timeout_s: float = 60) -> int:
    """Tokens generated once the count is past `above` and stops moving (half a second unchanged)."""
    loop = asyncio.get_running_loop()
    deadline, readings = loop.time() + timeout_s, [-1]
    while readings[-1] <= above or len(set(readings[-6:])) > 1:
        assert loop.time() < deadline, f"generation never paused: {readings[-1]} tokens"
        await asyncio.sleep(0.1)
        readings.append(backend.load().tokens_generated)
    return readings[-1]


async def slow_reader() -> None:
    backend = LocalBackend(LocalBackendSettings(n_parallel=1, n_ctx=1024, n_threads=1))
    await backend.start()
    config = gc.GenerationConfig(
        response_mime_type="application/json", response_json_schema=SCHEMA, max_output_tokens=900
    )
    request = gc.GenerateContentRequest(
        contents=[gc.Content(role="user", parts=[gc.Part(text="Numbers please.")])], generation_config=config
    )
    stream: AsyncGenerator[gc.GenerateContentResponse, None] = backend.stream(request, model="local")
    try:
        await anext(stream)
        # The backlog fills, then nothing more: far from the 900 tokens asked for.
        paused = await settled_tokens(backend, above=BACKLOG_PER_CANDIDATE)
        assert paused < 3 * BACKLOG_PER_CANDIDATE
        assert backend.load().running == 1  # paused in its slot, not dropped
        for _ in range(3):  # the first read takes the whole backlog, merged into one chunk
            await anext(stream)
        await settled_tokens(backend, above=paused)  # reading again resumed it
    finally:
        await stream.aclose()
        await backend.close()


def test_a_slow_reader_pauses_its_own_sequence() -> None:
    asyncio.run(slow_reader())
