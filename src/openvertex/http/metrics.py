"""What the HTTP edge reports to /metrics: requests by route and status, and backend load."""

from __future__ import annotations

from collections.abc import Callable

from openvertex.backends.base import BackendLoad
from openvertex.metrics import Metrics
from openvertex.service.routing import Router

_ROUTES: tuple[tuple[str, str], ...] = (
    ("/chat/completions", "chat_completions"),
    ("/v1/models", "models"),
    ("/healthz", "healthz"),
    ("/readyz", "readyz"),
    ("/metrics", "metrics"),
    ("/openapi.json", "openapi"),
)


_NATIVE_METHODS = ("generateContent", "streamGenerateContent", "countTokens", "computeTokens")


def route_name(path: str) -> str:
    method = path.rpartition(":")[2] if ":" in path.rpartition("/")[2] else ""
    if method in _NATIVE_METHODS:
        return method
    if "/cachedContents" in path:
        return "cached_contents"
    return next((name for suffix, name in _ROUTES if path.endswith(suffix)), "other")


def register_backend_readings(metrics: Metrics, router: Router) -> None:
    def total(field: str) -> float:
        return float(sum(getattr(backend.load(), field) for backend in router.backends.values()))

    metrics.reading("openvertex_sequences_running", "Sequences being decoded.", lambda: total("running"))
    metrics.reading("openvertex_requests_waiting", "Requests admitted, waiting for a slot.", lambda: total("waiting"))
    metrics.reading(
        "openvertex_tokens_generated_total", "Tokens generated.", lambda: total("tokens_generated"), "counter"
    )

    def per_backend(field: str) -> Callable[[], dict[str, float]]:
        return lambda: {name: float(getattr(backend.load(), field)) for name, backend in router.backends.items()}

    for field, help_text in (
        ("upstream_requests", "Requests a backend sent upstream (Gemini, …)."),
        ("upstream_errors", "Upstream requests that ended in an error, after retries."),
        ("upstream_retries", "Upstream requests retried (connection failures, 429/503)."),
        ("upstream_seconds", "Seconds spent waiting on upstream answers, summed."),
    ):
        metrics.labelled_reading(f"openvertex_{field}_total", help_text, "backend", per_backend(field))
    metrics.reading(
        "openvertex_kv_tokens",
        "Tokens whose KV the local engines' slots hold (prefixes kept for reuse included).",
        lambda: float(sum(backend.load().kv_tokens or 0 for backend in router.backends.values())),
    )

    def per_local_backend(read: Callable[[BackendLoad], float | None]) -> Callable[[], dict[str, float]]:
        """One reading for each backend that has it (a local engine's, a resident model's)."""

        def readings() -> dict[str, float]:
            values = ((name, read(backend.load())) for name, backend in router.backends.items())
            return {name: value for name, value in values if value is not None}

        return readings

    metrics.labelled_reading(
        "openvertex_kv_resident_bytes",
        "Bytes of a local engine's KV cache in memory (cells that hold nothing cost none).",
        "backend",
        per_local_backend(lambda load: load.kv_resident_bytes),
        "gauge",
    )
    metrics.labelled_reading(
        "openvertex_model_loaded",
        "Whether a local model is in memory now (1), or let go or not yet loaded (0).",
        "backend",
        per_local_backend(lambda load: None if load.model_state is None else float(load.model_state == "loaded")),
        "gauge",
    )
    metrics.labelled_reading(
        "openvertex_model_loads_total",
        "Loads of a local model since start (a model let go loads again on use).",
        "backend",
        per_local_backend(lambda load: None if load.model_state is None else load.model_loads),
    )

    def cache_bytes() -> dict[str, float]:
        usages = [backend.cache_usage() for backend in router.backends.values()]
        return {
            "memory": float(sum(usage.bytes_memory for usage in usages)),
            "disk": float(sum(usage.bytes_disk for usage in usages)),
        }

    metrics.labelled_reading(
        "openvertex_context_cache_bytes", "Bytes of context caches' KV snapshots kept.", "where", cache_bytes, "gauge"
    )
    metrics.reading(
        "openvertex_texts_embedded_total",
        "Texts embedded by embedding models.",
        lambda: total("texts_embedded"),
        "counter",
    )
    metrics.reading(
        "openvertex_prompt_tokens_computed_total",
        "Prompt tokens prefilled (reused prefixes excluded).",
        lambda: total("tokens_prefilled"),
        "counter",
    )
