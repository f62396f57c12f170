"""The operator's blocklist on self-deployed endpoints (issue 22, finding 7): relayed answers were
passed byte for byte, so a blocklisted phrase reached the client from vLLM although the README
says the blocklist applies to every backend. Now a blocked prompt never goes upstream, and a
phrase the upstream streams (split across frames) or answers whole ends its choice with
content_filter; a clean answer still passes byte for byte."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.settings import BlocklistSettings, EndpointSettings, SafetyConfig, Settings
from tests.support.openai_upstream import Upstream, upstream_server
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test", "content-type": "application/json"}


@contextmanager
def relaying(tmp_path: Path, words: list[str]) -> Iterator[tuple[RunningServer, Upstream]]:
    with upstream_server(Upstream(words=words)) as upstream:
        endpoint = EndpointSettings(upstreams=[upstream.url], health_interval_s=60)
        safety = SafetyConfig(blocklist=BlocklistSettings(terms=["forbidden fruit"]))
        settings = Settings(port=0, state_dir=tmp_path, endpoints={"1": endpoint}, safety=safety)
        with serve(settings, backends={"local": FakeBackend()}) as server:
            yield server, upstream


def _ask(server: RunningServer, text: str, **extra: Any) -> httpx.Response:
    url = f"{server.url}/v1/projects/p/locations/global/endpoints/1/chat/completions"
    body = {"messages": [{"role": "user", "content": text}], **extra}
    return httpx.post(url, content=json.dumps(body).encode(), headers=AUTH, timeout=30)


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_blocked_prompt_never_goes_upstream(tmp_path: Path, stream: bool) -> None:
    with relaying(tmp_path, ["Hi"]) as (server, upstream):
        response = _ask(server, "Tell me about the Forbidden Fruit.", stream=stream)
        assert upstream.bodies == []
    choices = [c for e in _events(response) for c in e["choices"]] if stream else response.json()["choices"]
    assert [c["finish_reason"] for c in choices] == ["content_filter"]
    assert "Forbidden" not in response.text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_blocked_answer_ends_with_content_filter(tmp_path: Path, stream: bool) -> None:
    words = ["It was a ", "forbid", "den", " fruit", ", they said."]
    with relaying(tmp_path, words) as (server, _):
        response = _ask(server, "What was it?", stream=stream)
    assert "forbid" not in response.text and "they said" not in response.text
    if stream:
        events = _events(response)
        said = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
        assert said == "It was a "
        assert [c["finish_reason"] for e in events for c in e["choices"] if c.get("finish_reason")] == [
            "content_filter"
        ]
        assert response.text.rstrip().endswith("data: [DONE]")
    else:
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
        assert response.json()["usage"]["completion_tokens"] == 3  # the upstream's, as it said it


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_clean_answer_passes_byte_for_byte(tmp_path: Path, stream: bool) -> None:
    with relaying(tmp_path, ["Apples ", "are ", "fine."]) as (server, upstream):
        response = _ask(server, "Fruit?", stream=stream, stream_options={"include_usage": True} if stream else None)
        assert response.status_code == 200
        assert response.content == upstream.answer(upstream.bodies[0])[1]
