"""Context caches on the embedded model, through google-genai: the cached prefix's KV is computed
once, kept (memory and disk), restored for each request that names the cache, and found again
after a restart."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import google.oauth2.credentials
import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from openvertex.backends.local import prefixes
from openvertex.settings import LocalBackendSettings, ModelRoute, Settings
from tests.integration.test_local_capacity import metric
from tests.support.server import RunningServer, serve

MODEL = "gemini-2.5-flash"
VERTEX_MODEL = f"projects/test-project/locations/us-central1/publishers/google/models/{MODEL}"
DOCUMENT = " ".join(
    f"Fact {i}: the lighthouse on island {i} is painted {('red', 'blue', 'green')[i % 3]}." for i in range(40)
)
COMPUTED = "openvertex_prompt_tokens_computed_total"


def _settings(state_dir: Path) -> Settings:
    local = LocalBackendSettings(n_parallel=2, n_ctx=2048, min_cached_content_tokens=64)
    return Settings(port=0, state_dir=state_dir, backends={"local": local}, cache_sweep_interval_s=0.2)


def _client(server: RunningServer, *, gemini: bool = False, express: bool = False) -> genai.Client:
    options = types.HttpOptions(base_url=server.url)
    if gemini:
        return genai.Client(api_key="test", http_options=options)
    if express:  # Vertex with an API key and no project
        return genai.Client(vertexai=True, api_key="test", http_options=options)
    token = google.oauth2.credentials.Credentials(token="test")
    return genai.Client(
        vertexai=True, project="test-project", location="us-central1", credentials=token, http_options=options
    )


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-state")


@pytest.fixture(scope="module")
def server(state_dir: Path) -> Iterator[RunningServer]:
    with serve(_settings(state_dir)) as running:
        yield running


def _cache(client: genai.Client, model: str, document: str = DOCUMENT, **config: object) -> types.CachedContent:
    return client.caches.create(
        model=model,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part(text=document)])],
            system_instruction="Answer from the document only.",
            display_name="lighthouses",
            **config,  # type: ignore[arg-type]
        ),
    )


def _ask(client: genai.Client, model: str, cache: str) -> types.GenerateContentResponse:
    config = types.GenerateContentConfig(cached_content=cache, max_output_tokens=16, seed=3)
    return client.models.generate_content(model=model, contents="What colour is lighthouse 7?", config=config)


def test_cache_lifecycle_and_use(server: RunningServer) -> None:
    client = _client(server)
    cache = _cache(client, VERTEX_MODEL)
    assert cache.name and cache.name.startswith("projects/test-project/locations/us-central1/cachedContents/")
    assert cache.display_name == "lighthouses" and cache.model == VERTEX_MODEL
    assert cache.usage_metadata and (cache.usage_metadata.total_token_count or 0) > 300
    assert cache.expire_time and cache.create_time
    assert 3590 < (cache.expire_time - cache.create_time).total_seconds() <= 3600  # one hour by default

    assert client.caches.get(name=cache.name).name == cache.name
    assert cache.name in [c.name for c in client.caches.list(config=types.ListCachedContentsConfig(page_size=1))]
    updated = client.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="600s"))
    assert updated.expire_time and updated.update_time
    assert 590 < (updated.expire_time - updated.update_time).total_seconds() <= 600

    before = metric(server, COMPUTED)
    response = _ask(client, MODEL, cache.name)
    assert response.text is not None
    usage = response.usage_metadata
    assert usage is not None and usage.cached_content_token_count == cache.usage_metadata.total_token_count
    assert usage.prompt_token_count and usage.prompt_token_count > usage.cached_content_token_count
    # Only the question was computed: the document's KV was reused.
    assert metric(server, COMPUTED) - before < usage.prompt_token_count - usage.cached_content_token_count + 8

    client.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as gone:
        client.caches.get(name=cache.name)
    assert gone.value.code == 404


def test_cache_rules(server: RunningServer) -> None:
    client = _client(server)
    cache = _cache(client, VERTEX_MODEL)
    assert cache.name
    with pytest.raises(errors.ClientError) as conflict:
        client.models.generate_content(
            model=MODEL,
            contents="hi",
            config=types.GenerateContentConfig(cached_content=cache.name, system_instruction="Be brief."),
        )
    assert conflict.value.code == 400 and "should not be set in the request when using cached content" in str(
        conflict.value.message
    )
    with pytest.raises(errors.ClientError) as unknown:
        _ask(client, MODEL, "projects/test-project/locations/us-central1/cachedContents/123")
    assert unknown.value.code == 404
    with pytest.raises(errors.ClientError) as small:
        client.caches.create(model=VERTEX_MODEL, config=types.CreateCachedContentConfig(contents=["just a few words"]))
    assert small.value.code == 400 and "The minimum token count to start caching is 64" in str(small.value.message)
    with pytest.raises(errors.ClientError) as malformed:
        client.caches.create(
            model="projects/p/locations/l/models/x", config=types.CreateCachedContentConfig(contents=[DOCUMENT])
        )
    assert malformed.value.code == 400
    client.caches.delete(name=cache.name)


def test_gemini_api_caches(server: RunningServer) -> None:
    client = _client(server, gemini=True)
    cache = _cache(client, MODEL)
    assert cache.name and cache.name.startswith("cachedContents/") and cache.model == f"models/{MODEL}"
    response = _ask(client, MODEL, cache.name)
    assert response.usage_metadata and response.usage_metadata.cached_content_token_count
    client.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as gone:
        _ask(client, MODEL, cache.name)
    assert gone.value.code == 403  # the Gemini API does not say whether it exists


def test_express_mode_caches(server: RunningServer) -> None:
    # The SDK creates at the root, then names the cache projects/None/locations/None/cachedContents/…
    # to get, use and delete it.
    client = _client(server, express=True)
    cache = _cache(client, MODEL)
    assert cache.name and cache.name.startswith("cachedContents/")
    assert client.caches.get(name=cache.name).name == cache.name
    response = _ask(client, MODEL, cache.name)
    assert response.usage_metadata and response.usage_metadata.cached_content_token_count
    client.caches.delete(name=cache.name)
    with pytest.raises(errors.ClientError) as gone:
        client.caches.get(name=cache.name)
    assert gone.value.code == 404


def test_the_openai_surface_uses_caches_too(server: RunningServer) -> None:
    cache = _cache(_client(server), VERTEX_MODEL)
    sdk = openai.OpenAI(base_url=server.sdk_base_url, api_key="test", max_retries=0)
    completion = sdk.chat.completions.create(
        model=f"google/{MODEL}",
        messages=[{"role": "user", "content": "What colour is lighthouse 4?"}],
        max_tokens=8,
        extra_body={"extra_body": {"google": {"cached_content": cache.name}}},
    )
    assert completion.usage and completion.usage.prompt_tokens_details
    assert completion.usage.prompt_tokens_details.cached_tokens == cache.usage_metadata.total_token_count  # type: ignore[union-attr]


def test_expired_caches_are_refused_and_removed(server: RunningServer, state_dir: Path) -> None:
    client = _client(server)
    kv = state_dir / "kv" / "local"
    before = set(kv.glob("*.kv"))
    cache = _cache(client, VERTEX_MODEL, "Short-lived. " + DOCUMENT, ttl="1s")  # a prefix no other cache shares
    assert cache.name
    assert set(kv.glob("*.kv")) - before
    time.sleep(1.5)
    with pytest.raises(errors.ClientError) as expired:
        client.caches.get(name=cache.name)
    assert expired.value.code == 404
    deadline = time.monotonic() + 10
    while set(kv.glob("*.kv")) - before and time.monotonic() < deadline:
        time.sleep(0.1)  # the sweep lets go of its KV
    assert set(kv.glob("*.kv")) == before


def test_a_cache_survives_a_restart(tmp_path: Path) -> None:
    with serve(_settings(tmp_path)) as first:
        cache = _cache(_client(first), VERTEX_MODEL)
    assert cache.name and cache.usage_metadata
    with serve(_settings(tmp_path)) as second:
        client = _client(second)
        assert client.caches.get(name=cache.name).name == cache.name
        response = _ask(client, MODEL, cache.name)
        usage = response.usage_metadata
        assert usage is not None and usage.cached_content_token_count == cache.usage_metadata.total_token_count
        # The prefix's KV came from disk: the new process computed little more than the question.
        computed = metric(second, COMPUTED)
        assert computed < (usage.prompt_token_count or 0) - usage.cached_content_token_count + 8
        listed = httpx.get(
            f"{second.url}/v1beta1/projects/test-project/locations/us-central1/cachedContents",
            headers={"authorization": "Bearer test"},
        ).json()
        assert [c["name"] for c in listed["cachedContents"]] == [cache.name]


def test_a_restart_with_another_layout_rebuilds_the_prefix(tmp_path: Path) -> None:
    """A snapshot restores only into a context with as many KV streams: with another n_parallel the
    prefix is computed again, the cache still answers, and the snapshot of the old layout (which
    this server can never restore) is gone."""
    with serve(_settings(tmp_path)) as first:
        cache = _cache(_client(first), VERTEX_MODEL)
    assert cache.name and cache.usage_metadata
    [old] = (tmp_path / "kv" / "local").glob("*.kv")
    wider = _settings(tmp_path)
    wider.backends["local"] = LocalBackendSettings(n_parallel=3, n_ctx=2048, min_cached_content_tokens=64)
    with serve(wider) as second:
        response = _ask(_client(second), MODEL, cache.name)
        usage = response.usage_metadata
        assert usage is not None and usage.cached_content_token_count == cache.usage_metadata.total_token_count
        assert metric(second, COMPUTED) >= cache.usage_metadata.total_token_count  # computed anew
    [new] = (tmp_path / "kv" / "local").glob("*.kv")
    assert new != old


def test_a_restart_with_a_quantised_shared_kv_cache_rebuilds_the_prefix_and_answers(tmp_path: Path) -> None:
    """The KV's number type and pool are part of the layout too: a snapshot of f16 KV in a stream
    per slot is never restored into q8_0 KV in a shared pool (it is rebuilt there), and a seeded
    request on that server is answered."""
    settings = _settings(tmp_path)
    f16 = LocalBackendSettings(n_parallel=2, n_ctx=2048, min_cached_content_tokens=64, flash_attention="on")
    settings.backends["local"] = f16
    with serve(settings) as first:
        cache = _cache(_client(first), VERTEX_MODEL)
    assert cache.name and cache.usage_metadata
    [old] = (tmp_path / "kv" / "local").glob("*.kv")
    settings.backends["local"] = f16.model_copy(update={"kv_type": "q8_0", "kv_unified": True})
    with serve(settings) as second:
        client = _client(second)
        response = _ask(client, MODEL, cache.name)
        usage = response.usage_metadata
        assert usage is not None and usage.cached_content_token_count == cache.usage_metadata.total_token_count
        assert metric(second, COMPUTED) >= cache.usage_metadata.total_token_count  # computed anew
        seeded = types.GenerateContentConfig(max_output_tokens=16, seed=5, temperature=0.8)
        answer = client.models.generate_content(model=MODEL, contents="Name a colour.", config=seeded)
    [new] = (tmp_path / "kv" / "local").glob("*.kv")
    assert new != old
    assert answer.text and answer.candidates and answer.candidates[0].finish_reason in ("STOP", "MAX_TOKENS")


def _wait_for(condition: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not callable(condition) or not condition():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.1)


def test_every_replica_lets_go_of_a_deleted_or_expired_caches_kv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas on one database (here one SQLite file; PostgreSQL in production), each with
    its own KV directory: a cache deleted on one, or expired and swept there, loses its snapshot
    on the other too, at that one's next sweep. And a scratch file a crash left is gone at start."""
    monkeypatch.setattr(prefixes, "GRACE_S", 0.5)  # how long a cache being made is kept without a row
    first = _settings(tmp_path)
    second = _settings(tmp_path)
    second.backends = {"replica": first.backends["local"]}
    second.routes = [ModelRoute(model="google/*", backend="replica")]
    kv, other_kv = tmp_path / "kv" / "local", tmp_path / "kv" / "replica"
    other_kv.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    crashed = other_kv / f".{'0' * 64}.kv.{int(dead.stdout)}.0123abcd"
    crashed.write_bytes(b"half a snapshot")
    with serve(first) as one, serve(second) as two:
        _wait_for(lambda: not crashed.exists())
        on_one, on_two = _client(one), _client(two)
        deleted = _cache(on_one, VERTEX_MODEL, "Deleted. " + DOCUMENT)
        expiring = _cache(on_one, VERTEX_MODEL, "Expiring. " + DOCUMENT)
        kept = _cache(on_one, VERTEX_MODEL, "Kept. " + DOCUMENT)
        for cache in (deleted, expiring, kept):
            assert cache.name
            _ask(on_two, MODEL, cache.name)  # the second replica builds and keeps its own snapshot
        assert len(list(kv.glob("*.kv"))) == len(list(other_kv.glob("*.kv"))) == 3
        assert deleted.name and expiring.name
        on_one.caches.update(name=expiring.name, config=types.UpdateCachedContentConfig(ttl="1s"))
        on_one.caches.delete(name=deleted.name)
        assert len(list(kv.glob("*.kv"))) == 2  # at once where it was deleted
        _wait_for(lambda: len(list(kv.glob("*.kv"))) == 1)  # expired, and swept by either replica
        _wait_for(lambda: len(list(other_kv.glob("*.kv"))) == 1)  # and on the other, at its sweep
        assert kept.name
        _ask(on_two, MODEL, kept.name)
        assert os.listdir(other_kv / "names") == os.listdir(kv / "names")  # one record each: the kept cache's
