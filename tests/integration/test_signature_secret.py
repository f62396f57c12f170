"""Replicas given the same thought-signature secret accept each other's signatures; others do not."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from pydantic import SecretStr

from openvertex.backends.base import Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import Settings
from tests.support.server import serve

MODEL = "google/gemini-3-flash-preview"
SECRET = "00112233445566778899aabbccddeeff" * 2
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
QUESTION = {"role": "user", "content": "Weather in Paris?"}


@contextmanager
def _replica(state_dir: Path, secret: str | None) -> Iterator[openai.OpenAI]:
    """A server whose backend signs nothing itself (so openvertex does) and calls get_weather."""
    call = gc.Part(function_call=gc.FunctionCall(name="get_weather", args={"city": "Paris"}))
    answer = gc.Candidate(index=0, content=gc.Content(role="model", parts=[call]), finish_reason="STOP")
    fake = FakeBackend(
        [[gc.GenerateContentResponse(candidates=[answer])]], capabilities=Capabilities(function_calling=True)
    )
    settings = Settings(port=0, state_dir=state_dir, thought_signature_secret=SecretStr(secret) if secret else None)
    with (
        serve(settings, backends={"local": fake}) as server,
        openai.OpenAI(base_url=server.sdk_base_url, api_key="test", max_retries=0) as client,
    ):
        yield client


def _continue(client: openai.OpenAI, called: Any) -> openai.types.chat.ChatCompletion:
    result = {"role": "tool", "tool_call_id": called.tool_calls[0].id, "content": '{"temp": 21}'}
    return client.chat.completions.create(model=MODEL, messages=[QUESTION, called, result], tools=[WEATHER])  # type: ignore[list-item]


def test_replicas_with_one_secret_accept_each_others_signatures(tmp_path: Path) -> None:
    with (
        _replica(tmp_path / "a", SECRET) as first,
        _replica(tmp_path / "b", SECRET) as second,
        _replica(tmp_path / "c", None) as other,  # its own secret, kept in its state directory
    ):
        called = first.chat.completions.create(model=MODEL, messages=[QUESTION], tools=[WEATHER]).choices[0].message  # type: ignore[list-item]
        assert called.tool_calls and called.tool_calls[0].model_extra["extra_content"]["google"]["thought_signature"]  # type: ignore[index]
        assert _continue(second, called).choices[0].finish_reason == "tool_calls"  # accepted: answered
        with pytest.raises(openai.BadRequestError) as refused:
            _continue(other, called)
        assert "Thought signature is not valid" in refused.value.response.json()[0]["error"]["message"]
