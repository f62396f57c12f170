"""The JSON the web console reads: what it needs to know of the server, the models a key may
name, and the server's live status (built on what /metrics counts).

    GET /console/api/config → {keys_required, admin, version}: no key needed
    GET /console/api/models → {models: [{id, backend}], endpoints: [{id}]}: an API key, as the API
                              routes ask for one, but not counted against its quotas
    GET /console/api/status → {time, uptime_s, backends, endpoints, context_caches, requests}:
                              an admin key; an API key only while the server has one tenant, since
                              the whole server's counts and timing would tell one tenant of another's
                              requests (ARCHITECTURE: nothing crosses a tenant)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from openvertex import __version__
from openvertex.backends.base import Backend, CacheUsage
from openvertex.errors import PermissionDeniedError
from openvertex.http.auth import AdminKeys, Authenticator
from openvertex.relay import RelayEndpoints, RelayPool
from openvertex.service.routing import Router
from openvertex.timeline import Timeline

_SEVERAL_TENANTS = (
    "The server-wide status needs an admin key when several tenants share the server: it would "
    "tell one tenant of the others' requests."
)


class ConsoleApi:
    def __init__(
        self,
        auth: Authenticator,
        admin_keys: AdminKeys,
        router: Router,
        relay: RelayEndpoints,
        *,
        pinned_endpoints: Mapping[str, object],
        timeline: Timeline,
    ) -> None:
        self.auth = auth
        self.admin_keys = admin_keys
        self.router = router
        self.relay = relay
        self.pinned_endpoints = pinned_endpoints  # endpoints a configured backend answers, by id
        self.timeline = timeline
        self.started = time.monotonic()

    def routes(self) -> list[Route]:
        return [
            Route("/console/api/config", self.config, methods=["GET"], name="console_config"),
            Route("/console/api/models", self.models, methods=["GET"], name="console_models"),
            Route("/console/api/status", self.status, methods=["GET"], name="console_status"),
        ]

    async def config(self, request: Request) -> Response:
        keys_required = not self.auth.keys.open
        return JSONResponse({"keys_required": keys_required, "admin": bool(self.admin_keys), "version": __version__})

    async def models(self, request: Request) -> Response:
        self.auth.identify(request, anonymous=True)  # no key needed where none exists, as config says
        models = [
            {
                "id": model,
                "backend": self.router.name_of(backend),
                "writes": backend.capabilities.generation,  # chat, generateContent
                "embeds": backend.capabilities.embeddings,
            }
            for model, backend in self.router.models()
        ]
        endpoint_ids = sorted({*self.relay.pools, *self.pinned_endpoints})
        return JSONResponse({"models": models, "endpoints": [{"id": endpoint_id} for endpoint_id in endpoint_ids]})

    async def status(self, request: Request) -> Response:
        self._check_status(request)
        now = time.time()
        rates = self.timeline.tokens_per_second(now=now)
        body = {
            "time": now,
            "uptime_s": int(time.monotonic() - self.started),
            "backends": [self._backend(name, backend, rates.get(name, 0.0)) for name, backend in self._backends()],
            "endpoints": [_endpoint(pool) for pool in self.relay.pools.values()],
            "context_caches": _cache_usage(backend.cache_usage() for _, backend in self._backends()),
            "requests": {"bucket_s": self.timeline.bucket_s, "series": self.timeline.series(now=now)},
        }
        return JSONResponse(body)

    def _check_status(self, request: Request) -> None:
        if self.admin_keys.presented(request):
            return
        self.auth.identify(request, anonymous=True)
        if not self.auth.one_tenant():
            raise PermissionDeniedError(_SEVERAL_TENANTS)

    def _backends(self) -> list[tuple[str, Backend]]:
        return list(self.router.backends.items())

    def _backend(self, name: str, backend: Backend, tokens_per_second: float) -> dict[str, Any]:
        load = backend.load()
        return {
            "name": name,
            "kind": backend.kind,
            "models": [model for model, routed in self.router.models() if routed is backend],
            "ready": backend.ready(),
            "slots_busy": load.running,
            "slots_total": load.slots,
            "queue": load.waiting,
            "kv_tokens": load.kv_tokens,
            "kv_capacity": load.kv_capacity,
            "kv_resident_bytes": load.kv_resident_bytes,
            "tokens_generated": load.tokens_generated,
            "tokens_per_second": round(tokens_per_second, 3),
            "upstream_requests": load.upstream_requests,
            "upstream_errors": load.upstream_errors,
        }


def _endpoint(pool: RelayPool) -> dict[str, Any]:
    stats = pool.stats
    replicas = [
        {
            "origin": replica.public_origin,  # never the credentials a configured URL may carry
            "healthy": replica.in_service,
            "in_flight": replica.outstanding,
            "failures": replica.failures,
        }
        for replica in pool.replicas
    ]
    return {
        "id": pool.endpoint_id,
        "requests": stats.requests,
        "errors": stats.errors,
        "retries": stats.retries,
        "replicas": replicas,
    }


def _cache_usage(usages: Iterable[CacheUsage]) -> dict[str, int]:
    listed = list(usages)
    return {
        "count": sum(usage.count for usage in listed),
        "bytes_memory": sum(usage.bytes_memory for usage in listed),
        "bytes_disk": sum(usage.bytes_disk for usage in listed),
    }
