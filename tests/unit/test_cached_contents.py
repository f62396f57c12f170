"""Context caches (service/cached_contents.py) over a real SQLite database, a FakeBackend and a clock we move."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from openvertex.protocol import generate_content as gc
from openvertex.service.cached_contents import (
    DEFAULT_TTL_S,
    MAX_PAGE_SIZE,
    AppliedCache,
    CachedContents,
)
from openvertex.service.routing import Router
from openvertex.settings import ModelRoute
from openvertex.store.cached_contents import CachedContentRow, CachedContentStore
from openvertex.store.database import DATABASE_FILE, MIGRATIONS, SqliteDatabase
from openvertex.translate.native import format_time
from openvertex.translate.resources import ModelName, parse_model_name

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
PARENT = "projects/p/locations/l"
VERTEX_MODEL = f"{PARENT}/publishers/google/models/gemini-2.5-flash"
GEMINI_MODEL = "models/gemini-2.5-flash"
VERTEX_NAME = re.compile(rf"{PARENT}/cachedContents/[1-9]\d{{18}}")
GEMINI_NAME = re.compile(r"cachedContents/[1-9]\d{18}")
NOT_FOUND_GEMINI = "CachedContent not found (or permission denied)"

SYSTEM = "You answer in one word."  # 5 words
CONTENTS: list[dict[str, Any]] = [
    {"role": "user", "parts": [{"text": "The quick brown fox jumps over the lazy dog"}]},  # 9 words
    {"role": "model", "parts": [{"text": "Noted."}]},  # 1 word
]
WORDS = 15  # FakeBackend counts one token per word, system instruction included
TOOLS: list[dict[str, Any]] = [{"functionDeclarations": [{"name": "get_weather", "description": "Weather."}]}]
TOOL_CONFIG: dict[str, Any] = {"functionCallingConfig": {"mode": "AUTO"}}
OUTPUT_KEYS = {"name", "displayName", "model", "createTime", "updateTime", "expireTime", "usageMetadata"}


@dataclasses.dataclass
class Clock:
    now: float = START

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Env:
    caches: CachedContents
    fake: FakeBackend
    clock: Clock
    database: SqliteDatabase
    store: CachedContentStore


Make = Callable[..., Env]


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Make]:
    opened: list[SqliteDatabase] = []

    def build(fake: FakeBackend | None = None, *, path: Path | None = None, clock: Clock | None = None) -> Env:
        database = SqliteDatabase(path or tmp_path / DATABASE_FILE)
        database.open()
        opened.append(database)
        fake = fake or FakeBackend()
        router = Router(backends={"local": fake}, routes=[ModelRoute(model="google/*", backend="local")])
        store = CachedContentStore(database)
        clock = clock or Clock()
        return Env(CachedContents(store, router, clock=clock), fake, clock, database, store)

    yield build
    for database in opened:
        database.close()


@pytest.fixture
def env(make: Make) -> Env:
    return make()


def _body(model: str | None = VERTEX_MODEL, **fields: Any) -> gc.CachedContent:
    body: dict[str, Any] = {
        "model": model,
        "displayName": "fox",
        "contents": CONTENTS,
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "tools": TOOLS,
        "toolConfig": TOOL_CONFIG,
        **fields,
    }
    return gc.CachedContent.model_validate({k: v for k, v in body.items() if v is not None})


def _create(env: Env, dialect: gc.Dialect = "vertex", **fields: Any) -> gc.CachedContent:
    parent, model = (PARENT, VERTEX_MODEL) if dialect == "vertex" else ("", GEMINI_MODEL)
    return asyncio.run(env.caches.create(parent, _body(fields.pop("model", model), **fields), dialect))


def _name(cache: gc.CachedContent) -> str:
    assert cache.name is not None
    return cache.name


def _at(offset: float) -> str:
    return format_time(START + offset)


def _invalid(work: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        asyncio.run(work)
    assert caught.value.http_status == 400
    return caught.value


# ---------------------------------------------------------------------------------------------- create


def test_format_time_is_rfc3339_utc() -> None:
    assert format_time(START) == "2023-11-14T22:13:20.000000Z"
    assert format_time(START + 0.5) == "2023-11-14T22:13:20.500000Z"


def test_create_on_vertex(env: Env) -> None:
    cache = _create(env)
    assert VERTEX_NAME.fullmatch(_name(cache))
    assert cache.model == VERTEX_MODEL
    assert cache.display_name == "fox"
    assert cache.create_time == cache.update_time == "2023-11-14T22:13:20.000000Z"
    assert cache.expire_time == _at(DEFAULT_TTL_S) == "2023-11-14T23:13:20.000000Z"
    assert cache.usage_metadata == gc.CachedContentUsage(total_token_count=WORDS)


def test_create_on_gemini(env: Env) -> None:
    cache = _create(env, "gemini")
    assert GEMINI_NAME.fullmatch(_name(cache))
    assert cache.model == GEMINI_MODEL
    assert cache.expire_time == _at(3600)
    assert cache.usage_metadata is not None and cache.usage_metadata.total_token_count == WORDS


def test_each_cache_has_its_own_name(env: Env) -> None:
    names = {_name(_create(env)) for _ in range(5)}
    assert len(names) == 5


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.5-flash",
        "google/gemini-2.5-flash",
        "projects/p/locations/l/endpoints/123",  # an endpoint names no publisher model
        "projects/p/publishers/google/models/gemini-2.5-flash",
        None,
    ],
)
def test_vertex_needs_the_full_model_name(env: Env, model: str | None) -> None:
    error = _invalid(env.caches.create(PARENT, _body(model), "vertex"))
    assert "malformed" in error.message
    assert "projects/{project}/locations/{location}/publishers/google/models/{model}" in error.message
    assert error.param == "model"


@pytest.mark.parametrize("model", ["gemini-2.5-flash", "models/", None])
def test_gemini_needs_a_models_name(env: Env, model: str | None) -> None:
    error = _invalid(env.caches.create("", _body(model), "gemini"))
    assert "malformed" in error.message and "models/{model}" in error.message


def test_a_model_no_route_serves_is_not_found(env: Env) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        asyncio.run(env.caches.create(PARENT, _body(f"{PARENT}/publishers/meta/models/llama-3"), "vertex"))
    with pytest.raises(InvalidArgumentError, match="malformed"):  # caches hold publisher models only
        asyncio.run(env.caches.create("", _body("endpoints/123"), "gemini"))
    with pytest.raises(InvalidArgumentError, match="malformed"):  # Vertex wants its own form
        asyncio.run(env.caches.create(PARENT, _body("models/gemini-2.5-flash"), "vertex"))
    assert env.fake.prefixes == {}


def test_the_default_expiry_is_an_hour_after_creation(env: Env) -> None:
    env.clock.now = START + 42.25
    cache = _create(env)
    assert cache.create_time == _at(42.25)
    assert cache.expire_time == _at(42.25 + 3600)


@pytest.mark.parametrize(("ttl", "seconds"), [("600s", 600), ("1.5s", 1.5), (" 86400s ", 86400), ("0.000001s", 1e-6)])
def test_ttl_is_honoured(env: Env, ttl: str, seconds: float) -> None:
    assert _create(env, ttl=ttl).expire_time == _at(seconds)


@pytest.mark.parametrize(
    ("expire_time", "expected"),
    [
        ("2023-11-15T00:00:00Z", "2023-11-15T00:00:00.000000Z"),
        ("2023-11-15T00:00:00.25Z", "2023-11-15T00:00:00.250000Z"),
        ("2023-11-15T01:00:00+01:00", "2023-11-15T00:00:00.000000Z"),
        ("2023-11-15T00:00:00", "2023-11-15T00:00:00.000000Z"),  # no offset: UTC
    ],
)
def test_expire_time_is_honoured(env: Env, expire_time: str, expected: str) -> None:
    cache = _create(env, expireTime=expire_time)
    assert cache.expire_time == expected
    assert asyncio.run(env.caches.get(_name(cache), "vertex")).expire_time == expected


def test_ttl_and_expire_time_together_are_refused(env: Env) -> None:
    error = _invalid(env.caches.create(PARENT, _body(ttl="600s", expireTime="2023-11-15T00:00:00Z"), "vertex"))
    assert "not both" in error.message
    assert env.fake.prefixes == {}


@pytest.mark.parametrize("ttl", ["0s", "0.0s", "abc", "600", "-5s", "s", "", "1e3s", "10m", "1.0000000001s"])
def test_a_bad_ttl_is_refused(env: Env, ttl: str) -> None:
    assert _invalid(env.caches.create(PARENT, _body(ttl=ttl), "vertex")).param == "ttl"


@pytest.mark.parametrize("expire_time", ["2023-11-14T22:13:20Z", "2020-01-01T00:00:00Z", "tomorrow"])
def test_an_expire_time_not_in_the_future_or_not_a_time_is_refused(env: Env, expire_time: str) -> None:
    assert _invalid(env.caches.create(PARENT, _body(expireTime=expire_time), "vertex")).param == "expire_time"


def test_a_ttl_past_the_largest_timestamp_is_a_400(env: Env) -> None:
    _invalid(env.caches.create(PARENT, _body(ttl="999999999999s"), "vertex"))


def test_a_ttl_past_the_largest_timestamp_leaves_the_list_working(env: Env) -> None:
    kept = _name(_create(env))
    with pytest.raises(InvalidArgumentError):
        asyncio.run(env.caches.create(PARENT, _body(ttl="999999999999s"), "vertex"))
    listed = asyncio.run(env.caches.page(PARENT, page_size=None, page_token=None))
    assert [c.name for c in listed.cached_contents] == [kept]


def test_the_resource_never_shows_its_input(env: Env) -> None:
    cache = _create(env, ttl="600s")
    assert set(cache.to_json_dict()) == OUTPUT_KEYS
    fetched = asyncio.run(env.caches.get(_name(cache), "vertex"))
    assert set(fetched.to_json_dict()) == OUTPUT_KEYS
    for shown in (cache, fetched):
        assert shown.contents is None and shown.system_instruction is None and shown.tools is None
        assert shown.tool_config is None and shown.ttl is None


def test_the_token_count_is_the_backends(env: Env) -> None:
    assert _create(env).usage_metadata == gc.CachedContentUsage(total_token_count=WORDS)
    body = gc.CachedContent(model=VERTEX_MODEL, contents=[gc.Content(role="user", parts=[gc.Part(text="a b c")])])
    cache = asyncio.run(env.caches.create(PARENT, body, "vertex"))
    assert cache.usage_metadata == gc.CachedContentUsage(total_token_count=3)
    assert set(cache.to_json_dict()) == OUTPUT_KEYS - {"displayName"}


def _small_fake() -> FakeBackend:
    return FakeBackend(capabilities=dataclasses.replace(FakeBackend().capabilities, min_cached_content_tokens=100))


def test_too_small_on_vertex(make: Make) -> None:
    env = make(_small_fake())
    error = _invalid(env.caches.create(PARENT, _body(), "vertex"))
    assert error.message == f"The cached content is of {WORDS} tokens. The minimum token count to start caching is 100."
    assert env.fake.prefixes == {}
    assert asyncio.run(env.caches.page(PARENT, page_size=None, page_token=None)).cached_contents == []


def test_too_small_on_gemini(make: Make) -> None:
    env = make(_small_fake())
    error = _invalid(env.caches.create("", _body(GEMINI_MODEL), "gemini"))
    assert error.message == f"Cached content is too small. total_token_count={WORDS}, min_total_token_count=100"


def test_exactly_the_minimum_is_enough(make: Make) -> None:
    fake = FakeBackend(capabilities=dataclasses.replace(FakeBackend().capabilities, min_cached_content_tokens=WORDS))
    assert _create(make(fake)).usage_metadata == gc.CachedContentUsage(total_token_count=WORDS)


def test_an_encryption_spec_is_refused(env: Env) -> None:
    body = _body(encryptionSpec={"kmsKeyName": "projects/p/locations/l/keyRings/r/cryptoKeys/k"})
    error = _invalid(env.caches.create(PARENT, body, "vertex"))
    assert error.param == "encryption_spec"
    assert env.fake.prefixes == {}


def test_what_the_backend_cannot_honour_is_refused(make: Make) -> None:
    fake = FakeBackend(capabilities=dataclasses.replace(FakeBackend().capabilities, function_calling=False))
    error = _invalid(make(fake).caches.create(PARENT, _body(), "vertex"))
    assert error.param == "tools[0].functionDeclarations"


def test_a_backend_without_context_caching_refuses_a_cache(make: Make) -> None:
    fake = FakeBackend(capabilities=dataclasses.replace(FakeBackend().capabilities, cached_content=False))
    _invalid(make(fake).caches.create(PARENT, _body(), "vertex"))


def test_the_backend_is_told_the_caches_content_on_create(env: Env) -> None:
    name = _name(_create(env))
    assert env.fake.prefixes == {
        name: gc.GenerateContentRequest.model_validate(
            {
                "contents": CONTENTS,
                "systemInstruction": {"parts": [{"text": SYSTEM}]},
                "tools": TOOLS,
                "toolConfig": TOOL_CONFIG,
            }
        )
    }


# ---------------------------------------------------------------------------------------------- get, update, delete


def test_get_returns_what_create_returned(env: Env) -> None:
    cache = _create(env)
    env.clock.now += 100
    assert asyncio.run(env.caches.get(_name(cache), "vertex")) == cache


UNKNOWN_VERTEX = f"{PARENT}/cachedContents/1234567890123456789"
UNKNOWN_GEMINI = "cachedContents/1234567890123456789"


def _operations(env: Env, name: str, dialect: gc.Dialect) -> list[Any]:
    return [
        lambda: env.caches.get(name, dialect),
        lambda: env.caches.update(name, gc.CachedContent(ttl="60s"), dialect),
        lambda: env.caches.delete(name, dialect),
    ]


def test_unknown_caches_are_not_found_on_vertex(env: Env) -> None:
    for operation in _operations(env, UNKNOWN_VERTEX, "vertex"):
        with pytest.raises(NotFoundError) as caught:
            asyncio.run(operation())
        assert caught.value.message == "Not found: cached content metadata for 1234567890123456789."
        assert caught.value.http_status == 404


def test_unknown_caches_are_permission_denied_on_gemini(env: Env) -> None:
    for operation in _operations(env, UNKNOWN_GEMINI, "gemini"):
        with pytest.raises(PermissionDeniedError) as caught:
            asyncio.run(operation())
        assert NOT_FOUND_GEMINI in caught.value.message
        assert caught.value.http_status == 403


def test_a_cache_is_found_only_by_its_full_name(env: Env) -> None:
    name = _name(_create(env))
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.get(name.removeprefix(f"{PARENT}/"), "vertex"))
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.get(f"projects/other/locations/l/{name.partition('/cachedContents/')[1]}", "vertex"))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"displayName": "renamed"}, "display_name"),
        ({"displayName": "renamed", "ttl": "60s"}, "display_name"),
        ({"model": VERTEX_MODEL, "ttl": "60s"}, "model"),
        ({"contents": CONTENTS}, "contents"),
    ],
)
def test_only_the_expiry_can_be_updated(env: Env, fields: dict[str, Any], named: str) -> None:
    cache = _create(env)
    body = gc.CachedContent.model_validate(fields)
    error = _invalid(env.caches.update(_name(cache), body, "vertex"))
    assert error.message.startswith("Only expire_time or ttl can be updated")
    assert named in error.message
    assert asyncio.run(env.caches.get(_name(cache), "vertex")) == cache


def test_an_update_must_set_the_expiry(env: Env) -> None:
    cache = _create(env)
    error = _invalid(env.caches.update(_name(cache), gc.CachedContent(), "vertex"))
    assert error.param == "ttl"
    error = _invalid(env.caches.update(_name(cache), gc.CachedContent(name=_name(cache)), "vertex"))
    assert error.param == "ttl"


def test_an_update_with_ttl_and_expire_time_is_refused(env: Env) -> None:
    cache = _create(env)
    body = gc.CachedContent(ttl="60s", expire_time="2023-11-15T00:00:00Z")
    assert "not both" in _invalid(env.caches.update(_name(cache), body, "vertex")).message


def test_update_moves_the_expiry_and_the_update_time(env: Env) -> None:
    cache = _create(env)
    env.clock.now = START + 10
    updated = asyncio.run(env.caches.update(_name(cache), gc.CachedContent(ttl="100s"), "vertex"))
    assert updated.create_time == _at(0)
    assert updated.update_time == _at(10)
    assert updated.expire_time == _at(110)
    assert updated.usage_metadata == cache.usage_metadata and updated.display_name == cache.display_name
    assert asyncio.run(env.caches.get(_name(cache), "vertex")) == updated
    env.clock.now = START + 20
    later = gc.CachedContent(expire_time="2023-11-16T00:00:00Z")
    again = asyncio.run(env.caches.update(_name(cache), later, "vertex"))
    assert again.update_time == _at(20)
    assert again.expire_time == "2023-11-16T00:00:00.000000Z"


def test_update_may_shorten_the_life_and_then_it_expires(env: Env) -> None:
    name = _name(_create(env))
    asyncio.run(env.caches.update(name, gc.CachedContent(ttl="5s"), "vertex"))
    env.clock.now = START + 5
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.get(name, "vertex"))


def test_delete_then_get_is_not_found(env: Env) -> None:
    keep = _name(_create(env))
    name = _name(_create(env))
    assert name in env.fake.prefixes
    asyncio.run(env.caches.delete(name, "vertex"))
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.get(name, "vertex"))
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.delete(name, "vertex"))
    assert name not in env.fake.prefixes
    assert keep in env.fake.prefixes
    assert asyncio.run(env.caches.get(keep, "vertex")).name == keep


def test_delete_on_gemini(env: Env) -> None:
    name = _name(_create(env, "gemini"))
    asyncio.run(env.caches.delete(name, "gemini"))
    with pytest.raises(PermissionDeniedError, match=re.escape(NOT_FOUND_GEMINI)):
        asyncio.run(env.caches.get(name, "gemini"))
    assert env.fake.prefixes == {}


# ---------------------------------------------------------------------------------------------- expiry


def test_an_expired_cache_is_gone_and_swept(env: Env) -> None:
    expiring = _name(_create(env, ttl="60s"))
    living = _name(_create(env))
    env.clock.now = START + 59.5
    assert asyncio.run(env.caches.get(expiring, "vertex")).name == expiring
    assert asyncio.run(env.caches.sweep()) == 0
    env.clock.now = START + 60  # expired at its expire time exactly
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.get(expiring, "vertex"))
    with pytest.raises(NotFoundError):
        asyncio.run(env.caches.update(expiring, gc.CachedContent(ttl="600s"), "vertex"))
    listed = asyncio.run(env.caches.page(PARENT, page_size=None, page_token=None))
    assert [c.name for c in listed.cached_contents] == [living]
    assert expiring in env.fake.prefixes  # until the sweep
    assert asyncio.run(env.caches.sweep()) == 1
    assert expiring not in env.fake.prefixes
    assert living in env.fake.prefixes
    assert asyncio.run(env.caches.sweep()) == 0
    row = env.database.call(lambda db: db.execute("SELECT name FROM cached_contents").fetchall())
    assert row == [(living,)]


def test_an_expired_cache_is_gone_on_gemini_too(env: Env) -> None:
    name = _name(_create(env, "gemini", ttl="1s"))
    env.clock.now = START + 2
    with pytest.raises(PermissionDeniedError):
        asyncio.run(env.caches.get(name, "gemini"))
    assert asyncio.run(env.caches.sweep()) == 1
    assert env.fake.prefixes == {}


class _Witness(FakeBackend):
    """A backend that notes, when it is told to let go of a cache's KV, whether the cache's row
    is still there (so a failure between the two leaves no KV that nothing will free)."""

    def __init__(self, store: CachedContentStore) -> None:
        super().__init__()
        self.store = store
        self.row_there: dict[str, bool] = {}
        self.fail = False

    async def forget_prefix(
        self, name: str, request: gc.GenerateContentRequest, *, model: str, owner: str | None
    ) -> None:
        rows = await self.store.live([name], now=0.0)  # now=0: expired or not, still a row
        self.row_there[name] = name in rows
        if self.fail:
            raise OSError("disk gone")
        await super().forget_prefix(name, request, model=model, owner=owner)


def _witnessed(make: Make, tmp_path: Path) -> Env:
    env = make()
    witness = _Witness(env.store)
    return make(witness, path=tmp_path / DATABASE_FILE, clock=env.clock)


def test_the_kv_goes_before_the_row_when_a_cache_expires_or_is_deleted(make: Make, tmp_path: Path) -> None:
    env = _witnessed(make, tmp_path)
    expiring, deleted = _name(_create(env, ttl="60s")), _name(_create(env))
    asyncio.run(env.caches.delete(deleted, "vertex"))
    env.clock.now = START + 60
    assert asyncio.run(env.caches.sweep()) == 1
    assert isinstance(env.fake, _Witness)
    assert env.fake.row_there == {deleted: True, expiring: True}
    assert env.fake.prefixes == {}
    assert env.database.call(lambda db: db.execute("SELECT COUNT(*) FROM cached_contents").fetchone()) == (0,)


def test_a_backend_that_cannot_let_go_does_not_keep_an_expired_cache(make: Make, tmp_path: Path) -> None:
    env = _witnessed(make, tmp_path)
    assert isinstance(env.fake, _Witness)
    env.fake.fail = True
    name = _name(_create(env, ttl="60s"))
    env.clock.now = START + 60
    assert asyncio.run(env.caches.sweep()) == 1
    assert env.fake.row_there == {name: True}
    assert env.database.call(lambda db: db.execute("SELECT COUNT(*) FROM cached_contents").fetchone()) == (0,)
    assert env.fake.prefixes == {}  # the backend's own sweep, in the same pass, let go of it


def test_every_replica_lets_go_of_the_kv_of_caches_another_deleted_or_swept(make: Make, tmp_path: Path) -> None:
    """Two replicas, one database: what the second keeps for caches the first deleted or swept
    goes at the second's next sweep, and what it keeps for a live cache stays."""
    shared = tmp_path / "shared.db"
    first = make(path=shared)
    second = make(path=shared, clock=first.clock)
    deleted, expiring, living = _name(_create(first)), _name(_create(first, ttl="60s")), _name(_create(first))
    for name in (deleted, expiring, living):
        _apply(second, _question(cachedContent=name))  # used on the second replica: it keeps the KV
    assert set(second.fake.prefixes) == {deleted, expiring, living}
    asyncio.run(first.caches.delete(deleted, "vertex"))
    first.clock.now = START + 60
    assert asyncio.run(first.caches.sweep()) == 1
    assert set(first.fake.prefixes) == {living}
    assert set(second.fake.prefixes) == {deleted, expiring, living}  # until its own sweep
    assert asyncio.run(second.caches.sweep()) == 0
    assert set(second.fake.prefixes) == {living}


# ---------------------------------------------------------------------------------------------- list


def _all_pages(env: Env, parent: str, size: int) -> list[gc.ListCachedContentsResponse]:
    pages = [asyncio.run(env.caches.page(parent, page_size=size, page_token=None))]
    while pages[-1].next_page_token is not None:
        pages.append(asyncio.run(env.caches.page(parent, page_size=size, page_token=pages[-1].next_page_token)))
        assert len(pages) < 10
    return pages


@pytest.mark.parametrize("tick", [1.0, 0.0])  # 0: all made at once, ordered by name
def test_pages_cover_every_cache_once(env: Env, tick: float) -> None:
    names = []
    for _ in range(5):
        names.append(_name(_create(env)))
        env.clock.now += tick
    _create(env, "gemini")  # another parent
    pages = _all_pages(env, PARENT, 2)
    assert [len(p.cached_contents) for p in pages] == [2, 2, 1]
    assert pages[0].next_page_token is not None and pages[1].next_page_token is not None
    assert pages[2].next_page_token is None
    listed = [c.name for p in pages for c in p.cached_contents]
    assert sorted(listed) == sorted(names)
    assert len(set(listed)) == 5
    if tick:
        assert listed == names  # oldest first
    else:
        assert listed == sorted(names)
    for page in pages:
        for cache in page.cached_contents:
            assert set(cache.to_json_dict()) == OUTPUT_KEYS


def test_an_exact_multiple_of_the_page_size_ends_without_an_empty_page(env: Env) -> None:
    for _ in range(4):
        _create(env)
    pages = _all_pages(env, PARENT, 2)
    assert [len(p.cached_contents) for p in pages] == [2, 2]


def test_the_gemini_root_lists_its_own(env: Env) -> None:
    mine = _name(_create(env, "gemini"))
    _create(env)
    listed = asyncio.run(env.caches.page("", page_size=None, page_token=None))
    assert [c.name for c in listed.cached_contents] == [mine]
    assert listed.next_page_token is None
    assert asyncio.run(env.caches.page("projects/x/locations/y", page_size=10, page_token=None)).cached_contents == []


def _token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "!!!!",
        "a",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        _token(5),
        _token("ab"),
        _token([1, 2, 3]),
        _token([None, "x"]),
        _token({"a": 1, "b": 2}),
        _token([[1], "x"]),
    ],
)
def test_a_garbage_page_token_is_refused(env: Env, token: str) -> None:
    _create(env)
    error = _invalid(env.caches.page(PARENT, page_size=2, page_token=token))
    assert error.param == "page_token"


def _insert_many(env: Env, count: int) -> None:
    rows = [
        (
            f"{PARENT}/cachedContents/{10**18 + i}",
            PARENT,
            VERTEX_MODEL,
            None,
            "{}",
            1,
            START + i,
            START,
            START + 10**6,
            None,
        )
        for i in range(count)
    ]
    insert = "INSERT INTO cached_contents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    env.database.call(lambda db: db.executemany(insert, rows))


def test_page_sizes_are_coerced_to_the_maximum_and_default(env: Env) -> None:
    _insert_many(env, MAX_PAGE_SIZE + 3)
    page = asyncio.run(env.caches.page(PARENT, page_size=5000, page_token=None))
    assert len(page.cached_contents) == MAX_PAGE_SIZE
    assert page.next_page_token is not None
    rest = asyncio.run(env.caches.page(PARENT, page_size=5000, page_token=page.next_page_token))
    assert len(rest.cached_contents) == 3 and rest.next_page_token is None
    for size in (None, 0):
        default = asyncio.run(env.caches.page(PARENT, page_size=size, page_token=None))
        assert len(default.cached_contents) == 100 and default.next_page_token is not None


def test_a_negative_page_size_is_refused(env: Env) -> None:
    assert _invalid(env.caches.page(PARENT, page_size=-1, page_token=None)).param == "page_size"


# ---------------------------------------------------------------------------------------------- apply


def _question(**fields: Any) -> gc.GenerateContentRequest:
    body = {"contents": [{"role": "user", "parts": [{"text": "Which animal?"}]}], **fields}
    return gc.GenerateContentRequest.model_validate(body)


def _model(name: str = VERTEX_MODEL) -> ModelName:
    parsed = parse_model_name(name)
    assert parsed is not None
    return parsed


def _apply(env: Env, request: gc.GenerateContentRequest, dialect: gc.Dialect = "vertex", **kw: Any) -> AppliedCache:
    return asyncio.run(env.caches.apply(request, kw.get("model", _model()), env.fake, dialect))


def test_apply_puts_the_cache_in_front(env: Env) -> None:
    name = _name(_create(env))
    env.fake.prefixes.clear()
    request = _question(cachedContent=name, generationConfig={"temperature": 0.5})
    applied = _apply(env, request)
    assert applied.tokens == WORDS
    merged = applied.request
    expected_contents = [gc.Content.model_validate(c) for c in CONTENTS] + request.contents
    assert merged.contents == expected_contents
    assert merged.system_instruction == gc.Content.model_validate({"parts": [{"text": SYSTEM}]})
    assert merged.tools == [gc.Tool.model_validate(t) for t in TOOLS]
    assert merged.tool_config == gc.ToolConfig.model_validate(TOOL_CONFIG)
    assert merged.generation_config == request.generation_config
    assert merged.cached_content == name
    assert request.contents == _question().contents  # the caller's request is left as it was
    assert request.system_instruction is None and request.tools is None
    # The backend is told about the cache again before each use (it may have lost the KV).
    assert env.fake.prefixes == {
        name: gc.GenerateContentRequest(
            contents=expected_contents[:2],
            system_instruction=merged.system_instruction,
            tools=merged.tools,
            tool_config=merged.tool_config,
        )
    }


def test_apply_on_gemini(env: Env) -> None:
    name = _name(_create(env, "gemini"))
    applied = _apply(env, _question(cachedContent=name), "gemini", model=_model(GEMINI_MODEL))
    assert applied.tokens == WORDS
    assert len(applied.request.contents) == 3


def test_a_cache_made_on_one_surface_serves_the_others_name_of_the_model(env: Env) -> None:
    name = _name(_create(env))  # projects/…/publishers/google/models/gemini-2.5-flash
    applied = _apply(env, _question(cachedContent=name), model=_model("publishers/google/models/gemini-2.5-flash"))
    assert applied.tokens == WORDS


def test_a_cache_without_tools_leaves_the_request_without_them(env: Env) -> None:
    body = gc.CachedContent(model=VERTEX_MODEL, contents=[gc.Content(role="user", parts=[gc.Part(text="one two")])])
    name = _name(asyncio.run(env.caches.create(PARENT, body, "vertex")))
    merged = _apply(env, _question(cachedContent=name)).request
    assert merged.system_instruction is None and merged.tools is None and merged.tool_config is None
    assert [c.parts[0].text for c in merged.contents] == ["one two", "Which animal?"]


VERTEX_CONFLICT = (
    "Tool config, tools and system instruction should not be set in the request when using cached content."
)
GEMINI_CONFLICT = (
    "CachedContent can not be used with GenerateContent request setting system_instruction, tools or tool_config."
)


@pytest.mark.parametrize(
    "fields",
    [
        {"systemInstruction": {"parts": [{"text": "Be kind."}]}},
        {"tools": [{"functionDeclarations": [{"name": "other"}]}]},
        {"toolConfig": {"functionCallingConfig": {"mode": "NONE"}}},
    ],
    ids=["system_instruction", "tools", "tool_config"],
)
@pytest.mark.parametrize(("dialect", "text"), [("vertex", VERTEX_CONFLICT), ("gemini", GEMINI_CONFLICT)])
def test_a_request_may_not_set_what_the_cache_holds(
    env: Env, fields: dict[str, Any], dialect: gc.Dialect, text: str
) -> None:
    name = _name(_create(env, dialect))
    model = _model(VERTEX_MODEL if dialect == "vertex" else GEMINI_MODEL)
    request = _question(cachedContent=name, **fields)
    error = _invalid(env.caches.apply(request, model, env.fake, dialect))
    assert error.message == text


def test_a_different_model_is_refused(env: Env) -> None:
    name = _name(_create(env))
    other = _model(f"{PARENT}/publishers/google/models/gemini-2.5-pro")
    error = _invalid(env.caches.apply(_question(cachedContent=name), other, env.fake, "vertex"))
    assert "has to be the same" in error.message
    assert other.resource in error.message and VERTEX_MODEL in error.message


@pytest.mark.parametrize(("dialect", "error"), [("vertex", NotFoundError), ("gemini", PermissionDeniedError)])
def test_applying_an_unknown_or_expired_cache_is_not_found(
    env: Env, dialect: gc.Dialect, error: type[Exception]
) -> None:
    model = _model(VERTEX_MODEL if dialect == "vertex" else GEMINI_MODEL)
    unknown = UNKNOWN_VERTEX if dialect == "vertex" else UNKNOWN_GEMINI
    with pytest.raises(error):
        asyncio.run(env.caches.apply(_question(cachedContent=unknown), model, env.fake, dialect))
    name = _name(_create(env, dialect, ttl="10s"))
    env.clock.now = START + 11
    with pytest.raises(error):
        asyncio.run(env.caches.apply(_question(cachedContent=name), model, env.fake, dialect))


# ---------------------------------------------------------------------------------------------- the database


def _user_version(database: SqliteDatabase) -> int:
    version: int = database.call(lambda db: db.execute("PRAGMA user_version").fetchone()[0])
    return version


def test_the_store_survives_reopening(make: Make, tmp_path: Path) -> None:
    env = make()
    cache = _create(env, ttl="600s")
    assert _user_version(env.database) == len(MIGRATIONS)
    env.database.close()
    reopened = make(clock=env.clock)  # the same file: the migrations are not applied again
    assert _user_version(reopened.database) == len(MIGRATIONS)
    assert asyncio.run(reopened.caches.get(_name(cache), "vertex")) == cache
    assert [
        c.name for c in asyncio.run(reopened.caches.page(PARENT, page_size=10, page_token=None)).cached_contents
    ] == [cache.name]
    applied = _apply(reopened, _question(cachedContent=_name(cache)))
    assert applied.tokens == WORDS and len(applied.request.contents) == 3
    assert (tmp_path / DATABASE_FILE).is_file()


def test_a_database_from_a_newer_openvertex_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state" / DATABASE_FILE
    database = SqliteDatabase(path)
    database.open()  # also makes the directory
    database.close()
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    connection.close()
    with pytest.raises(RuntimeError, match="newer than this openvertex knows"):
        SqliteDatabase(path).open()


def test_a_failed_transaction_leaves_nothing(env: Env) -> None:
    row = CachedContentRow(f"{PARENT}/cachedContents/1", PARENT, VERTEX_MODEL, None, "{}", 1, START, START, START + 60)

    def fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO cached_contents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", dataclasses.astuple(row))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        env.database.call(fail)
    assert asyncio.run(env.store.get(row.name, owner=None, now=START)) is None
    asyncio.run(env.store.insert(row))
    assert asyncio.run(env.store.get(row.name, owner=None, now=START)) == row
    assert asyncio.run(env.store.get(row.name, owner=None, now=START + 60)) is None
