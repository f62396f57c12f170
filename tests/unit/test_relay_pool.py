"""Self-deployed endpoints without a network: the `model` edit, replica choice, failures and health."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import SecretStr

from openvertex.metrics import Metrics
from openvertex.relay.model_member import top_level_members, with_model
from openvertex.relay.replicas import Replica, ReplicaSet
from openvertex.relay.stats import RelayStats, register_relay_readings
from openvertex.relay.upstream_auth import BearerToken, GoogleToken, NoAuth, upstream_auth
from openvertex.relay.usage import AnswerUsage, StreamUsage, Usage, asking_for_usage, meter_for
from openvertex.settings import EndpointSettings

# ---- the `model` member: only its bytes change -------------------------------------------------

BODY = (
    b'{ "model" : "google/gemini-2.5-flash",\n  "messages": [{"role": "user", "content": "1.0e2 \\u00e9"}], "n": 1.50 }'
)


def test_drops_model_keeping_every_other_byte() -> None:
    assert with_model(BODY, None) == b'{ "messages": [{"role": "user", "content": "1.0e2 \\u00e9"}], "n": 1.50 }'


def test_rewrites_model_keeping_every_other_byte() -> None:
    expected = b'{ "model" : "served/name",\n  "messages": [{"role": "user", "content": "1.0e2 \\u00e9"}], "n": 1.50 }'
    assert with_model(BODY, "served/name") == expected


def test_adds_model_when_absent() -> None:
    assert with_model(b'{"messages": []}', "m") == b'{"model":"m","messages": []}'
    assert with_model(b" { } ", "m") == b' {"model":"m" } '


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"messages": [], "model": "x"}', b'{"messages": []}'),
        (b'{"model": "x"}', b"{}"),
        (b'{"a": 1, "model": 1, "b": 2, "model": 3}', b'{"a": 1, "b": 2}'),
        (b'{"model": 1, "model": 2}', b"{}"),
        (b'{"m\\u006fdel": "escaped", "a": {"model": "nested stays"}}', b'{"a": {"model": "nested stays"}}'),
    ],
)
def test_drops_every_model_member(body: bytes, expected: bytes) -> None:
    assert with_model(body, None) == expected
    assert "model" not in json.loads(with_model(body, None))


def test_rewrites_every_duplicate() -> None:
    assert with_model(b'{"model": 1, "a": 2, "model": 3}', "m") == b'{"model": "m", "a": 2, "model": "m"}'


@pytest.mark.parametrize(
    "body",
    [b'{"messages": []}', b"not json", b'["model"]', b'{"model": "x"', b"\xff\xfe", b'{"model": "x",}', b""],
)
def test_leaves_bodies_without_a_model_or_not_objects_unchanged(body: bytes) -> None:
    assert with_model(body, None) == body


def test_deep_nesting_is_forwarded_as_is() -> None:
    body = b'{"model": "x", "a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert with_model(body, None) == body  # the upstream judges it


def test_top_level_members_positions() -> None:
    text = '{"a": [1, {"b": 2}], "model": "m"}'
    top = top_level_members(text)
    assert [(m.key, text[m.value_start : m.end]) for m in top.members] == [("a", '[1, {"b": 2}]'), ("model", '"m"')]
    assert text[top.close_brace] == "}"


# ---- usage: asked of a stream, read from the answer as it passes ---------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"stream": true, "n": 1}', b'{"stream_options":{"include_usage":true},"stream": true, "n": 1}'),
        (
            b'{"stream": true, "stream_options": {"include_usage": false}}',
            b'{"stream": true, "stream_options": {"include_usage":true}}',
        ),
        (
            b'{"stream_options": {"continuous_usage_stats": true}, "stream": true}',
            b'{"stream_options": {"continuous_usage_stats":true,"include_usage":true}, "stream": true}',
        ),
    ],
)
def test_a_stream_that_does_not_ask_for_usage_is_made_to(body: bytes, expected: bytes) -> None:
    assert asking_for_usage(body) == (expected, True)


@pytest.mark.parametrize(
    "body",
    [
        b'{"stream": true, "stream_options": {"include_usage": true}}',  # asked already
        b'{"messages": [], "stream": false}',
        b'{"messages": [{"content": ""stream": true"}]}',
        b'{"stream": true',
        b"not json",
    ],
)
def test_other_bodies_go_up_unchanged(body: bytes) -> None:
    assert asking_for_usage(body) == (body, False)


FRAME = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}'
USAGE_FRAME = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}'


def _relayed(meter: StreamUsage | AnswerUsage, chunks: list[bytes]) -> bytes:
    return b"".join(meter.feed(chunk) for chunk in chunks) + meter.finish()


@pytest.mark.parametrize("separator", [b"\n\n", b"\r\n\r\n"])
def test_the_usage_frame_is_withheld_wherever_the_bytes_are_cut(separator: bytes) -> None:
    stream = separator.join([FRAME, FRAME, b": a comment", USAGE_FRAME, b"data: [DONE]", b""])
    withheld = separator.join([FRAME, FRAME, b": a comment", b"data: [DONE]", b""])
    for size in (1, 2, 7, len(stream)):
        meter = StreamUsage(strip_usage_frame=True)
        assert _relayed(meter, [stream[i : i + size] for i in range(0, len(stream), size)]) == withheld
        assert meter.usage(complete=True) == Usage(7, 2)


def test_a_stream_whose_client_asked_passes_as_it_came() -> None:
    stream = b"\n\n".join([FRAME, USAGE_FRAME, b"data: [DONE]", b""])
    meter = StreamUsage(strip_usage_frame=False)
    chunks = [stream[i : i + 5] for i in range(0, len(stream), 5)]
    assert [meter.feed(chunk) for chunk in chunks] == chunks
    assert meter.finish() == b""
    assert meter.usage(complete=True) == Usage(7, 2)


def test_usage_on_the_last_frame_with_choices_is_read_and_relayed() -> None:
    """As Vertex and openvertex write it: the finish reason and the usage in one frame."""
    last = (
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    )
    stream = b"\n\n".join([FRAME, last, b"data: [DONE]", b""])
    meter = StreamUsage(strip_usage_frame=True)
    assert _relayed(meter, [stream]) == stream
    assert meter.usage(complete=True) == Usage(3, 1)


def test_a_stream_without_usage_counts_its_frames() -> None:
    meter = StreamUsage(strip_usage_frame=True)
    assert _relayed(meter, [b"\n\n".join([FRAME, FRAME, FRAME, b""])]) == b"\n\n".join([FRAME, FRAME, FRAME, b""])
    assert meter.usage(complete=False) == Usage(0, 3)  # the client left before the end: counted all the same
    assert StreamUsage(strip_usage_frame=True).usage(complete=True) is None


def test_a_frame_past_the_limit_is_passed_on_unread() -> None:
    meter = StreamUsage(strip_usage_frame=True)
    huge = b"data: " + b"x" * (1 << 20)
    assert _relayed(meter, [huge, b"\n\n", USAGE_FRAME + b"\n\n"]) == huge + b"\n\n" + USAGE_FRAME + b"\n\n"
    assert meter.usage(complete=True) is None


def test_a_whole_answer_gives_its_top_level_usage() -> None:
    answer = (
        b'{"choices":[{"message":{"content":"{\\"usage\\": {\\"prompt_tokens\\": 99}}"}}],'
        b'"usage":{"prompt_tokens":5,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1}},"x":[]}'
    )
    meter = AnswerUsage()
    assert _relayed(meter, [answer[:10], answer[10:]]) == answer
    assert meter.usage(complete=True) == Usage(5, 4)
    assert meter.usage(complete=False) is None
    without = AnswerUsage()
    without.feed(b'{"choices":[],"usage":null}')
    assert without.usage(complete=True) is None


def test_an_embeddings_answer_counts_its_prompt_tokens_only() -> None:
    answer = (
        b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5]}],'
        b'"usage":{"prompt_tokens":6,"total_tokens":6}}'
    )
    meter = meter_for("application/json", strip_usage_frame=False, operation="embeddings")
    assert isinstance(meter, AnswerUsage)
    assert _relayed(meter, [answer]) == answer
    assert meter.usage(complete=True) == Usage(6, 0)
    assert AnswerUsage().usage(complete=True) is None  # a chat answer needs completion_tokens
    # An embeddings answer is never a stream: one that comes as one is not read.
    assert meter_for("text/event-stream", strip_usage_frame=False, operation="embeddings") is None


# ---- replicas: least outstanding requests, failures in a row, health -----------------------------


def _replicas(count: int, max_failures: int = 2) -> ReplicaSet:
    return ReplicaSet(
        [Replica.at(f"http://127.0.0.1:{9000 + i}/v1", "/health") for i in range(count)], max_failures=max_failures
    )


def test_replica_urls() -> None:
    replica = Replica.at("https://vllm.example:8443/v1/", "health")
    assert replica.chat_url == "https://vllm.example:8443/v1/chat/completions"
    assert replica.embeddings_url == "https://vllm.example:8443/v1/embeddings"
    assert replica.url_for("embeddings") == replica.embeddings_url
    assert replica.url_for("chat/completions") == replica.chat_url
    assert replica.health_url == "https://vllm.example:8443/health"
    assert replica.origin == "https://vllm.example:8443"
    with pytest.raises(ValueError, match="http"):
        Replica.at("vllm:8000/v1", "/health")


def test_picks_least_outstanding() -> None:
    replicas = _replicas(3)
    a, b, c = replicas.replicas
    a.outstanding, b.outstanding, c.outstanding = 2, 0, 1
    assert replicas.pick() is b
    assert replicas.pick(exclude=[b]) is c


def test_ties_go_round() -> None:
    replicas = _replicas(3)
    assert [replicas.pick() for _ in range(6)] == [*replicas.replicas, *replicas.replicas]


def test_taken_out_after_failures_in_a_row_and_back_when_healthy() -> None:
    replicas = _replicas(2, max_failures=2)
    a, b = replicas.replicas
    replicas.failed(a, "refused")
    replicas.succeeded(a)  # a success resets the count
    replicas.failed(a, "refused")
    assert a.in_service
    replicas.failed(a, "refused")
    assert not a.in_service
    assert [replicas.pick() for _ in range(3)] == [b, b, b]
    replicas.checked(a, healthy=True)
    assert a.in_service and a.failures == 0


def test_failed_health_checks_count_as_failures() -> None:
    replicas = _replicas(1, max_failures=2)
    (a,) = replicas.replicas
    replicas.checked(a, healthy=False)
    assert replicas.in_service()
    replicas.checked(a, healthy=False)
    assert not replicas.in_service() and replicas.pick() is None


# ---- upstream auth, stats ----------------------------------------------------------------------


def test_auth_kinds() -> None:
    replica = Replica.at("http://127.0.0.1:1/v1", "/health")
    assert isinstance(upstream_auth(EndpointSettings(upstreams=["http://a/v1"])), NoAuth)
    bearer = upstream_auth(EndpointSettings(upstreams=["http://a/v1"], auth="bearer", bearer_token=SecretStr("s3")))
    assert isinstance(bearer, BearerToken)
    assert asyncio.run(bearer.headers(replica)) == {"Authorization": "Bearer s3"}
    google = EndpointSettings(upstreams=["http://a/v1"], auth="google-id-token")
    assert isinstance(upstream_auth(google), GoogleToken)  # credentials are loaded on first use, not here


def test_stats_are_read_per_endpoint() -> None:
    class Pool:
        def __init__(self, stats: RelayStats) -> None:
            self.stats = stats

    metrics = Metrics()
    register_relay_readings(metrics, {"123": Pool(RelayStats(requests=3, retries=1, seconds=0.5))})
    text = metrics.render()
    assert 'openvertex_endpoint_requests_total{endpoint="123"} 3' in text
    assert 'openvertex_endpoint_retries_total{endpoint="123"} 1' in text
    assert 'openvertex_endpoint_seconds_total{endpoint="123"} 0.5' in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:secret@10.0.0.5:8000/v1", "http://10.0.0.5:8000"),
        ("https://token@vllm.internal/openai/v1", "https://vllm.internal"),
        ("http://u:p@[::1]:9000/v1", "http://[::1]:9000"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000"),
    ],
)
def test_a_replica_is_shown_by_its_origin_without_credentials(url: str, shown: str) -> None:
    assert Replica.at(url, "/health").public_origin == shown
