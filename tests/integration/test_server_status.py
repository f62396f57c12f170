"""The JSON the web console reads (/console/api/…): its configuration, the models and endpoints a
key may name (without spending the key's quota), and the server's live status: requests counted
in their 5-second bucket (but the console's own polling), backends, relay endpoints (their
replicas' origins without the credentials a URL may carry) and context caches; the server-wide
status opens to an API key only while the server has a single tenant."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import openvertex
from openvertex.backends.fake import FakeBackend
from openvertex.service.keys import configured_key_name
from openvertex.settings import EndpointSettings, LocalBackendSettings, Settings
from tests.support.openai_upstream import Upstream, upstream_server
from tests.support.server import RunningServer, serve

MODEL = "google/gemini-2.5-flash"
ADMIN = {"Authorization": "Bearer admin-secret"}


def _chat(server: RunningServer, key: str = "any", **body: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "one two"}], **body}
    return httpx.post(server.chat_url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _status(server: RunningServer, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.get(f"{server.url}/console/api/status", headers=headers or {}, timeout=10)


@pytest.fixture
def closed_server(tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(port=0, state_dir=tmp_path / "state", api_keys=["key-one"], admin_keys=["admin-secret"])
    with serve(settings, backends={"local": FakeBackend()}) as server:
        yield server


def test_config_says_what_the_console_must_ask_for(fake_server: RunningServer, closed_server: RunningServer) -> None:
    assert httpx.get(f"{fake_server.url}/console/api/config").json() == {
        "keys_required": False,
        "admin": False,
        "version": openvertex.__version__,
    }
    config = httpx.get(f"{closed_server.url}/console/api/config")  # no key needed to learn that one is
    assert config.status_code == 200
    assert config.json() == {"keys_required": True, "admin": True, "version": openvertex.__version__}


def test_models_and_endpoints_need_a_key_but_spend_none_of_its_quota(tmp_path: Path) -> None:
    endpoints = {
        "relayed": EndpointSettings(upstreams=["http://127.0.0.1:9/v1"], health_interval_s=60),
        "pinned": EndpointSettings(backend="local"),
    }
    settings = Settings(port=0, state_dir=tmp_path / "state", admin_keys=["admin-secret"], endpoints=endpoints)
    with serve(settings, backends={"local": FakeBackend()}) as server:
        issued = httpx.post(f"{server.url}/admin/keys", json={"name": "once", "requests_per_minute": 1}, headers=ADMIN)
        key = {"Authorization": f"Bearer {issued.json()['key']}"}
        assert httpx.get(f"{server.url}/console/api/models").status_code == 401
        bad = httpx.get(f"{server.url}/console/api/models", headers={"Authorization": "Bearer ov-nope"})
        assert bad.status_code == 401
        if 60 - time.time() % 60 < 5:  # the key's minute must not turn during the test
            time.sleep(60 - time.time() % 60 + 0.05)
        for _ in range(3):  # more than the key's one request a minute
            listed = httpx.get(f"{server.url}/console/api/models", headers=key)
            assert listed.status_code == 200, listed.text
        v1 = httpx.get(f"{server.url}/v1/models", headers=key).json()  # its one request of the minute
        assert [model["id"] for model in listed.json()["models"]] == [model["id"] for model in v1["data"]]
        assert {model["backend"] for model in listed.json()["models"]} == {"local"}
        assert all(model["writes"] and not model["embeds"] for model in listed.json()["models"])
        assert listed.json()["endpoints"] == [{"id": "pinned"}, {"id": "relayed"}]
        assert httpx.get(f"{server.url}/v1/models", headers=key).status_code == 429  # the quota was the API's


def test_status_counts_requests_in_their_bucket_but_not_its_own_polling(fake_server: RunningServer) -> None:
    before = time.time()
    for _ in range(3):
        assert _chat(fake_server).status_code == 200
    assert _chat(fake_server, messages="not a list").status_code == 400
    for path in ("/", "/healthz", "/readyz", "/metrics", "/console/api/config"):
        httpx.get(f"{fake_server.url}{path}")
    after = time.time()
    _status(fake_server)  # polling counts nothing
    status = _status(fake_server).json()

    assert abs(status["time"] - time.time()) < 5 and status["uptime_s"] >= 0
    series = status["requests"]["series"]
    assert status["requests"]["bucket_s"] == 5 and len(series) == 120
    assert [point["t"] for point in series] == list(range(series[0]["t"], series[0]["t"] + 600, 5))
    assert series[-1]["t"] == int(status["time"] // 5) * 5
    busy = [point for point in series if point["requests"]]
    assert sum(point["requests"] for point in busy) == 4
    assert sum(point["client_errors"] for point in busy) == 1 and sum(p["server_errors"] for p in series) == 0
    assert all(int(before // 5) * 5 <= point["t"] <= int(after // 5) * 5 for point in busy)
    for point in busy:
        assert 0 < point["latency_ms_avg"] <= point["latency_ms_max"]
    idle = [point for point in series if not point["requests"]]
    assert idle and all(point["latency_ms_avg"] is point["latency_ms_max"] is None for point in idle)

    (backend,) = status["backends"]
    assert backend["name"] == "local" and backend["kind"] == "fake" and backend["ready"] is True
    assert backend["models"] == [route.model for route in Settings().routes if route.backend == "local"]
    assert backend["slots_total"] is None and backend["kv_tokens"] is None and backend["kv_capacity"] is None
    assert status["endpoints"] == []
    assert status["context_caches"] == {"count": 0, "bytes_memory": 0, "bytes_disk": 0}


def test_status_counts_the_context_caches_the_backends_keep(fake_server: RunningServer) -> None:
    resource = "projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
    created = httpx.post(
        f"{fake_server.url}/v1beta1/projects/p/locations/l/cachedContents",
        json={"model": resource, "contents": [{"role": "user", "parts": [{"text": "a document"}]}]},
        headers={"Authorization": "Bearer any"},
    )
    assert created.status_code == 200, created.text
    assert _status(fake_server).json()["context_caches"]["count"] == 1


@pytest.mark.parametrize(
    ("api_keys", "tenants", "key_one"),
    [
        (["key-one"], {}, 200),  # one key: one tenant
        (["key-one", "key-two"], {}, 403),  # two tenants: the whole server's counts would cross
        (["key-one", "key-two"], {"team": ["key-one", "key-two"]}, 200),  # grouped: one tenant again
    ],
)
def test_the_server_wide_status_opens_to_an_api_key_only_on_a_single_tenant_server(
    tmp_path: Path, api_keys: list[str], tenants: dict[str, list[str]], key_one: int
) -> None:
    groups = {name: [configured_key_name(key) for key in keys] for name, keys in tenants.items()}
    settings = Settings(
        port=0, state_dir=tmp_path / "state", api_keys=api_keys, admin_keys=["admin-secret"], tenants=groups
    )
    with serve(settings, backends={"local": FakeBackend()}) as server:
        assert _status(server).status_code == 401
        assert _status(server, {"Authorization": "Bearer wrong"}).status_code == 401
        assert _status(server, ADMIN).status_code == 200
        answered = _status(server, {"Authorization": "Bearer key-one"})
        assert answered.status_code == key_one, answered.text
        if key_one == 403:
            error = answered.json()["error"]
            assert error["status"] == "PERMISSION_DENIED" and "admin key" in error["message"]


def test_an_open_server_shows_its_status_without_a_key(fake_server: RunningServer) -> None:
    assert _status(fake_server).status_code == 200


def test_a_replica_is_shown_by_its_origin_never_its_credentials(tmp_path: Path) -> None:
    with upstream_server(Upstream()) as upstream:
        assert upstream.url.startswith("http://127.0.0.1:")
        with_credentials = upstream.url.replace("http://", "http://relay-user:relay-password@")
        endpoint = EndpointSettings(upstreams=[with_credentials], health_interval_s=60)
        settings = Settings(port=0, state_dir=tmp_path / "state", endpoints={"7": endpoint})
        with serve(settings, backends={"local": FakeBackend()}) as server:
            relayed = httpx.post(
                f"{server.url}/v1/projects/p/locations/global/endpoints/7/chat/completions",
                json={"messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer any"},
            )
            assert relayed.status_code == 200, relayed.text
            status = _status(server)
    assert "relay-user" not in status.text and "relay-password" not in status.text
    (shown,) = status.json()["endpoints"]
    assert shown["id"] == "7" and shown["requests"] == 1 and shown["errors"] == shown["retries"] == 0
    origin = upstream.url.removesuffix("/v1")
    assert shown["replicas"] == [{"origin": origin, "healthy": True, "in_flight": 0, "failures": 0}]


def test_the_local_engine_reports_its_slots_and_kv(local_server: RunningServer) -> None:
    """The real engine: a finished request's slot keeps its prompt's KV for the next one."""
    assert _chat(local_server, max_tokens=4).status_code == 200
    backend = next(b for b in _status(local_server).json()["backends"] if b["kind"] == "local")
    configured = LocalBackendSettings()
    assert backend["slots_total"] == configured.n_parallel
    assert backend["kv_capacity"] == configured.n_ctx * configured.n_parallel
    assert 0 < backend["kv_tokens"] <= backend["kv_capacity"]
    assert backend["tokens_generated"] > 0
    scraped = httpx.get(f"{local_server.url}/metrics").text
    kv_line = next(line for line in scraped.splitlines() if line.startswith("openvertex_kv_tokens "))
    assert float(kv_line.split()[1]) > 0
    assert 'openvertex_context_cache_bytes{where="disk"}' in scraped
