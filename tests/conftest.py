"""Shared fixtures: a loopback-only network guard, a scratch state directory and --update-golden."""

from __future__ import annotations

import ipaddress
import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from openvertex.backends.local.model import resolve_model_path


def pytest_configure(config: pytest.Config) -> None:
    # Servers started by tests keep their state (the thought-signature secret) in a scratch
    # directory, never in the user's own; subprocesses inherit it.
    os.environ.setdefault("OPENVERTEX_STATE_DIR", tempfile.mkdtemp(prefix="openvertex-test-state-"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite golden expectations from the code")


@pytest.fixture(scope="session")
def model() -> Iterator[LlamaModel]:
    """The embedded model's weights and vocabulary, without an engine (tokenizer-level tests)."""
    loaded = LlamaModel(
        path_model=str(resolve_model_path("smollm2")), params=llama_cpp.llama_model_default_params(), verbose=False
    )
    yield loaded
    loaded.close()  # type: ignore[no-untyped-call]


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # unix sockets and the like
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that tries to reach a non-loopback address."""
    original = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise AssertionError(f"test tried to reach a non-loopback address: {address!r}")
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield
