"""Configuration: file, environment and overrides, and the routing table they produce."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import pytest
from pydantic import ValidationError

from openvertex.backends.fake import FakeBackend
from openvertex.backends.local.backend import context_layout
from openvertex.backends.local.kernels import repacks_q4_1, row_kernels
from openvertex.errors import NotFoundError
from openvertex.service.routing import Router
from openvertex.service.tenants import Tenants
from openvertex.settings import EmbeddingBackendSettings, FakeBackendSettings, LocalBackendSettings, load_settings


def test_defaults_route_google_models_to_the_embedded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENVERTEX_CONFIG", raising=False)
    settings = load_settings()
    assert settings.host == "127.0.0.1" and settings.port == 8080
    assert settings.backends == {
        "local": LocalBackendSettings(),
        "embedding": EmbeddingBackendSettings(type="embedding"),
    }
    assert settings.max_body_bytes == 20 * 1024 * 1024
    chat, embedding = FakeBackend(), FakeBackend()
    router = Router(backends={"local": chat, "embedding": embedding}, routes=settings.routes)
    assert router.resolve("google/gemini-2.5-flash") is chat
    assert router.resolve("smollm2") is chat
    for model in ("text-embedding-005", "google/gemini-embedding-001", "text-multilingual-embedding-002"):
        assert router.resolve(model) is embedding, model
    with pytest.raises(NotFoundError):
        router.resolve("gpt-4o")


def test_file_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "openvertex.toml"
    config.write_text(
        'port = 9000\nhost = "127.0.0.2"\napi_keys = ["from-file"]\n'
        '[backends.scripted]\ntype = "fake"\n'
        '[[routes]]\nmodel = "team/*"\nbackend = "scripted"\n'
    )
    monkeypatch.setenv("OPENVERTEX_API_KEYS", "env-1, env-2")
    settings = load_settings(config, port=9100)
    assert settings.port == 9100  # override beats the file
    assert settings.host == "127.0.0.2"  # file beats the default
    assert settings.api_keys == ["env-1", "env-2"]  # environment beats the file
    assert settings.backends == {"scripted": FakeBackendSettings(type="fake")}
    assert [(r.model, r.backend) for r in settings.routes] == [("team/*", "scripted")]


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[[routes]]\nmodel = "x"\nbackend = "nowhere"\n')
    with pytest.raises(ValidationError, match="unknown backend"):
        load_settings(config)
    config.write_text("colour = 3\n")
    with pytest.raises(ValidationError, match="colour"):
        load_settings(config)
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "missing.toml")


def test_local_settings_that_cannot_work_together_are_refused() -> None:
    # Each generating sequence adds a token to every decode step: the batch must hold them all.
    with pytest.raises(ValidationError, match=r"n_batch \(32\) must be at least n_parallel \(64\)"):
        LocalBackendSettings(n_parallel=64, n_batch=32)
    assert LocalBackendSettings(n_parallel=64, n_batch=64).n_batch == 64
    # llama.cpp reads a quantised V cache only through flash attention.
    with pytest.raises(ValidationError, match=r'kv_type "q8_0" needs flash attention .*set flash_attention = "on"'):
        LocalBackendSettings(kv_type="q8_0", flash_attention="off")
    for flash_attention in ("on", "fast", "auto"):
        assert LocalBackendSettings(kv_type="q8_0", flash_attention=flash_attention).kv_type == "q8_0"


def test_the_kv_options_are_part_of_the_snapshot_layout_and_the_defaults_add_nothing() -> None:
    """A snapshot restores only into the layout it was made in (prefixes.py); the KV options at
    their defaults add nothing to it."""
    default = context_layout(LocalBackendSettings())
    # "on" names the kernel its reference mode runs (a patched build's tiled one or the released
    # one), and a build that repacks Q4_1 weights says so: their products sum in another order.
    weights = "|weights=q4_1x8" if repacks_q4_1() else ""
    assert default == (
        f"llama.cpp {llama_cpp.__version__}|slots=8|ctx=4096|flash_attention=on|kernels={row_kernels('f16')}{weights}"
    )
    assert row_kernels("f16") in {"tiled", "reference"}
    others = [
        context_layout(LocalBackendSettings(**options))  # type: ignore[arg-type]
        for options in ({"kv_type": "q8_0"}, {"kv_unified": True}, {"kv_type": "q8_0", "kv_unified": True})
    ]
    # Each kernel choice sums in its own order: a snapshot made under one is not restored under another.
    kernels = [context_layout(LocalBackendSettings(flash_attention=mode)) for mode in ("fast", "auto", "off")]
    assert kernels[0].endswith(f"|flash_attention=fast{weights}")
    assert len({default, *others, *kernels}) == 7


def test_the_refusal_reaches_a_configuration_file(tmp_path: Path) -> None:
    config = tmp_path / "openvertex.toml"
    config.write_text('[backends.local]\ntype = "local"\nn_parallel = 64\nn_batch = 32\n')
    with pytest.raises(ValidationError, match="raise n_batch or lower n_parallel"):
        load_settings(config)


def test_a_key_belongs_to_one_tenant(tmp_path: Path) -> None:
    config = tmp_path / "openvertex.toml"
    config.write_text('[tenants]\nteam-a = ["ci", "alice"]\nteam-b = ["bob", "ci"]\n')
    with pytest.raises(ValidationError, match="the key 'ci' is in two tenants: 'team-a' and 'team-b'"):
        load_settings(config)
    config.write_text('[tenants]\nteam-a = ["ci", "alice"]\n')
    tenants = Tenants(load_settings(config).tenants)
    assert tenants.of("ci") == tenants.of("alice") != tenants.of("bob")
    assert tenants.of("bob") != tenants.of("carol")
    assert tenants.of("team-a") != tenants.of("ci")  # a key named like a tenant is not in it
