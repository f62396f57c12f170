"""API-key authentication: `Authorization: Bearer`, `x-goog-api-key` or `?key=` (spec §1.2)."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from openvertex.errors import UnauthenticatedError
from openvertex.request_record import current_record

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


def key_name(key: str) -> str:
    """How logs name a configured key: a fingerprint, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Authenticator:
    """With no keys configured any token is accepted (the CLI allows that on loopback only)."""

    def __init__(self, api_keys: list[str]) -> None:
        self.replace(api_keys)

    def replace(self, api_keys: list[str]) -> None:
        """The keys from now on (a configuration reload); requests under way are not affected."""
        self._keys = [(key.encode(), key_name(key)) for key in api_keys]

    def check(self, request: Request) -> None:
        token = _presented_token(request)
        if token is None:
            raise UnauthenticatedError(_MISSING)
        keys = self._keys
        if not keys:
            return
        presented = token.encode()
        # Compare against every key, always, so timing says nothing about which one matched.
        matches = [hmac.compare_digest(presented, key) for key, _ in keys]
        if not any(matches):
            raise UnauthenticatedError("Request had invalid authentication credentials.")
        current_record().key = keys[matches.index(True)][1]
