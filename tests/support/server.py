"""A real openvertex server on 127.0.0.1 (port 0) in a background thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import httpx
import uvicorn
from starlette.applications import Starlette

from openvertex.app import create_app
from openvertex.backends.base import Backend
from openvertex.http.listener import bind_listener
from openvertex.settings import Settings

VERTEX_PATH = "/v1beta1/projects/test-project/locations/us-central1/endpoints/openapi"
SDK_PATH = "/v1/projects/test-project/locations/us-central1/endpoints/openapi"


class RunningServer:
    def __init__(self, port: int, app: Starlette) -> None:
        self.port = port
        self.app = app
        self.url = f"http://127.0.0.1:{port}"
        self.chat_url = f"{self.url}{VERTEX_PATH}/chat/completions"
        self.sdk_base_url = f"{self.url}{SDK_PATH}"


@contextmanager
def serve(
    settings: Settings,
    *,
    backends: Mapping[str, Backend] | None = None,
    ready_timeout: float = 60,
    reload: Callable[[], Settings] | None = None,
    loop: Literal["auto", "asyncio"] = "auto",
) -> Iterator[RunningServer]:
    """`loop="asyncio"`: the standard event loop, whose name lookups go through
    `socket.getaddrinfo` (uvloop's go through libuv), for a test that stands in for the resolver."""
    app = create_app(settings, backends=backends, reload=reload)
    sock = bind_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop=loop))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    running = RunningServer(sock.getsockname()[1], app)
    deadline = time.monotonic() + ready_timeout
    while True:
        try:
            if httpx.get(f"{running.url}/readyz", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("openvertex did not become ready")
        time.sleep(0.05)
    try:
        yield running
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@contextmanager
def serving(config: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`openvertex serve --config`, ready; killed at the end if it is still running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENVERTEX_")}
    command = [sys.executable, "-m", "openvertex", "serve", "--port", "0", "--config", str(config)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().split()[-1]
            deadline = time.monotonic() + 60
            while not _ready(url):
                assert time.monotonic() < deadline and process.poll() is None, "openvertex did not become ready"
                time.sleep(0.1)
            yield process, url
        finally:
            process.kill()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz").status_code == 200
    except httpx.TransportError:
        return False
