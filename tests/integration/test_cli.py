"""`openvertex serve` and `openvertex models` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

SERVE = [sys.executable, "-m", "openvertex", "serve"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENVERTEX_")}
    return env | extra


def test_serve_prints_the_sdk_base_url_and_answers() -> None:
    with subprocess.Popen([*SERVE, "--port", "0"], stdout=subprocess.PIPE, text=True, env=_env()) as process:
        _check_serving(process)
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status says why.
        assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def _check_serving(process: subprocess.Popen[str]) -> None:
    try:
        assert process.stdout is not None
        listening = process.stdout.readline().strip()
        base_url = process.stdout.readline().strip()
        url = listening.split()[-1]
        assert url.startswith("http://127.0.0.1:")
        assert base_url == f"OpenAI SDK base_url: {url}/v1/projects/local/locations/us-central1/endpoints/openapi"
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, "not ready in 30 s"
            time.sleep(0.05)
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        response = httpx.post(
            f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer x"}, timeout=30
        )
        assert response.status_code == 200 and response.json()["model"] == "smollm2"
        assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    except BaseException:
        process.kill()
        raise


def test_serve_refuses_a_public_bind_without_keys() -> None:
    result = subprocess.run(
        [*SERVE, "--host", "0.0.0.0", "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert result.returncode != 0
    assert "without API keys" in result.stderr and "--insecure-no-auth" in result.stderr


def test_serve_refuses_a_missing_model_file(tmp_path: os.PathLike[str]) -> None:
    result = subprocess.run(
        [*SERVE, "--port", "0", "--model", f"{tmp_path}/nope.gguf"],
        check=False,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
    )
    assert result.returncode != 0 and "no GGUF file" in result.stderr


def test_models_lists_routes_and_the_embedded_alias() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openvertex", "models"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
        check=True,
    )
    assert "google/*\tlocal" in result.stdout
    assert "smollm2\tSmolLM2-135M-Instruct" in result.stdout
