"""create_app(settings): routes, error rendering, and the backends' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from openvertex.backends.base import Backend
from openvertex.backends.registry import create_backend
from openvertex.errors import ApiError
from openvertex.http.auth import Authenticator
from openvertex.http.errors import api_error_handler, http_exception_handler, unexpected_error_handler
from openvertex.http.metrics import CountRequests, register_backend_readings
from openvertex.http.routes import Handlers
from openvertex.metrics import Metrics
from openvertex.service.chat import ChatService
from openvertex.service.routing import Router
from openvertex.service.signatures import SECRET_FILE, ThoughtSigner, load_or_create_secret
from openvertex.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings, *, backends: Mapping[str, Backend] | None = None) -> Starlette:
    """`backends` replaces the configured ones (tests inject a FakeBackend this way)."""
    if backends is None:
        backends = {name: create_backend(config) for name, config in settings.backends.items()}
    router = Router(backends=backends, routes=settings.routes)
    metrics = Metrics()
    register_backend_readings(metrics, router)
    signer = ThoughtSigner(load_or_create_secret(settings.state_dir / SECRET_FILE))
    service = ChatService(
        router,
        metrics=metrics,
        timeout_s=settings.request_timeout_s,
        signer=signer,
        optional_signatures=settings.optional_thought_signatures,
    )
    handlers = Handlers(service, Authenticator(settings.api_keys), settings.max_body_bytes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Backends start in the background: /healthz answers at once, /readyz once loaded.
        starting = asyncio.gather(*(backend.start() for backend in backends.values()))
        try:
            yield
        finally:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            await asyncio.gather(*(backend.close() for backend in backends.values()))

    return Starlette(
        routes=handlers.routes(),
        middleware=[Middleware(CountRequests, metrics=metrics)],
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            HTTPException: http_exception_handler,
            Exception: unexpected_error_handler,
        },
    )
