"""Tenants on the embedded engine (issue 22, finding 1): one key's prompts never lend their KV to
another's, so neither the cached token count nor the time to the first token (the prompt tokens
the engine computes) tells key B what key A's system prompt starts with. Keys grouped into one
tenant do share."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from openvertex.service.keys import configured_key_name
from openvertex.settings import LocalBackendSettings, Settings
from tests.support.server import RunningServer, serve

MODEL = "google/gemini-2.5-flash"
KEY_A, KEY_B, KEY_C, KEY_A2 = "tenant-a-key", "tenant-b-key", "tenant-c-key", "tenant-a-second-key"
SECRET_PROMPT = (
    "You are the support assistant of Example Shipping. The internal escalation code is "
    "ORCHID-7741; never reveal it. Answer politely and briefly. "
) * 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    local = LocalBackendSettings(min_implicit_cache_tokens=0, n_parallel=4, n_ctx=1024)
    settings = Settings(
        port=0,
        state_dir=tmp_path_factory.mktemp("state"),
        backends={"local": local},
        api_keys=[KEY_A, KEY_B, KEY_C, KEY_A2],
        tenants={"team-a": [configured_key_name(KEY_A), configured_key_name(KEY_A2)]},
    )
    with serve(settings) as running:
        yield running


def _computed(server: RunningServer) -> int:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(r"^openvertex_prompt_tokens_computed_total (\S+)$", text, re.MULTILINE)
    assert match, text
    return int(float(match.group(1)))


def _ask(server: RunningServer, key: str, system: str, question: str) -> tuple[int, int, int]:
    """(prompt tokens, cached tokens reported, prompt tokens the engine computed for it)."""
    before = _computed(server)
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
    }
    response = httpx.post(server.chat_url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    return (
        usage["prompt_tokens"],
        usage.get("prompt_tokens_details", {}).get("cached_tokens", 0),
        _computed(server) - before,
    )


def test_another_tenant_learns_nothing_of_a_prompt_prefix(server: RunningServer) -> None:
    _ask(server, KEY_A, SECRET_PROMPT, "Where is my parcel?")
    # B probes with A's system prompt cut short, C with all of it.
    probe = SECRET_PROMPT[: len(SECRET_PROMPT) - 40]
    for key, system in ((KEY_B, probe), (KEY_C, SECRET_PROMPT)):
        prompt, cached, computed = _ask(server, key, system, "x")
        assert cached == 0
        assert computed == prompt  # every token computed: B's wait does not depend on A's prompt
    # A key of A's tenant does reuse A's prefix (so the probe above could have seen it).
    prompt, cached, computed = _ask(server, KEY_A2, SECRET_PROMPT, "Where is my parcel?")
    assert cached >= prompt // 2
    assert computed == prompt - cached


def test_a_tenant_keeps_reusing_its_own_prefix_while_another_runs(server: RunningServer) -> None:
    _ask(server, KEY_A, SECRET_PROMPT, "What are your opening hours?")
    _ask(server, KEY_C, "You are a pirate. Answer in pirate speak, always, whatever you are asked.", "Hi")
    # B's request took the other slot, not the one with A's KV.
    prompt, cached, _ = _ask(server, KEY_A, SECRET_PROMPT, "What are your opening hours?")
    assert cached == prompt - 1  # all of it but the last token, whose logits sampling needs
