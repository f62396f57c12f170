"""Tenants on self-deployed endpoints: with `tenant_cache_salt`, vLLM gets each tenant's own
`cache_salt` (its prefix cache is then never shared between tenants), whatever salt a client sends."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.service.keys import configured_key_name
from openvertex.settings import EndpointSettings, Settings
from tests.support.openai_upstream import Upstream, upstream_server
from tests.support.server import serve

KEYS = ["key-of-a", "key-of-b", "second-key-of-a"]


@pytest.mark.parametrize("salted", [True, False])
def test_each_tenant_gets_a_cache_salt_of_its_own(tmp_path: Path, salted: bool) -> None:
    with upstream_server(Upstream()) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60, tenant_cache_salt=salted)
        tenants = {"a": [configured_key_name(KEYS[0]), configured_key_name(KEYS[2])]}
        settings = Settings(port=0, state_dir=tmp_path, endpoints={"1": endpoint}, api_keys=KEYS, tenants=tenants)
        with serve(settings, backends={"local": FakeBackend()}) as server:
            url = f"{server.url}/v1/projects/p/locations/global/endpoints/1/chat/completions"
            for key in [*KEYS, KEYS[0]]:
                body = {"messages": [{"role": "user", "content": "Hi"}], "cache_salt": "guessed"}
                response = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
                assert response.status_code == 200, response.text
    salts = [json.loads(body)["cache_salt"] for body in upstream.bodies]
    if not salted:
        assert salts == ["guessed"] * 4  # the body goes up as the client sent it
        return
    a, b, a2, a_again = salts
    assert a == a2 == a_again != b  # one tenant, one salt; the client's own is replaced
    assert "guessed" not in salts and len(a) == 64


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32", "utf-16-le"])
def test_a_body_the_relay_cannot_read_as_utf8_never_goes_upstream(tmp_path: Path, encoding: str) -> None:
    """vLLM reads UTF-16 and UTF-32 JSON too: such a body would go up with its own cache_salt,
    model and stream options, past every edit the relay makes. It is a 400 instead."""
    with upstream_server(Upstream()) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60, tenant_cache_salt=True)
        settings = Settings(port=0, state_dir=tmp_path, endpoints={"1": endpoint}, api_keys=KEYS)
        with serve(settings, backends={"local": FakeBackend()}) as server:
            url = f"{server.url}/v1/projects/p/locations/global/endpoints/1/chat/completions"
            body = {"messages": [{"role": "user", "content": "Hi"}], "cache_salt": "theirs", "model": "other-lora"}
            headers = {"Authorization": f"Bearer {KEYS[1]}", "content-type": "application/json"}
            response = httpx.post(url, content=json.dumps(body).encode(encoding), headers=headers, timeout=30)
            assert response.status_code == 400
            error = response.json()[0]["error"]  # the endpoints' error shape: a list, as Vertex's
            assert error["message"] == "The request body must be a JSON object, in UTF-8."
            deep = b'{"messages": [], "pad": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past Python's recursion
            for bad in (b"[1, 2]", deep, b"\xff{}"):
                assert httpx.post(url, content=bad, headers=headers, timeout=30).status_code == 400
    assert upstream.bodies == []


def test_a_stream_flag_vllm_reads_as_true_is_asked_for_usage(tmp_path: Path) -> None:
    """vLLM's pydantic reads "stream": "true" or 1 as a stream: so does the relay's meter."""
    with upstream_server(Upstream()) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60)
        with serve(
            Settings(port=0, state_dir=tmp_path, endpoints={"1": endpoint}), backends={"local": FakeBackend()}
        ) as server:
            url = f"{server.url}/v1/projects/p/locations/global/endpoints/1/chat/completions"
            for flag in ("true", 1, "yes"):
                body = {"messages": [{"role": "user", "content": "Hi"}], "stream": flag}
                response = httpx.post(url, json=body, headers={"Authorization": "Bearer t"}, timeout=30)
                assert response.status_code == 200
                assert '"usage"' not in response.text  # the frame asked for is kept from the client
    asked = [json.loads(body).get("stream_options") for body in upstream.bodies]
    assert asked == [{"include_usage": True}] * 3
