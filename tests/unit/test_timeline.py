"""The console's timeline: each request in the bucket it ended in, every bucket of the last ten
minutes listed (empty ones as zeros and nulls), the tokens each bucket's readings saw generated,
and nothing older kept."""

from __future__ import annotations

from openvertex.timeline import Timeline

T0 = 1_700_000_000  # a multiple of 5


def _timeline(generated: dict[str, int]) -> Timeline:
    return Timeline(lambda: generated)


def test_requests_land_in_their_bucket_with_their_latency_and_errors() -> None:
    timeline = _timeline({})
    timeline.record(200, 10.0, now=T0 + 1)
    timeline.record(404, 30.0, now=T0 + 4.9)
    timeline.record(503, 5.0, now=T0 + 5)
    series = timeline.series(now=T0 + 7)
    assert len(series) == 120 and series[-1]["t"] == T0 + 5 and series[0]["t"] == T0 + 5 - 595
    assert series[-2] == {
        "t": T0,
        "requests": 2,
        "errors": 1,
        "client_errors": 1,
        "server_errors": 0,
        "latency_ms_avg": 20.0,
        "latency_ms_max": 30.0,
        "tokens": 0,
    }
    assert (series[-1]["requests"], series[-1]["server_errors"], series[-1]["latency_ms_max"]) == (1, 1, 5.0)
    assert series[0] == {
        "t": T0 - 590,
        "requests": 0,
        "errors": 0,
        "client_errors": 0,
        "server_errors": 0,
        "latency_ms_avg": None,
        "latency_ms_max": None,
        "tokens": 0,
    }


def test_tokens_are_those_generated_between_readings_in_each_bucket() -> None:
    generated = {"local": 100, "gemini": 0}
    timeline = _timeline(generated)
    timeline.sample(now=T0)
    generated["local"] = 130
    timeline.sample(now=T0 + 4)
    generated["local"], generated["gemini"] = 150, 5  # generated after the last reading of the first bucket
    timeline.sample(now=T0 + 6)
    generated["local"] = 160
    series = timeline.series(now=T0 + 9)
    assert [point["tokens"] for point in series[-2:]] == [30, 35]
    # The rate is the last complete bucket's.
    assert timeline.tokens_per_second(now=T0 + 9) == {"local": 6.0, "gemini": 0.0}
    # A first bucket alone: its own rate so far.
    fresh = _timeline(generated)
    fresh.sample(now=T0)
    generated["local"] = 170
    assert fresh.tokens_per_second(now=T0 + 2) == {"local": 5.0, "gemini": 0.0}


def test_buckets_older_than_the_window_are_dropped() -> None:
    timeline = _timeline({})
    timeline.record(200, 1.0, now=T0)
    assert sum(point["requests"] for point in timeline.series(now=T0 + 599)) == 1
    timeline.record(200, 1.0, now=T0 + 600)
    series = timeline.series(now=T0 + 600)
    assert sum(point["requests"] for point in series) == 1 and series[-1]["requests"] == 1
    assert len(timeline._buckets) <= 120
