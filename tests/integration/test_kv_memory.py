"""The real engine's KV cache costs memory only for the cells its slots hold (kv_pages.py): none
after loading, a request's tokens while its slot keeps them, and less again when a shorter
prompt takes the slot; the answers are those of cells computed anew."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from openvertex.settings import LocalBackendSettings, Settings
from tests.support.server import RunningServer, serve

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the KV's pages are given back on Linux")

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"
PAGE = 4096
TOKEN_BYTES = 30 * 2 * 192 * 2  # SmolLM2-135M: 30 layers, K and V, 3 heads of 64 values, f16
SLACK = 30 * 2 * 2 * PAGE  # a partly used page at each end of each layer's K and V stream


def _resident(server: RunningServer) -> float:
    scraped = httpx.get(f"{server.url}/metrics").text
    line = re.search(r'^openvertex_kv_resident_bytes\{backend="local"\} (\S+)$', scraped, re.MULTILINE)
    assert line, "the engine's KV memory is not reported"
    return float(line.group(1))


def _ask(server: RunningServer, content: str, **extra: object) -> dict[str, object]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, "seed": 3, **extra}
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=180)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def _tokens(result: dict[str, object]) -> int:
    usage = result["usage"]
    return int(usage["prompt_tokens"]) + int(usage["completion_tokens"])  # type: ignore[index]


def test_a_slot_costs_what_it_holds(tmp_path: Path) -> None:
    local = LocalBackendSettings(n_parallel=1, n_ctx=2048)
    long = " ".join(f"Item {i} weighs {i * 3} grams." for i in range(120)) + " Which item is heaviest?"
    with serve(Settings(port=0, state_dir=tmp_path, backends={"local": local})) as server:
        assert _resident(server) <= 2 * PAGE  # loaded: 45 MiB of KV reserved, none of it in memory
        first = _ask(server, long, logprobs=True)
        held = _tokens(first) * TOKEN_BYTES
        assert _tokens(first) > 1000
        assert 0.9 * held <= _resident(server) <= held + SLACK
        short = _ask(server, "Name a colour.")  # the one slot takes it: the long prompt's cells are let go
        assert _resident(server) <= _tokens(short) * TOKEN_BYTES + SLACK
        again = _ask(server, long, logprobs=True)  # computed anew into the pages given back
    assert [c["logprobs"] for c in again["choices"]] == [c["logprobs"] for c in first["choices"]]  # type: ignore[index]


def test_candidates_that_copy_a_prompt_cost_only_what_they_hold(tmp_path: Path) -> None:
    """The candidates of one request copy the prompt's KV stream whole (llama.cpp); the copies'
    cells past what they hold go back after the copy."""
    local = LocalBackendSettings(n_parallel=3, n_ctx=2048)
    prompt = " ".join(f"Fact {i}: {i} squared is {i * i}." for i in range(60)) + " Name one fact."
    with serve(Settings(port=0, state_dir=tmp_path, backends={"local": local})) as server:
        answer = _ask(server, prompt, n=3, temperature=1.0)
        held = 3 * _tokens(answer) * TOKEN_BYTES
        assert _resident(server) <= held + 3 * SLACK  # not three whole streams (3 x 45 MiB)
