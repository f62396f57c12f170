"""How openvertex authenticates to an endpoint's replicas: not at all, a static bearer token, or a
Google ID token (Cloud Run, IAP) or access token (backends/google_auth.py). The caller's own
credentials never go upstream."""

from __future__ import annotations

import logging
from functools import partial
from typing import Protocol

from google.auth.credentials import Credentials

from openvertex.backends.google_auth import TokenSource, access_credentials, id_token_credentials
from openvertex.errors import ApiError, UnavailableError
from openvertex.relay.replicas import Replica
from openvertex.settings import EndpointSettings

log = logging.getLogger(__name__)


class UpstreamAuth(Protocol):
    async def headers(self, replica: Replica) -> dict[str, str]: ...

    def close(self) -> None: ...


class NoAuth:
    async def headers(self, replica: Replica) -> dict[str, str]:
        return {}

    def close(self) -> None:
        return None


class BearerToken:
    def __init__(self, token: str) -> None:
        self._headers = {"Authorization": f"Bearer {token}"}

    async def headers(self, replica: Replica) -> dict[str, str]:
        return self._headers

    def close(self) -> None:
        return None


class GoogleToken:
    """An ID token per audience (the configured one, else each replica's origin: Cloud Run's
    audience is its service URL), or one access token for every replica."""

    def __init__(self, settings: EndpointSettings, *, id_tokens: bool) -> None:
        self._settings = settings
        self._id_tokens = id_tokens
        self._sources: dict[str, TokenSource] = {}

    async def headers(self, replica: Replica) -> dict[str, str]:
        audience = (self._settings.audience or replica.origin) if self._id_tokens else ""
        source = self._sources.get(audience)
        if source is None:
            source = self._sources[audience] = TokenSource(partial(self._load, audience), _no_token)
        return await source.headers()

    def _load(self, audience: str) -> Credentials:
        if self._id_tokens:
            return id_token_credentials(self._settings.credentials_file, audience)
        return access_credentials(self._settings.credentials_file)[0]

    def close(self) -> None:
        for source in self._sources.values():
            source.close()


def _no_token(error: Exception) -> ApiError:
    log.error("could not get a Google token for an upstream: %s", error)
    return UnavailableError("The gateway could not get credentials for the upstream.")


def upstream_auth(settings: EndpointSettings) -> UpstreamAuth:
    match settings.auth:
        case "none":
            return NoAuth()
        case "bearer":
            assert settings.bearer_token is not None  # the settings refuse bearer without one
            return BearerToken(settings.bearer_token.get_secret_value())
        case "google-id-token":
            return GoogleToken(settings, id_tokens=True)
        case "google-access-token":
            return GoogleToken(settings, id_tokens=False)
