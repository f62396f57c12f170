"""API keys and their quotas.

Keys come from two places: `api_keys` in the configuration (plain strings, compared in constant
time) and keys issued with `openvertex keys create` (a random 256-bit key shown once; only its
SHA-256 is stored, with its name, the models it may use, its limits and its expiry). Issued keys
are read from the database at start and every `keys_refresh_s`, so a key revoked from the CLI
(or on another replica sharing the database) is refused within that time, and a request's check
never waits on the database.

Quotas are per key and per clock minute, as Google counts them: requests per minute, tokens per
minute (prompt and output, counted from each answer's usage once it is done) and requests in
flight. Past a limit the request is a 429 RESOURCE_EXHAUSTED whose Retry-After says when the
minute turns (or, for the concurrency limit, one second). Usage per key, model and minute is
kept in the database for `openvertex usage`, written every few seconds.

With a shared database the per-minute counts live in it, so a key with per-minute quotas asks it
before each request: a database that does not answer within `database_timeout_s` makes that
request a 503 UNAVAILABLE, and a key without them asks it nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from openvertex.errors import PermissionDeniedError, ResourceExhaustedError
from openvertex.request_record import RequestRecord
from openvertex.store.api_keys import ApiKeyRow, ApiKeyStore
from openvertex.store.quota_counts import QuotaCountStore
from openvertex.store.usage import UsageRow, UsageStore

log = logging.getLogger(__name__)

KEY_PREFIX = "ov-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


CONFIGURED_PREFIX = "key-"  # the names of the keys from the configuration


def configured_key_name(key: str) -> str:
    """How logs and usage name a configured key: a fingerprint, never the key."""
    return CONFIGURED_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class KeyGrant:
    """What a key may do."""

    name: str
    models: tuple[str, ...] = ()  # globs; empty: every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None
    expire_time: float | None = None

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> KeyGrant:
        return cls(
            row.name,
            row.models,
            row.requests_per_minute,
            row.tokens_per_minute,
            row.concurrent_requests,
            row.expire_time,
        )


class KeySpec(BaseModel):
    """A key to issue: the CLI's options, the admin API's body."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    models: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(default_factory=list, max_length=64)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    concurrent_requests: int | None = Field(None, ge=1)
    expire_time: float | None = None  # seconds since the epoch

    @field_validator("name")
    @classmethod
    def _not_a_fingerprint(cls, name: str) -> str:
        if name.startswith(CONFIGURED_PREFIX):  # quotas and usage are counted by name
            raise ValueError(f"names starting with `{CONFIGURED_PREFIX}` are those of the configured keys")
        return name


def issue_key(store: ApiKeyStore, spec: KeySpec) -> str:
    """A new key, stored as its hash: the caller shows it once. ValueError: the name is taken."""
    key = new_key()
    row = ApiKeyRow(
        spec.name,
        key_hash(key),
        tuple(spec.models),
        spec.requests_per_minute,
        spec.tokens_per_minute,
        spec.concurrent_requests,
        time.time(),
        spec.expire_time,
        None,
    )
    if not store.insert(row):
        raise ValueError(f"a key named {spec.name!r} exists already (names of revoked keys are not reused)")
    return key


def check_model(record: RequestRecord, model_id: str) -> None:
    """403 unless the request's key may use the model it was routed by."""
    allowed = record.models_allowed
    if allowed is not None and not any(fnmatchcase(model_id, glob) for glob in allowed):
        raise PermissionDeniedError(f"The API key `{record.key}` may not use the model `{model_id}`.")


class KeyRing:
    """The keys a request may present."""

    def __init__(self, configured: list[str], store: ApiKeyStore | None = None) -> None:
        self._store = store
        self._issued: dict[bytes, KeyGrant] = {}
        # Once a key exists the server stays closed: revoking every issued key, or reloading a
        # configuration that names none, must not open it.
        self.closed = False
        self.replace_configured(configured)

    def replace_configured(self, keys: list[str]) -> None:
        self._configured = [(key.encode(), KeyGrant(configured_key_name(key))) for key in keys]
        self.closed = self.closed or bool(keys)

    @property
    def open(self) -> bool:
        """No key was ever configured or issued: any token is accepted (the CLI allows that on
        loopback only)."""
        return not self.closed

    def refresh(self) -> None:
        """Read the issued keys again (a blocking database read: call it off the event loop)."""
        if self._store is None:
            return
        now = time.time()
        rows = self._store.all()
        self._issued = {row.hash: KeyGrant.from_row(row) for row in rows if row.status(now) == "active"}
        self.closed = self.closed or bool(rows)

    def names(self) -> set[str]:
        """The names of the keys a request may present now."""
        return {grant.name for _, grant in self._configured} | {grant.name for grant in self._issued.values()}

    def find(self, token: str) -> KeyGrant | None:
        presented = token.encode()
        # Every configured key is compared, always, so timing says nothing about which one matched.
        matches = [hmac.compare_digest(presented, key) for key, _ in self._configured]
        if any(matches):
            return self._configured[matches.index(True)][1]
        if not token.startswith(KEY_PREFIX):
            return None
        grant = self._issued.get(key_hash(token))  # a hash of a 256-bit secret: its lookup time tells nothing
        if grant is None or (grant.expire_time is not None and grant.expire_time <= time.time()):
            return None
        return grant


@dataclass(slots=True)
class _Minute:
    minute: int = -1
    requests: int = 0
    tokens: int = 0


@dataclass(slots=True)
class Quotas:
    """Per-key counters, and the usage not yet written. With a shared database (`counts`), the
    per-minute requests and tokens are counted in it, so they hold across replicas; requests in
    flight are counted by each process."""

    counts: QuotaCountStore | None = None
    _minutes: dict[str, _Minute] = field(default_factory=dict)
    _in_flight: Counter[str] = field(default_factory=Counter)
    _pending: dict[tuple[str, str, int], list[int]] = field(default_factory=dict)
    _shared_tokens: Counter[tuple[str, int]] = field(default_factory=Counter)

    async def admit(self, grant: KeyGrant, record: RequestRecord) -> None:
        """Count the request against its key's quotas, or raise the 429; the request gives its
        place back, and counts its tokens, once its response is sent."""
        name = grant.name
        if grant.concurrent_requests is not None and self._in_flight[name] >= grant.concurrent_requests:
            raise ResourceExhaustedError(
                f"Quota exceeded: the API key `{name}` may have {grant.concurrent_requests} requests "
                "in flight at once.",
                retry_after_s=1,
            )
        self._in_flight[name] += 1  # taken before any wait, so two requests cannot both pass
        try:
            await self._per_minute(grant)
        except BaseException:
            self._release(name)
            raise
        record.on_end.append(self._done)

    async def _per_minute(self, grant: KeyGrant) -> None:
        rpm, tpm = grant.requests_per_minute, grant.tokens_per_minute
        if rpm is None and tpm is None:
            return
        now = time.time()
        if self.counts is not None:
            requests, tokens = await self.counts.count_request(grant.name, int(now // 60))
            requests -= 1  # those before this one
            tokens += self._shared_tokens[(grant.name, int(now // 60))]  # this process's, not yet written
        else:
            minute = self._minute(grant.name, now)
            requests, tokens = minute.requests, minute.tokens
        retry_after = max(1, math.ceil(60 - now % 60))
        if rpm is not None and requests >= rpm:
            raise ResourceExhaustedError(
                f"Quota exceeded: the API key `{grant.name}` may send {rpm} requests a minute.",
                retry_after_s=retry_after,
            )
        if tpm is not None and tokens >= tpm:
            raise ResourceExhaustedError(
                f"Quota exceeded: the API key `{grant.name}` may use {tpm} tokens a minute.",
                retry_after_s=retry_after,
            )
        if self.counts is None:
            minute.requests += 1

    def _release(self, name: str) -> None:
        self._in_flight[name] -= 1
        if self._in_flight[name] <= 0:
            del self._in_flight[name]

    def _minute(self, name: str, now: float) -> _Minute:
        current = int(now // 60)
        minute = self._minutes.get(name)
        if minute is None or minute.minute != current:
            minute = self._minutes[name] = _Minute(current)
        return minute

    def _done(self, record: RequestRecord) -> None:
        name = record.key
        assert name is not None
        self._release(name)
        now = time.time()
        prompt, output = record.prompt_tokens or 0, record.output_tokens or 0
        if self.counts is not None:
            self._shared_tokens[(name, int(now // 60))] += prompt + output
        else:
            self._minute(name, now).tokens += prompt + output
        self._add_usage(UsageRow(name, record.model or "", int(now // 60), 1, prompt, output))

    def _add_usage(self, row: UsageRow) -> None:
        counts = self._pending.setdefault((row.key_name, row.model, row.minute), [0, 0, 0])
        counts[0] += row.requests
        counts[1] += row.prompt_tokens
        counts[2] += row.output_tokens

    def take_usage(self) -> list[UsageRow]:
        """The usage counted since the last take (on the event loop, where it is counted)."""
        pending, self._pending = self._pending, {}
        return [UsageRow(key, model, minute, *counts) for (key, model, minute), counts in pending.items()]

    def restore(self, usage: list[UsageRow], tokens: list[tuple[str, int, int]]) -> None:
        """Put back what was taken but could not be written, for the next write."""
        for row in usage:
            self._add_usage(row)
        for name, minute, count in tokens:
            self._shared_tokens[(name, minute)] += count

    def take_shared_tokens(self) -> list[tuple[str, int, int]]:
        """Tokens to add to the shared per-minute counts: (key name, minute, tokens)."""
        pending, self._shared_tokens = self._shared_tokens, Counter()
        return [(name, minute, tokens) for (name, minute), tokens in pending.items() if tokens]


async def keep_keys_and_usage(keys: KeyRing, quotas: Quotas, store: UsageStore, interval_s: float) -> None:
    """Re-read the issued keys and write the usage (and the shared token counts), every
    `interval_s`, until cancelled (then once more)."""
    writing: asyncio.Task[None] | None = None
    try:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(keys.refresh)
                # A write is never cut short: cancelled while it waits its turn on the database's
                # thread, what it took would be lost; cancelled while it runs, written twice.
                writing = asyncio.create_task(_write(quotas, store))
                await asyncio.shield(writing)
            except Exception:
                log.exception("could not refresh the API keys or write the usage")
            writing = None  # it ended, and was seen to (cancelled while it ran, it is still set)
    finally:
        if writing is not None:
            await asyncio.wait([writing])  # the write in flight ends first: the last one follows it
            if not writing.cancelled() and writing.exception() is not None:
                log.error("could not write the usage: %s", writing.exception())
        await asyncio.shield(_write(quotas, store))


async def _write(quotas: Quotas, store: UsageStore) -> None:
    """Write what was counted since the last write, on the database's own threads (as the quota
    checks run); what a failed write took is put back for the next."""
    usage, tokens = quotas.take_usage(), quotas.take_shared_tokens()
    try:
        await store.add(usage)
    except Exception:
        quotas.restore(usage, tokens)
        raise
    if quotas.counts is not None:
        try:
            await quotas.counts.add_tokens(tokens, now_minute=int(time.time() // 60))
        except Exception:
            quotas.restore([], tokens)
            raise
