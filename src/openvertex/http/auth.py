"""API-key authentication: `Authorization: Bearer`, `x-goog-api-key` or `?key=` (spec §1.2)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from openvertex.errors import UnauthenticatedError

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


class Authenticator:
    """With no keys configured any token is accepted (the CLI allows that on loopback only)."""

    def __init__(self, api_keys: list[str]) -> None:
        self._keys = [key.encode() for key in api_keys]

    def check(self, request: Request) -> None:
        token = _presented_token(request)
        if token is None:
            raise UnauthenticatedError(_MISSING)
        if not self._keys:
            return
        presented = token.encode()
        # Compare against every key, always, so timing says nothing about which one matched.
        matches = [hmac.compare_digest(presented, key) for key in self._keys]
        if not any(matches):
            raise UnauthenticatedError("Request had invalid authentication credentials.")
