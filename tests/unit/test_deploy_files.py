"""The container files load as openvertex reads them: the compose file's configuration is valid
settings naming the vLLM service, and the image runs `openvertex serve` as a non-root user with
a health check, a state volume and a portable llama.cpp build. (Building the image needs Docker
and the internet; these checks keep the files in step with the code.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from openvertex.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_compose_configuration_is_valid_settings() -> None:
    settings = load_settings(ROOT / "deploy" / "openvertex.toml")
    assert settings.endpoints["vllm"].upstreams == ["http://vllm:8000/v1"]
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["openvertex"]
    assert "./deploy/openvertex.toml:/etc/openvertex/openvertex.toml:ro" in service["volumes"]
    assert service["environment"]["OPENVERTEX_CONFIG"] == "/etc/openvertex/openvertex.toml"
    assert service["environment"]["OPENVERTEX_DATABASE_URL"].startswith("postgresql://")
    assert {"vllm", "postgres"} <= set(compose["services"])


def test_the_image_runs_as_a_user_with_a_health_check_and_a_state_volume() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "USER openvertex" in dockerfile and "useradd --system --uid 10001" in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
    assert "VOLUME /var/lib/openvertex" in dockerfile and "OPENVERTEX_STATE_DIR=/var/lib/openvertex" in dockerfile
    assert 'ENTRYPOINT ["openvertex", "serve"]' in dockerfile
    assert "-DGGML_NATIVE=OFF" in dockerfile  # not the build machine's CPU
    version = next(
        line for line in (ROOT / "install.sh").read_text().splitlines() if line.startswith("LLAMA_CPP_VERSION=")
    )
    assert f"llama-cpp-python=={version.split('=')[1]}" in dockerfile  # the version install.sh builds
