"""What each self-deployed endpoint counts, and how /metrics reads it (one series per endpoint id)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from openvertex.metrics import Metrics


@dataclass(slots=True)
class RelayStats:
    requests: int = 0  # forwarded, or refused for want of a replica
    errors: int = 0  # the gateway's own failures, answers cut short, and upstream 5xx answers
    retries: int = 0  # sent again to another replica after a connection failure
    seconds: float = 0.0  # from forwarding to the end of the relayed answer, summed


class HasStats(Protocol):
    @property
    def stats(self) -> RelayStats: ...


_READINGS = (
    ("requests", "Requests to self-deployed endpoints."),
    ("errors", "Self-deployed endpoint requests that failed: no replica, timeout, cut short, or upstream 5xx."),
    ("retries", "Self-deployed endpoint requests sent again to another replica after a connection failure."),
    ("seconds", "Seconds from forwarding to the end of relayed answers, summed."),
)


def register_relay_readings(metrics: Metrics, pools: Mapping[str, HasStats]) -> None:
    def per_endpoint(field: str) -> Callable[[], dict[str, float]]:
        return lambda: {endpoint: float(getattr(pool.stats, field)) for endpoint, pool in pools.items()}

    for field, help_text in _READINGS:
        metrics.labelled_reading(f"openvertex_endpoint_{field}_total", help_text, "endpoint", per_endpoint(field))
