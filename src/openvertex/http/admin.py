"""The admin API, for an operator's tools: issue, list and revoke keys, read usage, reload the
configuration. Guarded by `admin_keys` (compared in constant time; API keys do not open it); with
none configured it does not exist (404).

    POST   /admin/keys           {name, models?, requests_per_minute?, …} → {name, key}: shown once
    GET    /admin/keys           → {keys: [{name, models, limits, times, status}]}
    DELETE /admin/keys/{name}    → {}
    GET    /admin/usage?hours=24 → {usage: [{key, model, requests, prompt_tokens, output_tokens}]}
    GET    /admin/usage/series?hours=24&step=300
                                 → {step_s, since, series: [{key, points: [{t, requests, prompt_tokens,
                                   output_tokens}]}]}: per key and step, the steps with usage only
    POST   /admin/reload         → {}: what SIGHUP does (404 where the server has no file to reload)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openvertex.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, UnauthenticatedError
from openvertex.http.auth import AdminKeys
from openvertex.http.body import read_body, read_json
from openvertex.service.keys import KeyRing, KeySpec, issue_key
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.usage import UsageStore

MAX_BODY_BYTES = 64 * 1024
SERIES_MAX_HOURS = 31 * 24
SERIES_STEPS_S = (60, 300, 3600)


class AdminHandlers:
    def __init__(
        self,
        admin_keys: list[str],
        keys: KeyRing,
        store: ApiKeyStore,
        usage: UsageStore,
        reload: Callable[[], bool] | None,
    ) -> None:
        self._admin_keys = AdminKeys(admin_keys)
        self._keys, self._store, self._usage, self._reload = keys, store, usage, reload

    def routes(self) -> list[Route]:
        if not self._admin_keys:
            return []
        return [
            Route("/admin/keys", self.create_key, methods=["POST"]),
            Route("/admin/keys", self.list_keys, methods=["GET"]),
            Route("/admin/keys/{name}", self.revoke_key, methods=["DELETE"]),
            Route("/admin/usage", self.usage, methods=["GET"]),
            Route("/admin/usage/series", self.usage_series, methods=["GET"]),
            Route("/admin/reload", self.reload, methods=["POST"]),
        ]

    def _check(self, request: Request) -> None:
        if not self._admin_keys.presented(request):
            raise UnauthenticatedError("The admin API needs one of the configured admin_keys.")

    async def create_key(self, request: Request) -> Response:
        self._check(request)
        spec = await read_json(await read_body(request, MAX_BODY_BYTES), KeySpec)
        try:
            key = await asyncio.to_thread(issue_key, self._store, spec)
        except ValueError as error:
            raise AlreadyExistsError(str(error)) from None
        await asyncio.to_thread(self._keys.refresh)  # usable here at once; elsewhere within keys_refresh_s
        return JSONResponse({"name": spec.name, "key": key})

    async def list_keys(self, request: Request) -> Response:
        self._check(request)
        now = time.time()
        rows = await asyncio.to_thread(self._store.all)
        listed: list[dict[str, Any]] = [
            {
                "name": row.name,
                "models": list(row.models),
                "requests_per_minute": row.requests_per_minute,
                "tokens_per_minute": row.tokens_per_minute,
                "concurrent_requests": row.concurrent_requests,
                "create_time": row.create_time,
                "expire_time": row.expire_time,
                "revoke_time": row.revoke_time,
                "status": row.status(now),
            }
            for row in rows
        ]
        return JSONResponse({"keys": listed})

    async def revoke_key(self, request: Request) -> Response:
        self._check(request)
        name = request.path_params["name"]
        if not await asyncio.to_thread(self._store.revoke, name, now=time.time()):
            raise NotFoundError(f"No key `{name}` in use.")
        await asyncio.to_thread(self._keys.refresh)
        return JSONResponse({})

    async def usage(self, request: Request) -> Response:
        self._check(request)
        hours = _hours(request, maximum=24 * 366, within="a year")
        since = int((time.time() - hours * 3600) // 60)
        rows = await asyncio.to_thread(self._usage.totals, since_minute=since)
        return JSONResponse(
            {
                "usage": [
                    {
                        "key": row.key_name,
                        "model": row.model,
                        "requests": row.requests,
                        "prompt_tokens": row.prompt_tokens,
                        "output_tokens": row.output_tokens,
                    }
                    for row in rows
                ]
            }
        )

    async def usage_series(self, request: Request) -> Response:
        """Usage over time, per key (models together), for the console's charts."""
        self._check(request)
        hours = _hours(request, maximum=SERIES_MAX_HOURS, within=f"{SERIES_MAX_HOURS} hours")
        step = _step(request, hours)
        since = int((time.time() - hours * 3600) // step * step)  # the first step whole
        points = await asyncio.to_thread(self._usage.series, since_minute=since // 60, step_minutes=step // 60)
        series: dict[str, list[dict[str, int]]] = {}
        for point in points:
            series.setdefault(point.key_name, []).append(
                {
                    "t": point.minute * 60,
                    "requests": point.requests,
                    "prompt_tokens": point.prompt_tokens,
                    "output_tokens": point.output_tokens,
                }
            )
        listed = [{"key": key, "points": points} for key, points in series.items()]
        return JSONResponse({"step_s": step, "since": since, "series": listed})

    async def reload(self, request: Request) -> Response:
        self._check(request)
        if self._reload is None:
            raise NotFoundError("This server was started without a configuration to reload.")
        if not await asyncio.to_thread(self._reload):
            raise InvalidArgumentError("The configuration did not load; what runs is unchanged (see the log).")
        return JSONResponse({})


def _hours(request: Request, *, maximum: float, within: str) -> float:
    try:
        hours = float(request.query_params.get("hours", "24"))
    except ValueError:
        raise InvalidArgumentError("must be a number of hours", param="hours") from None
    if not 0 < hours <= maximum:  # NaN fails too
        raise InvalidArgumentError(f"must be more than 0 and at most {within}", param="hours")
    return hours


def _step(request: Request, hours: float) -> int:
    """The series' step in seconds: as asked, else by the span (a few hundred points at most)."""
    asked = request.query_params.get("step")
    if asked is None:
        return 60 if hours <= 3 else 300 if hours <= 48 else 3600
    if asked not in {str(step) for step in SERIES_STEPS_S}:
        raise InvalidArgumentError(f"must be one of {', '.join(map(str, SERIES_STEPS_S))} seconds", param="step")
    return int(asked)
