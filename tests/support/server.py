"""A real openvertex server on 127.0.0.1 (port 0) in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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
    settings: Settings, *, backends: Mapping[str, Backend] | None = None, ready_timeout: float = 60
) -> Iterator[RunningServer]:
    app = create_app(settings, backends=backends)
    sock = bind_listener("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
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
