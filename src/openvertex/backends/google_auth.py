"""Google credentials for calls openvertex makes upstream (Vertex AI, replicas behind Cloud Run or
IAP): OAuth access tokens and ID tokens, from a credentials file or Application Default Credentials.

google-auth is synchronous: credentials are loaded and refreshed on a worker thread, one refresh
at a time, only when the token is missing or about to expire (google-auth's `valid` turns false a
few minutes early). Headers come from `apply()`, which makes no call of its own (`before_request`
would).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.credentials
import requests
from google.auth.credentials import Credentials
from google.oauth2 import id_token, service_account

from openvertex.errors import ApiError

REFRESH_RETRY_S = 5.0  # how long a failed token refresh answers for itself before the next try
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


def access_credentials(credentials_file: Path | None) -> tuple[Credentials, str | None]:
    """Credentials for access tokens, and the project they name (if any)."""
    if credentials_file is None:
        credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM])
        loaded: Credentials = credentials
        return loaded, project
    # By type, as google-auth recommends for files: a service account or gcloud user credentials.
    info = json.loads(credentials_file.read_text())
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        account: Credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM]
        )
        return account, info.get("project_id")
    if kind == "authorized_user":
        user: Credentials = google.oauth2.credentials.Credentials.from_authorized_user_info(  # type: ignore[no-untyped-call]
            info, scopes=[CLOUD_PLATFORM]
        )
        return user, info.get("quota_project_id")
    raise ValueError(f"{credentials_file}: service account or gcloud user credentials expected, not {kind!r}")


def id_token_credentials(credentials_file: Path | None, audience: str) -> Credentials:
    """Credentials for ID tokens with `audience` (a service account: the file, or ADC's, or the metadata server)."""
    if credentials_file is None:  # GOOGLE_APPLICATION_CREDENTIALS, else the metadata server
        found: Credentials = id_token.fetch_id_token_credentials(  # type: ignore[no-untyped-call]
            audience, request=google.auth.transport.requests.Request()
        )
        return found
    account: Credentials = service_account.IDTokenCredentials.from_service_account_file(  # type: ignore[no-untyped-call]
        str(credentials_file), target_audience=audience
    )
    return account


class TokenSource:
    """One credential's tokens as request headers, refreshed off the event loop when needed."""

    def __init__(self, load: Callable[[], Credentials], failure: Callable[[Exception], ApiError]) -> None:
        self._load = load  # blocking: reads files, may ask the metadata server
        self._failure = failure  # the error a caller gets when no token can be had
        self._credentials: Credentials | None = None
        self._refreshing: asyncio.Future[Credentials] | None = None  # one refresh at a time
        self._retry_at = 0.0  # after a failed refresh, its error stands until then
        self._http = requests.Session()  # for the token endpoint; closed with the source

    async def headers(self) -> dict[str, str]:
        credentials = self._credentials
        if credentials is None or not credentials.valid:
            refreshing = self._refreshing
            if refreshing is None or not self._pending_or_failed_lately(refreshing):
                refreshing = self._refreshing = asyncio.ensure_future(self._refresh())
            # Shielded: a caller that leaves does not cut a refresh others wait on, nor start a second.
            credentials = await asyncio.shield(refreshing)
        headers: dict[str, str] = {}
        credentials.apply(headers)  # type: ignore[no-untyped-call]
        return headers

    def _pending_or_failed_lately(self, refreshing: asyncio.Future[Credentials]) -> bool:
        """Whether to wait on the last refresh instead of starting one: it is under way, or it
        failed less than REFRESH_RETRY_S ago (a token endpoint that is down is not asked again at
        every request)."""
        if not refreshing.done():
            return True
        failed = not refreshing.cancelled() and refreshing.exception() is not None
        return failed and time.monotonic() < self._retry_at

    async def _refresh(self) -> Credentials:
        try:
            if self._credentials is None:
                self._credentials = await asyncio.to_thread(self._load)
            credentials = self._credentials
            if not credentials.valid:
                request = google.auth.transport.requests.Request(self._http)
                await asyncio.to_thread(credentials.refresh, request)
        except (google.auth.exceptions.GoogleAuthError, OSError, ValueError) as error:
            self._retry_at = time.monotonic() + REFRESH_RETRY_S
            raise self._failure(error) from None
        return credentials

    def close(self) -> None:
        self._http.close()
