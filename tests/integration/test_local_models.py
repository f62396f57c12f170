"""Several local models in one process, each loaded on first use and let go when idle or when the
memory budget needs room: the real engine, two chat backends and the embedding model."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from openvertex.settings import EmbeddingBackendSettings, LocalBackendSettings, ModelRoute, Settings
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}


def _settings(tmp_path: Path, *, budget: int | None = None, keep_alive_s: float | None = None) -> Settings:
    small = LocalBackendSettings(n_parallel=1, n_ctx=512, load="first_use", keep_alive_s=keep_alive_s)
    return Settings(
        port=0,
        state_dir=tmp_path,
        backends={
            "first": small,
            "second": small,
            "embedding": EmbeddingBackendSettings(type="embedding", keep_alive_s=keep_alive_s),
        },
        routes=[
            ModelRoute(model="google/first-model", backend="first"),
            ModelRoute(model="google/second-model", backend="second"),
            ModelRoute(model="google/text-embedding-005", backend="embedding"),
        ],
        models_memory_bytes=budget,
    )


def _ask(server: RunningServer, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 4, "seed": 1}
    return httpx.post(server.chat_url, json=body, headers=AUTH, timeout=120)


def _states(server: RunningServer) -> dict[str, str]:
    listed = httpx.get(f"{server.url}/v1/models", headers=AUTH).json()["data"]
    return {card["id"]: card["status"]["value"] for card in listed if "status" in card}


def _metric(server: RunningServer, name: str) -> dict[str, float]:
    scraped = httpx.get(f"{server.url}/metrics").text
    pattern = rf'^{name}\{{backend="(\w+)"\}} (\S+)$'
    return {backend: float(value) for backend, value in re.findall(pattern, scraped, re.MULTILINE)}


def _loaded_metric(server: RunningServer) -> dict[str, float]:
    return _metric(server, "openvertex_model_loaded")


def test_models_load_on_first_use_and_the_budget_lets_the_idle_one_go(tmp_path: Path) -> None:
    with serve(_settings(tmp_path, budget=1)) as server:  # room for one model at a time
        assert httpx.get(f"{server.url}/readyz").status_code == 200  # nothing to load before serving
        assert set(_states(server).values()) == {"unloaded"}
        assert _ask(server, "google/first-model").status_code == 200
        assert _states(server)["google/first-model"] == "loaded"
        assert _loaded_metric(server) == {"first": 1.0, "second": 0.0, "embedding": 0.0}
        started = time.monotonic()
        assert _ask(server, "google/second-model").status_code == 200  # waits for its load
        second_first_answer_s = time.monotonic() - started
        assert _states(server) == {
            "google/first-model": "unloaded",
            "google/second-model": "loaded",
            "google/text-embedding-005": "unloaded",
        }
        embedded = httpx.post(
            f"{server.url}/v1/embeddings", json={"model": "google/text-embedding-005", "input": "hello"}, headers=AUTH
        )
        assert embedded.status_code == 200, embedded.text
        assert _loaded_metric(server) == {"first": 0.0, "second": 0.0, "embedding": 1.0}
        assert _ask(server, "google/first-model").status_code == 200  # back again, on use
        assert _loaded_metric(server)["first"] == 1.0
    assert second_first_answer_s < 60


def test_requests_that_meet_an_unloaded_model_wait_for_one_load(tmp_path: Path) -> None:
    with serve(_settings(tmp_path)) as server:
        with ThreadPoolExecutor(max_workers=3) as pool:
            answers = list(pool.map(lambda _: _ask(server, "google/first-model"), range(3)))
        assert [answer.status_code for answer in answers] == [200, 200, 200]
        assert _metric(server, "openvertex_model_loads_total")["first"] == 1


def test_an_idle_model_is_let_go_after_its_keep_alive(tmp_path: Path) -> None:
    with serve(_settings(tmp_path, keep_alive_s=0.5)) as server:
        assert _ask(server, "google/first-model").status_code == 200
        deadline = time.monotonic() + 15
        while _states(server)["google/first-model"] != "unloaded":
            assert time.monotonic() < deadline, "the idle model was not let go"
            time.sleep(0.2)
        assert _ask(server, "google/first-model").status_code == 200  # loads again
        assert _metric(server, "openvertex_model_loads_total")["first"] == 2
