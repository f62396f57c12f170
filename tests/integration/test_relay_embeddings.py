"""Self-deployed endpoints relay `…/endpoints/{ID}/embeddings` to each replica's `/embeddings` as
they relay chat completions: the body byte for byte but its `model`, the answer as written, the
upstream's prompt tokens counted against the key's tokens per minute, a replica that cannot be
reached tried on another. The upstream is a loopback OpenAI-compatible server answering as vLLM
does."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from openvertex.backends.fake import FakeBackend
from openvertex.service.keys import KeySpec, issue_key
from openvertex.settings import EndpointSettings, Settings
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.database import DATABASE_FILE, SqliteDatabase
from openvertex.store.usage import UsageRow, UsageStore
from tests.support.openai_upstream import TOKENS_PER_INPUT, Upstream, upstream_server
from tests.support.server import RunningServer, serve

TWO_INPUTS = {"model": "google/my-embedder", "input": ["first text", "second"]}


@dataclass
class Gateway:
    server: RunningServer
    upstream: Upstream
    key: str
    state_dir: Path

    def embeddings_url(self, endpoint: str = "1") -> str:
        return f"{self.server.url}/v1/projects/p/locations/global/endpoints/{endpoint}/embeddings"

    def post(self, body: bytes, endpoint: str = "1") -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", "content-type": "application/json"}
        return httpx.post(self.embeddings_url(endpoint), content=body, headers=headers, timeout=30)


@contextmanager
def gateway(
    tmp_path: Path, *, tokens_per_minute: int | None = None, down_first: bool = False, **endpoint: object
) -> Iterator[Gateway]:
    """openvertex relaying endpoint 1 to the upstream (after a replica nothing listens on, with
    `down_first`), with one issued key (limited to `tokens_per_minute`)."""
    state_dir = tmp_path / "state"
    database = SqliteDatabase(state_dir / DATABASE_FILE)
    database.open()
    try:
        key = issue_key(ApiKeyStore(database), KeySpec(name="metered", tokens_per_minute=tokens_per_minute))
    finally:
        database.close()
    with upstream_server(Upstream()) as upstream:
        upstreams = [f"http://127.0.0.1:{_free_port()}/v1", upstream.url] if down_first else [upstream.url]
        settings = Settings(
            port=0,
            state_dir=state_dir,
            endpoints={"1": EndpointSettings(upstreams=upstreams, health_interval_s=60, **endpoint)},  # type: ignore[arg-type]
            keys_refresh_s=0.2,
        )
        with serve(settings, backends={"local": FakeBackend()}) as server:
            yield Gateway(server, upstream, key, state_dir)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _usage(state_dir: Path) -> list[UsageRow]:
    database = SqliteDatabase(state_dir / DATABASE_FILE)
    database.open()
    try:
        return UsageStore(database).totals(since_minute=0)
    finally:
        database.close()


def _message(response: httpx.Response) -> str:
    """A Google error's message, in a one-element list or not (the route's shape is not this test's)."""
    body = response.json()
    message: str = (body[0] if isinstance(body, list) else body)["error"]["message"]
    return message


def _early_in_a_minute(seconds_needed: float = 10.0) -> None:
    """Quotas count per clock minute: start a check early enough in a minute to finish in it."""
    if 60 - time.time() % 60 < seconds_needed:
        time.sleep(60 - time.time() % 60 + 0.05)


def test_the_body_goes_to_the_replicas_embeddings_with_only_its_model_changed(tmp_path: Path) -> None:
    raw = b'{ "input" : ["caf\\u00e9", "x"],"model":"google/my-embedder",  "dimensions": 3, "stream": true }'
    with gateway(tmp_path, model="served-embedder") as relayed:
        response = relayed.post(raw)
    assert response.status_code == 200, response.text
    assert relayed.upstream.paths == ["/v1/embeddings"]
    assert relayed.upstream.bodies == [raw.replace(b'"google/my-embedder"', b'"served-embedder"')]
    assert response.content == relayed.upstream.answers[0]  # as the upstream wrote it
    assert response.headers["content-type"] == "application/json"
    assert [item["index"] for item in response.json()["data"]] == [0, 1]


def test_without_a_served_name_model_is_dropped(tmp_path: Path) -> None:
    with gateway(tmp_path) as relayed:
        response = relayed.post(json.dumps(TWO_INPUTS).encode())
    assert response.status_code == 200, response.text
    assert json.loads(relayed.upstream.bodies[0]) == {"input": ["first text", "second"]}


def test_the_upstreams_prompt_tokens_count_and_then_the_key_is_refused(tmp_path: Path) -> None:
    limit = 2 * TOKENS_PER_INPUT  # one request of two inputs spends the minute's tokens
    with gateway(tmp_path, tokens_per_minute=limit) as relayed:
        _early_in_a_minute()
        answered = relayed.post(json.dumps(TWO_INPUTS).encode())
        assert answered.status_code == 200 and answered.json()["usage"]["prompt_tokens"] == limit
        refused = relayed.post(json.dumps(TWO_INPUTS).encode())
        assert refused.status_code == 429
        assert _message(refused).endswith(f"may use {limit} tokens a minute.")
        assert len(relayed.upstream.bodies) == 1  # refused before it reached the upstream
    (row,) = _usage(relayed.state_dir)  # written for `openvertex usage` as the server stopped
    assert (row.key_name, row.model, row.requests) == ("metered", "1", 1)
    assert (row.prompt_tokens, row.output_tokens) == (limit, 0)


def test_a_replica_that_cannot_be_reached_is_tried_on_another(tmp_path: Path) -> None:
    with gateway(tmp_path, down_first=True) as relayed:
        statuses = [relayed.post(json.dumps(TWO_INPUTS).encode()).status_code for _ in range(2)]
        metrics = httpx.get(f"{relayed.server.url}/metrics").text
    assert statuses == [200, 200]
    assert relayed.upstream.paths == ["/v1/embeddings"] * 2
    retries = re.search(r'openvertex_endpoint_retries_total\{endpoint="1"\} (\d+)', metrics)
    assert retries is not None and int(retries.group(1)) >= 1  # the first went to the one down


def test_a_body_that_is_not_a_json_object_is_a_400(tmp_path: Path) -> None:
    with gateway(tmp_path) as relayed:
        responses = [relayed.post(body) for body in (b'["not", "an", "object"]', b'{"input": "\xff"}', b"{")]
    for response in responses:
        assert response.status_code == 400
        assert _message(response) == "The request body must be a JSON object, in UTF-8."
    assert relayed.upstream.bodies == []


def test_an_unknown_endpoint_is_a_404(tmp_path: Path) -> None:
    with gateway(tmp_path) as relayed:
        response = relayed.post(json.dumps(TWO_INPUTS).encode(), endpoint="2")
    assert response.status_code == 404
    assert relayed.upstream.bodies == []
