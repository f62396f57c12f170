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
