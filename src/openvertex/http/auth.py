"""API-key authentication: `Authorization: Bearer`, `x-goog-api-key` or `?key=` (spec §1.2)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openvertex.errors import UnauthenticatedError
from openvertex.request_record import current_record
from openvertex.service.keys import KeyGrant, KeyRing, Quotas
from openvertex.service.tenants import Tenants

_MISSING = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential."
)


def _presented_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("x-goog-api-key") or request.query_params.get("key") or None


Handler = Callable[[Request], Awaitable[Response]]


class AdminKeys:
    """The configured `admin_keys`: a bearer token is compared with every one, always, in
    constant time, so timing says nothing of which (if any) matched."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self._keys)

    def presented(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        return any([hmac.compare_digest(presented, key) for key in self._keys])  # a list: every key


class Authenticator:
    """Who a request is (its key), and its place in that key's quotas."""

    def __init__(self, keys: KeyRing, quotas: Quotas, tenants: Tenants) -> None:
        self.keys = keys
        self.quotas = quotas
        self.tenants = tenants

    async def check(self, request: Request, *, anonymous: bool = False) -> None:
        """`anonymous`: a request without a token passes while no key exists (a Vertex AI
        container's prediction route, behind the endpoint's IAM)."""
        grant = self.identify(request, anonymous=anonymous)
        if grant is not None:
            await self.quotas.admit(grant, current_record())

    def identify(self, request: Request, *, anonymous: bool = False) -> KeyGrant | None:
        """The request's key, checked but not counted against its quotas (what reads the server's
        state, not a model, needs); None where no key exists (`anonymous`: as for `check`)."""
        token = _presented_token(request)
        if self.keys.open and (token is not None or anonymous):
            return None
        if token is None:
            raise UnauthenticatedError(_MISSING)
        grant = self.keys.find(token)
        if grant is None:
            raise UnauthenticatedError("Request had invalid authentication credentials.")
        record = current_record()
        record.key, record.models_allowed = grant.name, grant.models or None
        record.tenant = self.tenants.of(grant.name)
        return grant

    def one_tenant(self) -> bool:
        """Whether every key a request may present is of one tenant (or none exists): then what
        the server as a whole does tells a key of no other tenant's requests."""
        return self.keys.open or len({self.tenants.of(name) for name in self.keys.names()}) <= 1

    def guard(self, handler: Handler, *, anonymous: bool = False) -> Handler:
        """`handler` behind the key check: how every API route is authenticated."""

        @functools.wraps(handler)
        async def guarded(request: Request) -> Response:
            await self.check(request, anonymous=anonymous)
            return await handler(request)

        return guarded

    def guard_routes(self, routes: list[Route]) -> list[Route]:
        return [
            Route(route.path, self.guard(route.endpoint), methods=list(route.methods or ()), name=route.name)
            for route in routes
        ]
