"""API keys, the routes beside chat completions, and readiness."""

from __future__ import annotations

import httpx

from openvertex.backends.fake import FakeBackend
from openvertex.settings import Settings
from tests.integration.test_errors import assert_google_error
from tests.support.server import RunningServer, serve

BODY = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": "hello there"}]}


def test_configured_keys_are_required() -> None:
    with serve(Settings(port=0, api_keys=["k-one", "k-two"]), backends={"local": FakeBackend()}) as server:
        assert_google_error(httpx.post(server.chat_url, json=BODY), 401, "UNAUTHENTICATED")
        wrong = httpx.post(server.chat_url, json=BODY, headers={"Authorization": "Bearer k-three"})
        assert_google_error(wrong, 401, "UNAUTHENTICATED", "invalid authentication credentials")
        assert httpx.post(server.chat_url, json=BODY, headers={"Authorization": "Bearer k-two"}).status_code == 200
        assert httpx.post(server.chat_url, json=BODY, headers={"x-goog-api-key": "k-one"}).status_code == 200
        assert httpx.post(f"{server.chat_url}?key=k-one", json=BODY).status_code == 200
        assert_google_error(httpx.get(f"{server.url}/v1/models"), 401, "UNAUTHENTICATED")


def test_plain_openai_routes(fake_server: RunningServer) -> None:
    response = httpx.post(f"{fake_server.url}/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer t"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello there"
    models = httpx.get(f"{fake_server.url}/v1/models", headers={"Authorization": "Bearer t"}).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["google/*", "smollm2"]


def test_both_api_versions_and_any_location(fake_server: RunningServer) -> None:
    for version in ("v1", "v1beta1"):
        for location in ("us-central1", "europe-west4", "global"):
            url = f"{fake_server.url}/{version}/projects/p-1/locations/{location}/endpoints/openapi/chat/completions"
            assert httpx.post(url, json=BODY, headers={"Authorization": "Bearer t"}).status_code == 200
    other = f"{fake_server.url}/v2/projects/p/locations/l/endpoints/openapi/chat/completions"
    assert_google_error(httpx.post(other, json=BODY, headers={"Authorization": "Bearer t"}), 404, "NOT_FOUND")


def test_health_needs_no_credentials(fake_server: RunningServer) -> None:
    assert httpx.get(f"{fake_server.url}/healthz").status_code == 200
    assert httpx.get(f"{fake_server.url}/readyz").json() == {"status": "ready"}
