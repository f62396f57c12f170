"""Self-deployed endpoints count the tokens their upstream reports against the key's tokens per
minute, whole answers and streams alike: a stream is asked for its usage (vLLM sends it only when
asked) and the frame that adds is kept from a client that did not ask, and a stream without usage
counts a token per frame. Once the minute's tokens are spent, the next request is a 429 before
it reaches the upstream. The upstream is a loopback OpenAI-compatible server that answers as vLLM
does."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from openvertex.backends.fake import FakeBackend
from openvertex.service.keys import KeySpec, issue_key
from openvertex.settings import EndpointSettings, Settings
from openvertex.store.api_keys import ApiKeyStore
from openvertex.store.database import DATABASE_FILE, SqliteDatabase
from openvertex.store.usage import UsageRow, UsageStore
from tests.support.openai_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, WORDS, Upstream, upstream_server
from tests.support.server import RunningServer, serve

QUESTION = {"messages": [{"role": "user", "content": "Say hello."}]}


@dataclass
class Gateway:
    server: RunningServer
    upstream: Upstream
    key: str
    state_dir: Path

    @property
    def url(self) -> str:
        return f"{self.server.url}/v1/projects/p/locations/global/endpoints/1/chat/completions"

    def ask(self, body: dict[str, object]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", "content-type": "application/json"}
        return httpx.post(self.url, content=json.dumps(body).encode(), headers=headers, timeout=30)


@contextmanager
def gateway(
    tmp_path: Path, *, tokens_per_minute: int, reports_usage: bool = True, words: list[str] | None = None
) -> Iterator[Gateway]:
    """openvertex relaying endpoint 1 to the upstream, with one issued key limited to
    `tokens_per_minute` (written to the database before the server starts, which reads it then)."""
    state_dir = tmp_path / "state"
    database = SqliteDatabase(state_dir / DATABASE_FILE)
    database.open()
    try:
        key = issue_key(ApiKeyStore(database), KeySpec(name="metered", tokens_per_minute=tokens_per_minute))
    finally:
        database.close()
    with upstream_server(Upstream(reports_usage=reports_usage, words=words or list(WORDS))) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60)
        settings = Settings(port=0, state_dir=state_dir, endpoints={"1": endpoint}, keys_refresh_s=0.2)
        with serve(settings, backends={"local": FakeBackend()}) as server:
            yield Gateway(server, upstream, key, state_dir)


def _usage(state_dir: Path) -> list[UsageRow]:
    database = SqliteDatabase(state_dir / DATABASE_FILE)
    database.open()
    try:
        return UsageStore(database).totals(since_minute=0)
    finally:
        database.close()


def _early_in_a_minute(seconds_needed: float = 10.0) -> None:
    """Quotas count per clock minute: start a check early enough in a minute to finish in it."""
    if 60 - time.time() % 60 < seconds_needed:
        time.sleep(60 - time.time() % 60 + 0.05)


def _refused_for_tokens(response: httpx.Response, limit: int) -> bool:
    error = response.json()[0]["error"]
    return response.status_code == 429 and error["message"].endswith(f"may use {limit} tokens a minute.")


def test_a_whole_answer_counts_its_usage_and_then_the_key_is_refused(tmp_path: Path) -> None:
    limit = PROMPT_TOKENS + COMPLETION_TOKENS
    with gateway(tmp_path, tokens_per_minute=limit) as relayed:
        _early_in_a_minute()
        answered = relayed.ask(QUESTION)
        assert answered.status_code == 200 and answered.json()["usage"]["prompt_tokens"] == PROMPT_TOKENS
        refused = relayed.ask(QUESTION)
        assert _refused_for_tokens(refused, limit)
        assert len(relayed.upstream.bodies) == 1  # refused before it reached the upstream
    # Written for `openvertex usage` as the server stopped.
    (row,) = _usage(relayed.state_dir)
    assert (row.key_name, row.model, row.requests) == ("metered", "1", 1)
    assert (row.prompt_tokens, row.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_a_whole_answer_its_client_leaves_before_the_end_is_counted(tmp_path: Path) -> None:
    """The upstream has done all the work of a whole answer by its first byte: a client that reads
    that and hangs up still spends the answer's tokens (the rest is read for its usage)."""
    limit = PROMPT_TOKENS + COMPLETION_TOKENS
    with gateway(tmp_path, tokens_per_minute=limit, words=["x" * (8 << 20)]) as relayed:
        _early_in_a_minute()
        headers = {"Authorization": f"Bearer {relayed.key}", "content-type": "application/json"}
        body = json.dumps(QUESTION).encode()
        with httpx.stream("POST", relayed.url, content=body, headers=headers, timeout=30) as response:
            assert response.status_code == 200
            next(response.iter_raw(1024))  # the first bytes, then the client leaves
        deadline = time.monotonic() + 10
        while not (rows := _usage(relayed.state_dir)) or rows[0].prompt_tokens == 0:
            assert time.monotonic() < deadline, rows  # written every keys_refresh_s once counted
            time.sleep(0.1)
        assert (rows[0].prompt_tokens, rows[0].output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
        assert _refused_for_tokens(relayed.ask(QUESTION), limit)
        assert len(relayed.upstream.bodies) == 1


def test_a_stream_is_asked_for_its_usage_and_the_client_gets_the_stream_it_asked_for(tmp_path: Path) -> None:
    limit = PROMPT_TOKENS + COMPLETION_TOKENS
    with gateway(tmp_path, tokens_per_minute=limit) as relayed:
        _early_in_a_minute()
        streamed = relayed.ask({**QUESTION, "stream": True})
        assert streamed.status_code == 200
        events = streamed.text.removesuffix("\n\n").split("\n\n")
        assert events[-1] == "data: [DONE]"
        chunks = [
            openai.types.chat.ChatCompletionChunk.model_validate_json(e.removeprefix("data: ")) for e in events[:-1]
        ]
        assert [c.choices[0].delta.content for c in chunks] == WORDS  # no frame without choices
        assert all(c.usage is None for c in chunks)
        assert json.loads(relayed.upstream.bodies[0])["stream_options"] == {"include_usage": True}
        assert _refused_for_tokens(relayed.ask({**QUESTION, "stream": True}), limit)
    (row,) = _usage(relayed.state_dir)
    assert (row.prompt_tokens, row.output_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)


def test_a_client_that_asks_for_usage_gets_it_and_its_body_goes_up_unchanged(tmp_path: Path) -> None:
    with gateway(tmp_path, tokens_per_minute=1000) as relayed:
        body = {**QUESTION, "stream": True, "stream_options": {"include_usage": True}}
        streamed = relayed.ask(body)
        assert relayed.upstream.bodies == [json.dumps(body).encode()]
        last = json.loads(streamed.text.removesuffix("\n\n").split("\n\n")[-2].removeprefix("data: "))
        assert last["choices"] == [] and last["usage"]["completion_tokens"] == COMPLETION_TOKENS
        # Asked for something else, it still gets the usage it did not ask for withheld.
        relayed.ask({**QUESTION, "stream": True, "stream_options": {"include_usage": False}})
        assert json.loads(relayed.upstream.bodies[1])["stream_options"] == {"include_usage": True}
    rows = _usage(relayed.state_dir)
    assert [(r.requests, r.prompt_tokens, r.output_tokens) for r in rows] == [
        (2, 2 * PROMPT_TOKENS, 2 * COMPLETION_TOKENS)
    ]


def test_a_stream_without_usage_counts_a_token_per_frame(tmp_path: Path) -> None:
    """An upstream that never reports usage in a stream (llama-cpp-python's server)."""
    with gateway(tmp_path, tokens_per_minute=len(WORDS), reports_usage=False) as relayed:
        _early_in_a_minute()
        assert relayed.ask({**QUESTION, "stream": True}).status_code == 200
        assert _refused_for_tokens(relayed.ask({**QUESTION, "stream": True}), len(WORDS))
    (row,) = _usage(relayed.state_dir)
    assert (row.prompt_tokens, row.output_tokens) == (0, len(WORDS))


def test_the_client_gets_byte_for_byte_what_the_upstream_sends_a_client_that_does_not_ask(tmp_path: Path) -> None:
    with gateway(tmp_path, tokens_per_minute=1000) as relayed:
        relayed_body = relayed.ask({**QUESTION, "stream": True}).content
        direct = httpx.post(f"{relayed.upstream.url}/chat/completions", json={**QUESTION, "stream": True}).content
    assert b'"usage"' not in direct
    assert relayed_body == direct
