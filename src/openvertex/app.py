"""create_app(settings): routes, error rendering, and the backends' lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from openvertex.backends.base import Backend
from openvertex.backends.registry import create_backends
from openvertex.backends.residency import Resident, Roster
from openvertex.errors import ApiError
from openvertex.executors import shutdown_executors
from openvertex.http.admin import AdminHandlers
from openvertex.http.auth import AdminKeys, Authenticator
from openvertex.http.console import Console
from openvertex.http.console_api import ConsoleApi
from openvertex.http.embeddings import EmbeddingHandlers
from openvertex.http.errors import api_error_handler, http_exception_handler, unexpected_error_handler
from openvertex.http.faults import FaultHeader, connection_cut_handler
from openvertex.http.lifecycle import Lifecycle
from openvertex.http.metrics import register_backend_readings
from openvertex.http.native import NativeHandlers
from openvertex.http.recording import UNTIMED_PATHS, RecordRequests
from openvertex.http.relay import RelayHandlers, pinned_backends
from openvertex.http.routes import Handlers
from openvertex.http_clients import HttpClients
from openvertex.metrics import Metrics
from openvertex.relay import RelayEndpoints
from openvertex.relay.stats import register_relay_readings
from openvertex.service.cached_contents import CachedContents
from openvertex.service.chat import ChatService
from openvertex.service.embeddings import EmbeddingService
from openvertex.service.faults import ConnectionCut, Faults
from openvertex.service.grounding import GroundingPolicy
from openvertex.service.keys import KeyRing, Quotas, keep_keys_and_usage
from openvertex.service.media import MediaReader
from openvertex.service.native import NativeService
from openvertex.service.pipeline import Pipeline
from openvertex.service.routing import Router
from openvertex.service.safety import SafetyPolicy
from openvertex.service.signatures import SECRET_BYTES, SECRET_FILE, ThoughtSigner, load_or_create_secret, parse_secret
from openvertex.service.tenants import Tenants
from openvertex.settings import ModelRoute, Settings
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.cached_contents import CachedContentStore
from openvertex.store.database import Database, database_for
from openvertex.store.quota_counts import QuotaCountStore
from openvertex.store.secrets import shared_secret
from openvertex.store.usage import UsageStore
from openvertex.timeline import Timeline
from openvertex.translate.bounded_json import JsonLimits
from openvertex.translate.resources import ModelName

log = logging.getLogger(__name__)


def create_app(
    settings: Settings,
    *,
    backends: Mapping[str, Backend] | None = None,
    reload: Callable[[], Settings] | None = None,
) -> Starlette:
    """`backends` replaces the configured ones (tests inject a FakeBackend this way). `reload`:
    the settings as the configuration now says, read again on SIGHUP for the keys and routes."""
    clients = HttpClients()  # every long-lived HTTP session: opened and closed by the lifespan
    injected = backends is not None
    backends = backends if backends is not None else _create_backends(settings, clients)
    safety = SafetyPolicy(settings.safety, clients)
    router = Router(backends=backends, routes=_routes(settings, backends, injected=injected))
    roster = _roster(settings, backends)
    grounding = GroundingPolicy(settings.grounding, settings.state_dir, clients, router)
    metrics = _metrics(router)
    timeline = Timeline(lambda: {name: backend.load().tokens_generated for name, backend in backends.items()})
    database = database_for(settings)
    signer = ThoughtSigner(_signing_secret(settings))
    media = MediaReader(settings.media, clients)
    caches = CachedContents(CachedContentStore(database), router, max_caches=settings.max_cached_contents, media=media)
    pipeline = Pipeline(
        router,
        caches,
        metrics=metrics,
        timeout_s=settings.request_timeout_s,
        signer=signer,
        signatures_required=_signatures_required(settings),
        media=media,
        safety=safety,
        grounding=grounding,
        faults=Faults(settings.faults),
    )
    auth = _authenticator(settings, database)
    keys = auth.keys
    json_limits = JsonLimits(settings.max_json_depth, settings.max_json_number_length)
    relay = RelayEndpoints(settings.endpoints, clients)
    register_relay_readings(metrics, relay.pools)
    pinned = pinned_backends(settings.endpoints, backends)
    lifecycle = Lifecycle()
    reloading = _reloading(reload, router, keys, auth.tenants, injected=injected) if reload is not None else None
    admin = AdminHandlers(settings.admin_keys, keys, ApiKeyStore(database), UsageStore(database), reloading)
    console_api = ConsoleApi(
        auth, AdminKeys(settings.admin_keys), router, relay, pinned_endpoints=pinned, timeline=timeline
    )
    relay_handlers = RelayHandlers(relay, pinned, settings.max_body_bytes, safety.blocklist)
    embeddings = EmbeddingHandlers(
        EmbeddingService(router, timeout_s=settings.request_timeout_s, faults=pipeline.faults),
        router,
        settings.max_body_bytes,
        json_limits,
        relay=relay_handlers,
        pinned=pinned,
    )
    handlers = Handlers(
        ChatService(pipeline, router),
        NativeHandlers(NativeService(pipeline, router), caches, settings.max_body_bytes, json_limits, embeddings),
        auth,
        settings.max_body_bytes,
        metrics=metrics,
        json_limits=json_limits,
        relay=relay_handlers,
        lifecycle=lifecycle,
        predict_model=settings.predict_model,
        console=console_api,
        console_page=Console(),
        embeddings=embeddings,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(database.open)
        if database.shared and settings.thought_signature_secret is None:  # every replica signs alike
            signer.rekey(await asyncio.to_thread(shared_secret, database, "thought_signature", SECRET_BYTES))
        await asyncio.to_thread(keys.refresh)
        await _open_outbound(clients, relay)  # before the backends start: they may call out
        # Backends start in the background: /healthz answers at once, /readyz once loaded.
        starting = asyncio.gather(*(backend.start() for backend in backends.values()))
        running: list[asyncio.Future[Any]] = [
            starting,
            asyncio.create_task(_sweep(caches, settings.cache_sweep_interval_s)),
            asyncio.create_task(grounding.start()),  # a corpus is indexed while the model loads
            asyncio.create_task(keep_keys_and_usage(keys, auth.quotas, UsageStore(database), settings.keys_refresh_s)),
            asyncio.create_task(timeline.keep_sampling()),  # the tokens of each second, for the console
            asyncio.create_task(roster.keep()),  # idle local models let go as their keep-alive runs out
        ]
        try:
            with _reloads_on_sighup(reloading):
                yield
        finally:
            for task in running:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            await asyncio.gather(*(backend.close() for backend in backends.values()))
            for close in (relay.close, grounding.close, clients.close):  # the HTTP sessions last
                await close()
            shutdown_executors()  # media recognitions, grammar builds
            database.close()

    app = Starlette(
        routes=[
            *handlers.container_routes(settings.health_route, settings.predict_route),
            *handlers.routes(),
            *admin.routes(),
        ],
        middleware=[
            Middleware(RecordRequests, metrics=metrics, timeline=timeline, untimed=_untimed(settings)),
            Middleware(FaultHeader, allowed=settings.faults_from_header),
        ],
        lifespan=lifespan,
        exception_handlers={
            ApiError: api_error_handler,
            ConnectionCut: connection_cut_handler,
            HTTPException: http_exception_handler,
            Exception: unexpected_error_handler,
        },
    )
    app.state.lifecycle = lifecycle
    return app


def _untimed(settings: Settings) -> frozenset[str]:
    """The paths the console's timeline leaves out: health checks (Vertex AI's too) and scrapes."""
    return UNTIMED_PATHS | ({settings.health_route} if settings.health_route else set())


def _signatures_required(settings: Settings) -> Callable[[ModelName], bool]:
    """Whether a model's replayed function calls must carry their thought signatures (by family)."""

    def matches(model: ModelName, globs: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, glob) for glob in globs for name in model.route_ids())

    def required(model: ModelName) -> bool:
        return matches(model, settings.required_thought_signatures) and not matches(
            model, settings.optional_thought_signatures
        )

    return required


async def _open_outbound(clients: HttpClients, relay: RelayEndpoints) -> None:
    """The HTTP sessions, then the relay endpoints' health checks that use them; on a failure,
    nothing is left open."""
    await clients.open()
    try:
        await relay.start()
    except BaseException:
        await clients.close()
        raise


@contextlib.contextmanager
def _reloads_on_sighup(reloading: Callable[[], bool] | None) -> Iterator[None]:
    """SIGHUP reloads the configuration, on a worker thread (it reads files and the database).
    Signals reach the main thread only: a server run elsewhere (tests) has no handler."""
    if reloading is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[bool]] = set()

    def on_signal() -> None:
        task = loop.create_task(asyncio.to_thread(reloading))
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_signal)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


def _authenticator(settings: Settings, database: Database) -> Authenticator:
    keys = KeyRing(settings.api_keys, ApiKeyStore(database))
    quotas = Quotas(QuotaCountStore(database) if database.shared else None)
    return Authenticator(keys, quotas, Tenants(settings.tenants))


def _create_backends(settings: Settings, clients: HttpClients) -> dict[str, Backend]:
    return create_backends(settings.backends, settings.state_dir / "kv", clients)


def _roster(settings: Settings, backends: Mapping[str, Backend]) -> Roster:
    """The local models held in memory, under one budget."""
    roster = Roster(settings.models_memory_bytes)
    for name, backend in backends.items():
        if isinstance(backend, Resident):
            roster.add(name, backend.residency)
    return roster


def _metrics(router: Router) -> Metrics:
    metrics = Metrics()
    register_backend_readings(metrics, router)
    return metrics


def _routes(settings: Settings, backends: Mapping[str, Backend], *, injected: bool) -> list[ModelRoute]:
    """The configured routes; with injected backends (tests), those to the backends given."""
    if not injected:
        return list(settings.routes)
    return [route for route in settings.routes if route.backend in backends]


def _reloading(
    reload: Callable[[], Settings], router: Router, keys: KeyRing, tenants: Tenants, *, injected: bool
) -> Callable[[], bool]:
    """What SIGHUP (and the admin API's reload) does: the keys, tenants and routes as the configuration
    now says (a blocking call: files and the database are read). False: it did not load, and
    what runs is unchanged."""

    one_at_a_time = threading.Lock()  # two signals in a row: the second reload waits for the first

    def apply() -> bool:
        with one_at_a_time:
            return load()

    def load() -> bool:
        try:
            fresh = reload()
            router.replace_routes(_routes(fresh, router.backends, injected=injected))
        except Exception as error:  # a bad edit keeps what runs now
            log.error("configuration not reloaded: %s", error)
            return False
        keys.replace_configured(fresh.api_keys)
        tenants.replace(fresh.tenants)
        keys.refresh()
        if not fresh.api_keys and keys.closed:
            log.warning("the configuration names no API keys: only issued keys are accepted now")
        log.info("configuration reloaded: %d API keys, %d routes", len(fresh.api_keys), len(fresh.routes))
        return True

    return apply


async def _sweep(caches: CachedContents, interval_s: float) -> None:
    """Remove expired context caches on schedule (lookups already refuse them)."""
    while True:
        try:
            removed = await caches.sweep()
            if removed:
                log.info("removed %d expired context caches", removed)
        except Exception:
            log.exception("could not remove expired context caches")
        await asyncio.sleep(interval_s)


def _signing_secret(settings: Settings) -> bytes:
    """The configured secret (how replicas behind a load balancer share one), else the one kept in
    state_dir. A malformed setting stops the start, named but not echoed."""
    configured = settings.thought_signature_secret
    if configured is None:
        return load_or_create_secret(settings.state_dir / SECRET_FILE)
    secret = parse_secret(configured.get_secret_value())
    if secret is None:
        raise ValueError(
            f"thought_signature_secret (OPENVERTEX_THOUGHT_SIGNATURE_SECRET) must be {SECRET_BYTES * 2} hexadecimal "
            f"characters ({SECRET_BYTES} bytes), as `openssl rand -hex {SECRET_BYTES}` prints; the value given "
            f"has {len(configured.get_secret_value().strip())} characters"
        )
    return secret
