"""Context caches (cachedContents) with Vertex's rules; metadata in the store, KV with the backend.

A cache holds the start of a conversation (contents, systemInstruction, tools, toolConfig)
for one model. A request that names it gets those prepended, may not set them itself, and
reports the cached part as `cachedContentTokenCount`. The backend is told about each cache
when it is made and before each use (`Backend.cache_prefix`), so the local engine keeps the
prefix's KV and rebuilds it when it lost it (a restart, an eviction). A cache deleted or expired
lets go of its KV before its row goes, so a failure in between leaves nothing behind; and every
replica's sweep lets go of the KV of caches that another replica deleted or swept.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

from openvertex.backends.base import Backend
from openvertex.errors import (
    ApiError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    unsupported,
)
from openvertex.protocol import generate_content as gc
from openvertex.request_record import current_record
from openvertex.service.capabilities import check_capabilities, native_name
from openvertex.service.keys import check_model
from openvertex.service.media import MediaReader
from openvertex.service.routing import Router
from openvertex.store.cached_contents import CachedContentRow, CachedContentStore
from openvertex.translate.native import format_time
from openvertex.translate.resources import ModelName, parent_of, parse_model_name, without_unset_parent

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 3600.0  # Vertex's and the Gemini API's default
MAX_PAGE_SIZE = 1000  # larger page sizes are coerced to this
DEFAULT_PAGE_SIZE = 100
LATEST_TIME = 253402300799.0  # 9999-12-31T23:59:59Z, the last instant a Timestamp can hold
_DURATION = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)s")
_VERTEX_MODEL_FORM = "projects/{project}/locations/{location}/publishers/google/models/{model}"


def _parse_time(value: str, *, param: str) -> float:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgumentError(f"not an RFC 3339 timestamp: {value!r}", param=param) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _parse_ttl(value: str) -> float:
    match = _DURATION.fullmatch(value.strip())
    if match is None or float(match[1]) <= 0:
        raise InvalidArgumentError(
            f'must be a positive duration in seconds, such as "3600s"; got {value!r}', param="ttl"
        )
    return float(match[1])


def _expiry(body: gc.CachedContent, now: float) -> float | None:
    """When a cache made or updated with `body` expires (None: the body sets neither)."""
    if body.ttl is not None and body.expire_time is not None:
        raise InvalidArgumentError("set ttl or expire_time, not both", param="ttl")
    param = "ttl" if body.ttl is not None else "expire_time"
    if body.ttl is not None:
        expire = now + _parse_ttl(body.ttl)
    elif body.expire_time is not None:
        expire = _parse_time(body.expire_time, param=param)
        if expire <= now:
            raise InvalidArgumentError("must be in the future", param=param)
    else:
        return None
    if expire > LATEST_TIME:
        raise InvalidArgumentError("the cache would expire after 9999-12-31T23:59:59Z", param=param)
    return expire


def _not_found(name: str, dialect: gc.Dialect) -> ApiError:
    if dialect == "gemini":  # the Gemini API does not say whether it exists
        return PermissionDeniedError("CachedContent not found (or permission denied)")
    return NotFoundError(f"Not found: cached content metadata for {name.rpartition('/')[2]}.")


def _conflict(dialect: gc.Dialect) -> InvalidArgumentError:
    if dialect == "gemini":
        return InvalidArgumentError(
            "CachedContent can not be used with GenerateContent request setting "
            "system_instruction, tools or tool_config."
        )
    return InvalidArgumentError(
        "Tool config, tools and system instruction should not be set in the request when using cached content."
    )


def _too_small(tokens: int, minimum: int, dialect: gc.Dialect) -> InvalidArgumentError:
    if dialect == "gemini":
        return InvalidArgumentError(
            f"Cached content is too small. total_token_count={tokens}, min_total_token_count={minimum}"
        )
    return InvalidArgumentError(
        f"The cached content is of {tokens} tokens. The minimum token count to start caching is {minimum}."
    )


def _page_token(row: CachedContentRow) -> str:
    return base64.urlsafe_b64encode(f"{row.create_time!r}|{row.name}".encode()).decode()


def _parse_page_token(token: str) -> tuple[float, str]:
    try:
        created, bar, name = base64.urlsafe_b64decode(token.encode()[:1024]).decode().partition("|")
        if bar and name:
            return float(created), name
    except (ValueError, UnicodeDecodeError, binascii.Error):
        pass
    raise InvalidArgumentError("not a page token from an earlier list call", param="page_token")


@dataclass(frozen=True, slots=True)
class AppliedCache:
    request: gc.GenerateContentRequest  # the request with the cache's content in front
    tokens: int  # what the cache holds, as counted when it was made


class CachedContents:
    def __init__(
        self,
        store: CachedContentStore,
        router: Router,
        *,
        max_caches: int = 10_000,
        clock: Callable[[], float] = time.time,
        media: MediaReader | None = None,
    ) -> None:
        self._store = store
        self._router = router
        self._media = media  # a cache's gs:// URIs name only allowed buckets, as a request's do
        self._max_caches = max_caches
        self._clock = clock

    # ------------------------------------------------------------------ the resource

    def _model(self, name: str | None, dialect: gc.Dialect) -> tuple[ModelName, Backend]:
        model = parse_model_name(name) if name else None
        if model is None or model.publisher is None or (dialect == "vertex" and model.resource.startswith("models/")):
            form = _VERTEX_MODEL_FORM if dialect == "vertex" else "models/{model}"
            raise InvalidArgumentError(
                f"The Model name {name} is malformed and it should be in form of {form}", param="model"
            )
        backend = self._router.find_model(model)
        if backend is None:
            raise NotFoundError(f"Model {name} not found.")
        return model, backend

    async def create(self, parent: str, body: gc.CachedContent, dialect: gc.Dialect) -> gc.CachedContent:
        model, backend = self._model(body.model, dialect)
        check_model(current_record(), self._router.routed_id(model))  # before any of its work
        if not backend.capabilities.cached_content:
            raise unsupported("model", "context caching")
        if parent and parent_of(model.resource) not in ("", parent):
            raise InvalidArgumentError(
                f"the model must be in the cache's project and location ({parent})", param="model"
            )
        if body.encryption_spec is not None:
            raise unsupported("encryption_spec", "customer-managed encryption keys")
        now = self._clock()
        expire = _expiry(body, now) or now + DEFAULT_TTL_S
        content = gc.GenerateContentRequest(
            contents=body.contents or [],
            system_instruction=body.system_instruction,
            tools=body.tools,
            tool_config=body.tool_config,
        )
        check_capabilities(content, backend.capabilities)
        if self._media is not None:  # before any backend reads them (counting tokens included)
            self._media.check_buckets(content, native_name)
        tokens = await backend.count_tokens(content, model=model.routed)
        minimum = backend.capabilities.min_cached_content_tokens
        if tokens < minimum:
            raise _too_small(tokens, minimum, dialect)
        if await self._store.count(now=now) >= self._max_caches:
            raise ResourceExhaustedError(
                f"Resource exhausted: {self._max_caches} context caches exist, the most this server keeps "
                "(max_cached_contents). Delete some, or let them expire.",
                retry_after_s=60,
            )
        name = f"{parent + '/' if parent else ''}cachedContents/{secrets.randbelow(9 * 10**18) + 10**18}"
        await backend.cache_prefix(name, content, model=model.routed, owner=current_record().key)
        row = CachedContentRow(
            name=name,
            parent=parent,
            model=model.resource,
            display_name=body.display_name,
            body=json.dumps(content.to_json_dict()),
            token_count=tokens,
            create_time=now,
            update_time=now,
            expire_time=expire,
            owner=current_record().key,
        )
        try:
            await self._store.insert(row)
        except BaseException:
            await backend.forget_prefix(name, content, model=model.routed, owner=current_record().key)
            raise
        return _resource(row)

    async def get(self, name: str, dialect: gc.Dialect) -> gc.CachedContent:
        return _resource(await self._row(name, dialect))

    async def _row(self, name: str, dialect: gc.Dialect) -> CachedContentRow:
        row = await self._store.get(name, owner=current_record().key, now=self._clock())
        if row is None:
            raise _not_found(name, dialect)
        return row

    async def page(
        self, parent: str, *, page_size: int | None, page_token: str | None
    ) -> gc.ListCachedContentsResponse:
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if size < 0:
            raise InvalidArgumentError("must not be negative", param="page_size")
        after = _parse_page_token(page_token) if page_token else None
        rows = await self._store.page(parent, owner=current_record().key, now=self._clock(), after=after, size=size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return gc.ListCachedContentsResponse(
            cached_contents=[_resource(row) for row in rows], next_page_token=_page_token(rows[-1]) if more else None
        )

    async def update(self, name: str, body: gc.CachedContent, dialect: gc.Dialect) -> gc.CachedContent:
        """Only the expiry can change (ttl or expire_time; no update mask needed)."""
        others = body.model_dump(exclude_none=True, exclude={"ttl", "expire_time", "name"})
        if others:
            raise InvalidArgumentError(f"Only expire_time or ttl can be updated, not {', '.join(sorted(others))}.")
        now = self._clock()
        expire = _expiry(body, now)
        if expire is None:
            raise InvalidArgumentError("an update must set ttl or expire_time", param="ttl")
        row = await self._store.set_expiry(name, owner=current_record().key, now=now, expire_time=expire)
        if row is None:
            raise _not_found(name, dialect)
        return _resource(row)

    async def delete(self, name: str, dialect: gc.Dialect) -> None:
        await self._forget(await self._row(name, dialect))  # its KV first: nothing is left behind
        if await self._store.delete(name, owner=current_record().key, now=self._clock()) is None:
            raise _not_found(name, dialect)  # deleted by another request meanwhile

    async def sweep(self) -> int:
        """Remove the caches that expired, each backend letting go of what it kept for one before
        its row goes; then have every backend let go of what it keeps for caches that no longer
        exist (another replica deleted or swept them). Run at start and on schedule on every
        replica. Returns the caches removed here."""
        removed = 0
        while rows := await self._store.expired(now=self._clock()):
            for row in rows:
                try:
                    await self._forget(row)
                except Exception:  # the row goes anyway: the backends' own sweep gets the rest
                    log.exception("could not let go of the KV of context cache %s", row.name)
            removed += await self._store.remove_expired([row.name for row in rows], now=self._clock())
        for backend in {id(backend): backend for backend in self._router.backends.values()}.values():
            await backend.sweep_prefixes(self._live)
        return removed

    async def _live(self, names: Collection[str]) -> Collection[str]:
        return await self._store.live(names, now=self._clock())

    async def _forget(self, row: CachedContentRow) -> None:
        model = parse_model_name(row.model)
        backend = self._router.find_model(model) if model is not None else None
        if model is not None and backend is not None:
            content = gc.GenerateContentRequest.model_validate_json(row.body)
            await backend.forget_prefix(row.name, content, model=model.routed, owner=row.owner)

    # ------------------------------------------------------------------ use

    async def apply(
        self,
        request: gc.GenerateContentRequest,
        model: ModelName,
        backend: Backend,
        dialect: gc.Dialect,
        *,
        warm: bool = True,
    ) -> AppliedCache:
        """The request with the cache it names in front; 400 where it sets what the cache holds.
        `warm`: have the backend ready to reuse the cache's prefix (not for counting tokens)."""
        assert request.cached_content is not None
        row = await self._row(without_unset_parent(request.cached_content), dialect)
        if parent_of(model.resource) not in ("", row.parent):  # another project's or location's cache
            raise _not_found(row.name, dialect)
        if request.system_instruction is not None or request.tools or request.tool_config is not None:
            raise _conflict(dialect)
        cached = parse_model_name(row.model)
        # The same model id, and the same publisher where the request names one (an OpenAI-surface
        # id such as `smollm2` names none).
        if cached is None or cached.model != model.model or model.publisher not in (None, cached.publisher):
            raise InvalidArgumentError(
                f"Model used by GenerateContent request ({model.resource}) and CachedContent ({row.model}) "
                "has to be the same."
            )
        content = gc.GenerateContentRequest.model_validate_json(row.body)
        if warm:
            await backend.cache_prefix(row.name, content, model=model.routed, owner=row.owner)
        merged = request.model_copy(
            update={
                "contents": content.contents + request.contents,
                "system_instruction": content.system_instruction,
                "tools": content.tools,
                "tool_config": content.tool_config,
            }
        )
        return AppliedCache(merged, row.token_count)


def _resource(row: CachedContentRow) -> gc.CachedContent:
    """What a cache shows of itself: never its input-only fields."""
    return gc.CachedContent(
        name=row.name,
        display_name=row.display_name,
        model=row.model,
        create_time=format_time(row.create_time),
        update_time=format_time(row.update_time),
        expire_time=format_time(row.expire_time),
        usage_metadata=gc.CachedContentUsage(total_token_count=row.token_count),
    )
