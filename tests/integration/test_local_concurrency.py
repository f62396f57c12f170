"""The batching engine with the real model: many requests at once, shared prompts, prefix reuse."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from openvertex.settings import LocalBackendSettings, Settings
from tests.integration.test_local_capacity import metric
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
MODEL = "google/gemini-2.5-flash"


@pytest.fixture(scope="module")
def reporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The embedded model reporting every reused prefix as cached tokens, however short."""
    local = LocalBackendSettings(min_implicit_cache_tokens=0)
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"), backends={"local": local})) as server:
        yield server


def _ask(server: RunningServer, seed: int, topic: int | None = None, **extra: object) -> dict[str, object]:
    body = {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": f"Tell me a fact about the number {seed if topic is None else topic}."}
        ],
        "max_tokens": 24,
        "seed": seed,
        "temperature": 1.0,
        **extra,
    }
    return _post(server, body)


def _post(server: RunningServer, body: dict[str, object]) -> dict[str, object]:
    response = httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


def _text(result: dict[str, object]) -> list[str]:
    return [c["message"]["content"] for c in result["choices"]]  # type: ignore[attr-defined, index]


def test_sixteen_at_once_answer_as_each_does_alone(local_server: RunningServer) -> None:
    seeds = list(range(100, 116))
    alone = {seed: _text(_ask(local_server, seed)) for seed in seeds}
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = dict(zip(seeds, pool.map(lambda s: _text(_ask(local_server, s)), seeds), strict=True))
    assert together == alone


def test_candidates_share_the_prompt_and_stay_reproducible(local_server: RunningServer) -> None:
    first = _text(_ask(local_server, 7, n=4))
    assert len(first) == 4 and len(set(first)) > 1
    with ThreadPoolExecutor(max_workers=3) as pool:  # also with other work in the batch
        others = [pool.submit(_ask, local_server, s) for s in (1, 2)]
        again = _text(_ask(local_server, 7, n=4))
        [o.result() for o in others]
    assert again == first
    # Candidate i of seed s samples like a lone request with seed s + i: the copied prompt KV
    # is exactly the KV the lone request computes for itself.
    assert first[1:] == [_text(_ask(local_server, 7 + i, topic=7))[0] for i in (1, 2, 3)]


def test_next_turn_reuses_the_cached_prefix(reporting: RunningServer) -> None:
    local_server = reporting
    history = [
        {"role": "system", "content": "You are a terse assistant who answers in one sentence. " * 8},
        {"role": "user", "content": "Name a colour."},
    ]
    body = {"model": MODEL, "messages": history, "max_tokens": 8, "temperature": 0}
    first = httpx.post(local_server.chat_url, json=body, headers=AUTH, timeout=60).json()
    reply = first["choices"][0]["message"]["content"]
    turn = [*history, {"role": "assistant", "content": reply}, {"role": "user", "content": "Another one."}]
    second = httpx.post(local_server.chat_url, json={**body, "messages": turn}, headers=AUTH, timeout=60).json()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    # The whole first prompt (system prompt and first question) is reused.
    assert first["usage"]["prompt_tokens"] <= cached < second["usage"]["prompt_tokens"]


def test_a_shared_system_prompt_is_computed_once(reporting: RunningServer) -> None:
    local_server = reporting
    system = {"role": "system", "content": "You are the ship's computer. Answer in the ship's log style. " * 6}
    endless = {"type": "json_schema", "json_schema": {"name": "N", "schema": {"type": "array", "minItems": 3000}}}
    running = {"model": MODEL, "messages": [system, {"role": "user", "content": "Log everything."}]}
    with httpx.stream(
        "POST",
        local_server.chat_url,
        json={**running, "response_format": endless, "stream": True},
        headers=AUTH,
        timeout=60,
    ) as stream:
        lines = stream.iter_lines()
        next(line for line in lines if line.startswith("data: {"))
        # While that request still runs in its slot, another one starts with the same system prompt.
        other = {"model": MODEL, "messages": [system, {"role": "user", "content": "Status?"}], "max_tokens": 4}
        result = httpx.post(local_server.chat_url, json=other, headers=AUTH, timeout=60).json()
    cached = result["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert 60 < cached < result["usage"]["prompt_tokens"]
    alone = httpx.post(local_server.chat_url, json={**other, "seed": 5, "temperature": 1.0}, headers=AUTH, timeout=60)
    again = httpx.post(local_server.chat_url, json={**other, "seed": 5, "temperature": 1.0}, headers=AUTH, timeout=60)
    assert [c["message"]["content"] for c in alone.json()["choices"]] == [
        c["message"]["content"] for c in again.json()["choices"]
    ]


def test_a_short_reused_prefix_is_not_reported_as_cached(local_server: RunningServer) -> None:
    # As Gemini reports implicit cache hits: only from its minimum cacheable size (1024 tokens by
    # default), though the prefix is reused all the same.
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4}
    first = httpx.post(local_server.chat_url, json=body, headers=AUTH, timeout=60).json()
    computed = metric(local_server, "openvertex_prompt_tokens_computed_total")
    again = httpx.post(local_server.chat_url, json=body, headers=AUTH, timeout=60).json()
    reused = first["usage"]["prompt_tokens"] - (
        metric(local_server, "openvertex_prompt_tokens_computed_total") - computed
    )
    assert reused > 0  # the second request reused the first one's prefix
    assert not (again["usage"].get("prompt_tokens_details") or {}).get("cached_tokens")


def test_more_candidates_than_slots(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Vertex takes up to 8 candidates whatever the deployment: on two slots they decode in waves,
    # and candidate i still samples as a lone request with seed + i.
    local = LocalBackendSettings(n_parallel=2, n_ctx=1024, min_implicit_cache_tokens=0)
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"), backends={"local": local})) as server:
        first = _ask(server, 3, n=5)
        many = _text(first)
        assert len(many) == 5 and len(set(many)) > 1
        # A cold prompt: what the later waves reuse of the first wave's KV is no cache hit.
        details = first["usage"].get("prompt_tokens_details") or {}  # type: ignore[attr-defined]
        assert not details.get("cached_tokens")
        assert many[3] == _text(_ask(server, 6, topic=3))[0]
        streamed = httpx.post(
            server.chat_url,
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": "Hi"}],
                "n": 3,
                "max_tokens": 4,
                "stream": True,
            },
            headers=AUTH,
            timeout=120,
        )
        finishes = {
            json.loads(line[6:])["choices"][0]["index"]
            for line in streamed.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0].get("finish_reason")
        }
        assert finishes == {0, 1, 2}


@pytest.mark.parametrize("flash_attention", ["on", "off"])
def test_seeded_answers_stay_the_same_under_load_with_and_without_flash_attention(
    tmp_path_factory: pytest.TempPathFactory, flash_attention: str
) -> None:
    """Both attention paths keep the engine's guarantee under load: a seeded request answers as it
    does alone (flash attention gives up only bit-exact repeats of a reused prefix; README)."""
    local = LocalBackendSettings(n_parallel=4, n_ctx=1024, flash_attention=flash_attention)  # type: ignore[arg-type]
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"), backends={"local": local})) as server:
        seeds = [21, 22, 23, 24]
        for seed in seeds:  # each prompt in a slot first: every request below reuses all of it alike
            _ask(server, seed)
        alone = {seed: _text(_ask(server, seed)) for seed in seeds}
        with ThreadPoolExecutor(max_workers=4) as pool:
            together = dict(zip(seeds, pool.map(lambda s: _text(_ask(server, s)), seeds), strict=True))
    assert together == alone


@pytest.mark.parametrize("flash_attention", ["on", "off", "fast"])
def test_a_reused_prefix_gives_the_logprobs_of_the_same_prompt_cold(
    tmp_path_factory: pytest.TempPathFactory, flash_attention: str
) -> None:
    """A conversation's next turn reuses the KV of the turn before and computes only its last few
    tokens; the same prompt computed cold goes through in one chunk. With flash attention "on"
    (one kernel for every row) and "off" both give the same logprobs to the last bit. "fast" picks
    its kernel by the chunk's shape (tiled for 64 rows or more, row by row below), so the two
    differ: the price the README names for it."""
    local = LocalBackendSettings(n_parallel=1, n_ctx=1024, min_implicit_cache_tokens=0, flash_attention=flash_attention)  # type: ignore[arg-type]
    facts = " ".join(f"Fact {i}: the number {i * 7} is {'even' if i % 2 else 'odd'}." for i in range(30))
    first_turn = [{"role": "user", "content": f"{facts} Which fact mentions 49?"}]

    def ask(server: RunningServer, messages: list[dict[str, str]]) -> dict[str, object]:
        body = {"model": MODEL, "messages": messages, "max_tokens": 6, "temperature": 0, "logprobs": True}
        return _post(server, body | {"top_logprobs": 3})

    def cached(result: dict[str, object]) -> int:
        return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])  # type: ignore[index]

    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"), backends={"local": local})) as server:
        answer = _text(ask(server, first_turn))[0]
        second_turn = [*first_turn, {"role": "assistant", "content": answer}, {"role": "user", "content": "Why?"}]
        warm = ask(server, second_turn)
        ask(server, [{"role": "user", "content": "Name a colour."}])  # the one slot now holds another prompt
        cold = ask(server, second_turn)
    prompt_tokens = int(warm["usage"]["prompt_tokens"])  # type: ignore[index]
    assert prompt_tokens - cached(warm) < 64 <= prompt_tokens - cached(cold)  # a few rows, then one chunk
    same = [c["logprobs"] for c in warm["choices"]] == [c["logprobs"] for c in cold["choices"]]  # type: ignore[index]
    assert same is (flash_attention != "fast")
