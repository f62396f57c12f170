"""Backend types by name: built-in backends register here exactly as a plugin would."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from openvertex.backends.base import Backend
from openvertex.http_clients import HttpClients
from openvertex.settings import (
    BackendSettings,
    EmbeddingBackendSettings,
    FakeBackendSettings,
    GeminiBackendSettings,
    LocalBackendSettings,
)


def _local(settings: Any, directory: Path, clients: HttpClients) -> Backend:
    from openvertex.backends.local.backend import LocalBackend  # imports llama.cpp: only when used

    assert isinstance(settings, LocalBackendSettings)
    return LocalBackend(settings, kv_dir=directory)


def _fake(settings: Any, directory: Path, clients: HttpClients) -> Backend:
    from openvertex.backends.fake import FakeBackend

    assert isinstance(settings, FakeBackendSettings)
    return FakeBackend.from_file(settings.script) if settings.script else FakeBackend()


def _gemini(settings: Any, directory: Path, clients: HttpClients) -> Backend:
    from openvertex.backends.gemini import GeminiBackend

    assert isinstance(settings, GeminiBackendSettings)
    return GeminiBackend(settings, clients)


def _embedding(settings: Any, directory: Path, clients: HttpClients) -> Backend:
    from openvertex.backends.embedding.backend import EmbeddingBackend  # imports llama.cpp: only when used

    assert isinstance(settings, EmbeddingBackendSettings)
    return EmbeddingBackend(settings, directory)


# (the backend's settings, its own directory under state_dir, the HTTP sessions) → the backend
FACTORIES: dict[str, Callable[[Any, Path, HttpClients], Backend]] = {
    "local": _local,
    "fake": _fake,
    "gemini": _gemini,
    "embedding": _embedding,
}


def create_backend(settings: BackendSettings, directory: Path, clients: HttpClients) -> Backend:
    return FACTORIES[settings.type](settings, directory, clients)
