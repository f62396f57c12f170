"""The thought-signature secret from the configuration: how replicas share one without a shared disk."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from openvertex.app import create_app
from openvertex.backends.fake import FakeBackend
from openvertex.service.signatures import SECRET_FILE
from openvertex.settings import Settings, load_settings

SECRET = "0123456789abcdef" * 4


def test_the_secret_comes_from_the_environment_and_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENVERTEX_CONFIG", raising=False)
    monkeypatch.setenv("OPENVERTEX_THOUGHT_SIGNATURE_SECRET", SECRET)
    settings = load_settings()
    assert settings.thought_signature_secret is not None
    assert settings.thought_signature_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_a_configured_secret_replaces_the_file(tmp_path: Path) -> None:
    create_app(
        Settings(state_dir=tmp_path, thought_signature_secret=SecretStr(SECRET)), backends={"local": FakeBackend()}
    )
    assert not (tmp_path / SECRET_FILE).exists()
    create_app(Settings(state_dir=tmp_path), backends={"local": FakeBackend()})
    assert (tmp_path / SECRET_FILE).exists()  # without one, the secret is made and kept there


@pytest.mark.parametrize("value", ["", "abc", SECRET[:-2], SECRET + "00", "zz" + SECRET[2:], "0x" + SECRET[2:]])
def test_a_malformed_secret_stops_the_start_named_but_not_echoed(tmp_path: Path, value: str) -> None:
    settings = Settings(state_dir=tmp_path, thought_signature_secret=SecretStr(value))
    with pytest.raises(ValueError, match=r"thought_signature_secret \(OPENVERTEX_THOUGHT_SIGNATURE_SECRET\)") as raised:
        create_app(settings, backends={"local": FakeBackend()})
    assert not value or value not in str(raised.value)
