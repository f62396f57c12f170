"""Prometheus metrics in the text exposition format: counters, gauges read on demand, histograms.

Each app owns one `Metrics`, so several servers in one process (tests) never share state.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    """A label value as the exposition format writes it."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""


@dataclass
class Counter:
    name: str
    help: str
    values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        return lines + [f"{self.name}{_labels(k)} {v:g}" for k, v in sorted(self.values.items())]


@dataclass
class Reading:
    """A value read when scraped: a gauge, or a counter kept elsewhere (the engine's)."""

    name: str
    help: str
    read: Callable[[], float]
    kind: str = "gauge"

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", f"{self.name} {self.read():g}"]


@dataclass
class LabelledReading:
    """Values read when scraped, one per label value (a backend's name, say)."""

    name: str
    help: str
    label: str
    read: Callable[[], dict[str, float]]
    kind: str = "counter"

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        return lines + [f"{self.name}{_labels(((self.label, k),))} {v:g}" for k, v in sorted(self.read().items())]


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    observations: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.observations += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            lines.append(f'{self.name}_bucket{{le="{le}"}} {cumulative}')
        return [*lines, f"{self.name}_sum {self.total:g}", f"{self.name}_count {self.observations}"]


class Metrics:
    def __init__(self) -> None:
        self.requests = Counter("openvertex_requests_total", "HTTP requests by route and status code.")
        self.time_to_first_token = Histogram(
            "openvertex_time_to_first_token_seconds", "From request to the first generated text."
        )
        self.time_per_token = Histogram(
            "openvertex_time_per_output_token_seconds", "Between successive streamed chunks of one answer."
        )
        self._readings: list[Reading | LabelledReading] = []

    def reading(self, name: str, help: str, read: Callable[[], float], kind: str = "gauge") -> None:
        self._readings.append(Reading(name, help, read, kind))

    def labelled_reading(
        self, name: str, help: str, label: str, read: Callable[[], dict[str, float]], kind: str = "counter"
    ) -> None:
        self._readings.append(LabelledReading(name, help, label, read, kind))

    def render(self) -> str:
        metrics: list[Counter | Reading | LabelledReading | Histogram] = [self.requests, *self._readings]
        lines: list[str] = []
        for metric in [*metrics, self.time_to_first_token, self.time_per_token]:
            lines += metric.render()
        return "\n".join(lines) + "\n"
