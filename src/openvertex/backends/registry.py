"""Backend types by name: built-in backends register here exactly as a plugin would."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    RecordBackendSettings,
    ReplayBackendSettings,
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


# A backend built over others: `named` gives another configured backend by name, built first.
Named = Callable[[str], Backend]


def _record(settings: Any, named: Named) -> Backend:
    from openvertex.backends.record import RecordingBackend
    from openvertex.cassettes import Cassettes

    assert isinstance(settings, RecordBackendSettings)
    return RecordingBackend(named(settings.backend), Cassettes(settings.cassettes))


def _replay(settings: Any, named: Named) -> Backend:
    from openvertex.backends.replay import ReplayBackend
    from openvertex.cassettes import Cassettes

    assert isinstance(settings, ReplayBackendSettings)
    if not settings.cassettes.expanduser().is_dir():
        raise ValueError(f"the cassettes directory {settings.cassettes} is not a directory (record into it first)")
    fallback = named(settings.fallback) if settings.fallback is not None else None
    return ReplayBackend(Cassettes(settings.cassettes), fallback=fallback, timing=settings.timing)


WRAPPERS: dict[str, Callable[[Any, Named], Backend]] = {"record": _record, "replay": _replay}


def create_backends(
    configured: Mapping[str, BackendSettings], kv_dir: Path, clients: HttpClients
) -> dict[str, Backend]:
    """Every configured backend, in the configuration's order; one that names another (a record
    backend's `backend`, a replay backend's `fallback`) after it. A name that is not configured, or
    a backend that reaches itself, stops the start with the setting named."""
    built: dict[str, Backend] = {}

    def build(name: str, chain: tuple[str, ...]) -> Backend:
        if name in built:
            return built[name]
        if name in chain:
            raise ValueError(
                f"backends.{chain[0]}: the backends name each other in a loop: {' → '.join((*chain, name))}"
            )
        config = configured[name]
        wrapper = WRAPPERS.get(config.type)
        if wrapper is None:
            backend = create_backend(config, kv_dir / name, clients)
        else:
            backend = wrapper(config, lambda other: named(other, (*chain, name)))
        built[name] = backend
        return backend

    def named(other: str, chain: tuple[str, ...]) -> Backend:
        if other not in configured:
            raise ValueError(f"backends.{chain[-1]}: {other!r} is not a configured backend")
        return build(other, chain)

    for name in configured:
        build(name, ())
    return {name: built[name] for name in configured}
