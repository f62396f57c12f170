"""Snapshots read back from disk are checked before they are restored (backends/local/prefixes.py):
a bit flipped inside the KV state, a file cut short, one written for another model are removed
and built again, once, and the cache answers as a cold prefill of the same prompt does."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import google.oauth2.credentials
import pytest
from google import genai
from google.genai import types

from openvertex.backends.local.snapshots import SnapshotFile
from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_local_capacity import metric
from tests.support.server import RunningServer, serve

MODEL = "gemini-2.5-flash"
VERTEX_MODEL = f"projects/test-project/locations/us-central1/publishers/google/models/{MODEL}"
SYSTEM = "Answer from the document only."
DOCUMENT = " ".join(
    f"Fact {i}: the bridge at mile {i} is made of {('oak', 'steel', 'stone')[i % 3]}." for i in range(30)
)
QUESTION = "What is the bridge at mile 5 made of?"
COMPUTED = "openvertex_prompt_tokens_computed_total"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snapshot-state")


@pytest.fixture(scope="module")
def server(state_dir: Path) -> Iterator[RunningServer]:
    # One slot, so a request in between leaves it holding something else and the next use of the
    # cache restores the snapshot; no snapshot kept in memory, so every use reads the file.
    local = LocalBackendSettings(n_parallel=1, n_ctx=2048, min_cached_content_tokens=64, cache_memory_bytes=0)
    with serve(Settings(port=0, state_dir=state_dir, backends={"local": local})) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: RunningServer) -> genai.Client:
    return genai.Client(
        vertexai=True,
        project="test-project",
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token="test"),
        http_options=types.HttpOptions(base_url=server.url),
    )


def _config(**fields: object) -> types.GenerateContentConfig:
    defaults = {"temperature": 0, "max_output_tokens": 12, "seed": 1, "response_logprobs": True}
    return types.GenerateContentConfig(**{**defaults, **fields})  # type: ignore[arg-type]


def _answer(response: types.GenerateContentResponse) -> tuple[str, list[float]]:
    """The text, and the log-probability of each token chosen: a restored KV that is off by a bit
    moves them even where the text stays the same."""
    assert response.text and response.candidates and response.candidates[0].logprobs_result
    chosen = response.candidates[0].logprobs_result.chosen_candidates or []
    return response.text, [candidate.log_probability or 0.0 for candidate in chosen]


def _same(answer: tuple[str, list[float]], cold: tuple[str, list[float]]) -> bool:
    return answer[0] == cold[0] and answer[1] == pytest.approx(cold[1], abs=1e-3)


@pytest.fixture(scope="module")
def cold(client: genai.Client) -> tuple[str, list[float]]:
    """The answer to the whole prompt computed from nothing: the server's first request."""
    contents = [types.Content(role="user", parts=[types.Part(text=text)]) for text in (DOCUMENT, QUESTION)]
    return _answer(
        client.models.generate_content(model=MODEL, contents=contents, config=_config(system_instruction=SYSTEM))
    )


@pytest.fixture(scope="module")
def cache(client: genai.Client, cold: tuple[str, list[float]]) -> str:
    made = client.caches.create(
        model=VERTEX_MODEL,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part(text=DOCUMENT)])], system_instruction=SYSTEM
        ),
    )
    assert made.name
    return made.name


def _snapshot(state_dir: Path) -> Path:
    [path] = (state_dir / "kv" / "local").glob("*.kv")
    return path


@pytest.fixture(scope="module")
def use(
    client: genai.Client, server: RunningServer, cache: str
) -> Callable[[], tuple[tuple[str, list[float]], float, int]]:
    """The cache's answer to the question, after a request that leaves the slot holding something
    else; the prompt tokens the server computed for it (the prefix too, where it was built); and
    the prompt's tokens."""

    def ask() -> tuple[tuple[str, list[float]], float, int]:
        other = client.models.generate_content(model=MODEL, contents="Say hello.", config=_config(max_output_tokens=1))
        assert other.candidates
        before = metric(server, COMPUTED)
        answer = client.models.generate_content(model=MODEL, contents=QUESTION, config=_config(cached_content=cache))
        usage = answer.usage_metadata
        assert usage is not None and usage.cached_content_token_count and usage.prompt_token_count
        return _answer(answer), metric(server, COMPUTED) - before, usage.prompt_token_count

    return ask


def _flip(path: Path) -> None:
    """4 KiB inverted in the middle of the file: inside the KV state, which is most of it."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(b ^ 0xFF for b in data[middle : middle + 4096])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _foreign(path: Path) -> None:
    """Another model's digest in the header, the checksum made to match: only the model check
    can tell (a key collision, or a file copied from another server)."""
    found = SnapshotFile.parse(path.read_bytes())
    _, projector, layout = found.digests
    path.write_bytes(
        b"".join(replace(found, digests=(hashlib.sha256(b"another model").digest(), projector, layout)).pieces())
    )


@pytest.mark.parametrize("corrupt", [_flip, _truncate, _foreign], ids=["bit-flip", "truncated", "foreign-model"])
def test_a_corrupted_snapshot_is_rebuilt_once_and_answers_as_a_cold_prefill(
    use: Callable[[], tuple[tuple[str, list[float]], float, int]],
    state_dir: Path,
    cold: tuple[str, list[float]],
    corrupt: Callable[[Path], None],
) -> None:
    answer, question, prompt = use()
    assert _same(answer, cold)
    assert question < 40  # restored: only what follows the prefix was computed
    path = _snapshot(state_dir)
    corrupt(path)
    corrupted = path.read_bytes()
    answer, computed, _ = use()
    assert _same(answer, cold)  # the damaged KV was never restored
    assert path.read_bytes() != corrupted  # built again, in its place
    assert computed == prompt  # each token computed once: the prefix by the rebuild, which the request used
    answer, computed, _ = use()
    assert _same(answer, cold)
    assert computed == question  # and the rebuilt snapshot is what the next use restores
