"""Self-deployed endpoints (`…/endpoints/{ID}/chat/completions`) in front of real upstreams on loopback:
`python -m llama_cpp.server` (a real OpenAI server, vLLM's family), a second openvertex, and a
recording upstream that answers as told and notices when its client leaves."""

from __future__ import annotations

import base64
import json
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import SecretStr

from openvertex.backends.fake import FakeBackend
from openvertex.backends.local.model import resolve_model_path
from openvertex.settings import EndpointSettings, Settings
from tests.support.google_token import ACCESS_TOKEN, token_endpoint
from tests.support.server import RunningServer, serve

CLIENT_KEY = "client-key"
CLIENT = {"Authorization": f"Bearer {CLIENT_KEY}"}
UPSTREAM_KEY = "upstream-secret"
SEED = {"messages": [{"role": "user", "content": "Write a story about a magic backpack."}]}
SEED_STREAM = {"stream": True, **SEED}
SHORT = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "temperature": 0}


def endpoint_url(server: RunningServer, endpoint: str, *, version: str = "v1beta1", location: str = "global") -> str:
    return f"{server.url}/{version}/projects/my-project/locations/{location}/endpoints/{endpoint}/chat/completions"


@contextmanager
def gateway(endpoints: dict[str, EndpointSettings]) -> Iterator[RunningServer]:
    """openvertex serving these endpoint ids, with a fake backend named `local`."""
    with serve(Settings(port=0, api_keys=[CLIENT_KEY], endpoints=endpoints), backends={"local": FakeBackend()}) as s:
        yield s


def sse_events(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    return [event.removeprefix(b"data: ") for event in body[:-2].split(b"\n\n")]


# ---- a real OpenAI server: llama_cpp.server on the embedded model's weights ----------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The base URL (…/v1) of `python -m llama_cpp.server`: one thread, a 512-token context."""
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model_path("smollm2"))]
    command += ["--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", "512"]
    with log.open("wb") as output:
        process = subprocess.Popen([*command, "--model_alias", "smol"], stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def llama_gateway(llama_server: str) -> Iterator[RunningServer]:
    """Endpoint 1234 drops `model`; endpoint 5678 rewrites it to the served alias."""
    # llama_cpp.server has no health route, and its /v1/models waits for the model's lock (and by
    # default interrupts the generation running): its FastAPI schema answers at once.
    common: dict[str, Any] = {"upstreams": [llama_server], "health_path": "/openapi.json", "timeout_s": 120}
    with gateway({"1234": EndpointSettings(**common), "5678": EndpointSettings(model="smol", **common)}) as server:
        yield server


def test_seed_request_verbatim(llama_gateway: RunningServer) -> None:
    response = httpx.post(endpoint_url(llama_gateway, "1234"), json=SEED, headers=CLIENT, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    completion = openai.types.chat.ChatCompletion.model_validate(response.json())
    assert completion.choices[0].message.content


def test_seed_streaming_request_verbatim(llama_gateway: RunningServer) -> None:
    response = httpx.post(endpoint_url(llama_gateway, "1234"), json=SEED_STREAM, headers=CLIENT, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    *chunks, done = sse_events(response.content)
    assert done == b"[DONE]"
    parsed = [openai.types.chat.ChatCompletionChunk.model_validate_json(chunk) for chunk in chunks]
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices)


def test_openai_sdk_through_an_endpoint(llama_gateway: RunningServer) -> None:
    base_url = endpoint_url(llama_gateway, "5678", version="v1").removesuffix("/chat/completions")
    with openai.OpenAI(base_url=base_url, api_key=CLIENT_KEY, max_retries=0, _strict_response_validation=True) as sdk:
        completion = sdk.chat.completions.create(model="google/gemma-3-1b-it", **SHORT)  # type: ignore[call-overload]
        assert completion.object == "chat.completion"
        stream = sdk.chat.completions.create(model="google/gemma-3-1b-it", stream=True, **SHORT)  # type: ignore[call-overload]
        assert [chunk.object for chunk in stream][-1] == "chat.completion.chunk"


def test_upstream_4xx_relayed_unchanged(llama_server: str, llama_gateway: RunningServer) -> None:
    too_long = {"messages": [{"role": "user", "content": "backpack " * 700}], "max_tokens": 8}
    direct = httpx.post(f"{llama_server}/chat/completions", json=too_long, timeout=60)
    relayed = httpx.post(endpoint_url(llama_gateway, "1234"), json=too_long, headers=CLIENT, timeout=60)
    assert direct.status_code == 400
    assert "context" in direct.text
    assert relayed.status_code == direct.status_code
    assert relayed.headers["content-type"] == direct.headers["content-type"]
    assert relayed.content == direct.content


# ---- a second openvertex as the upstream ---------------------------------------------------------


def test_another_openvertex_upstream_with_a_static_bearer() -> None:
    upstream_settings = Settings(port=0, api_keys=[UPSTREAM_KEY])
    with serve(upstream_settings, backends={"local": FakeBackend()}) as upstream:
        settings = EndpointSettings(
            upstreams=[f"{upstream.url}/v1"],
            model="smollm2",  # openvertex needs a model it routes
            auth="bearer",
            bearer_token=SecretStr(UPSTREAM_KEY),
            health_path="/healthz",
        )
        with gateway({"42": settings}) as server:
            response = httpx.post(endpoint_url(server, "42"), json=SEED, headers=CLIENT, timeout=30)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] == "Write a story about a magic backpack."
            assert response.json()["model"] == "smollm2"
            streamed = httpx.post(endpoint_url(server, "42"), json=SEED_STREAM, headers=CLIENT, timeout=30)
            assert streamed.status_code == 200
            assert sse_events(streamed.content)[-1] == b"[DONE]"
            # Without the upstream's key, the upstream's own 401 comes back as it wrote it.
            unauthorised = EndpointSettings(upstreams=[f"{upstream.url}/v1"], model="smollm2", health_path="/healthz")
        with gateway({"43": unauthorised}) as server:
            direct = httpx.post(f"{upstream.url}/v1/chat/completions", json={**SEED, "model": "smollm2"})
            relayed = httpx.post(endpoint_url(server, "43"), json=SEED, headers=CLIENT)
    assert direct.status_code == 401
    assert (relayed.status_code, relayed.content) == (direct.status_code, direct.content)


# ---- a recording upstream ------------------------------------------------------------------------

COMPLETION = (
    b'{"id":"cmpl-1","object":"chat.completion","created":1,"model":"served",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}'
)
FRAMES = [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"served",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"served",'
    b'"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b"data: [DONE]\n\n",
]
TGI_ERROR = b'{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}'


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """Answers as `mode` says: json, sse (waits for `proceed` after the first frame), error (422),
    slow (a frame every 50 ms), hang (nothing), reset (reads the request, then resets the
    connection); `closed` is set when its client leaves early."""

    port: int = 0
    mode: str = "json"
    received: list[Received] = field(default_factory=list)
    health_checks: int = 0
    proceed: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    connections: set[socket.socket] = field(default_factory=set)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Recorder:
        self._server = _RecorderServer(self)
        self.port = self._server.server_port
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Like a killed process: the listener and every open connection go."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        for connection in list(self.connections):
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._server = None


class _RecorderServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(("127.0.0.1", recorder.port), _RecorderHandler)
        self.recorder = recorder


class _RecorderHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RecorderServer

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.recorder.connections.add(self.connection)

    def finish(self) -> None:
        self.server.recorder.connections.discard(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self.server.recorder.health_checks += 1
        self._answer(200, "application/json", b"{}")

    def do_POST(self) -> None:
        recorder = self.server.recorder
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        recorder.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        if recorder.mode == "json":
            self._answer(200, "application/json", COMPLETION)
        elif recorder.mode == "error":
            self._answer(422, "application/json", TGI_ERROR)
        elif recorder.mode == "hang":
            self._wait_for_hang_up()
        elif recorder.mode == "reset":
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            self._stream()

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(self) -> None:
        recorder = self.server.recorder
        self.close_connection = True
        self.send_response(200)
        self.send_header("content-type", "text/event-stream; charset=utf-8")
        self.send_header("connection", "close")
        self.end_headers()
        frames = FRAMES if recorder.mode == "sse" else [FRAMES[0]] * 400
        try:
            for i, frame in enumerate(frames):
                self.wfile.write(frame)
                self.wfile.flush()
                if recorder.mode == "sse" and i == 0:
                    recorder.proceed.wait(10)
                elif recorder.mode == "slow":
                    time.sleep(0.05)
        except OSError:
            self.server.recorder.closed.set()

    def _wait_for_hang_up(self) -> None:
        self.close_connection = True
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            readable, _, _ = select.select([self.connection], [], [], 0.05)
            if readable and not self.connection.recv(1, socket.MSG_PEEK):
                self.server.recorder.closed.set()
                return


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    started = Recorder().start()
    yield started
    started.stop()


def _to(recorder: Recorder, **settings: Any) -> EndpointSettings:
    return EndpointSettings(upstreams=[f"{recorder.url}/v1"], **{"health_interval_s": 60, **settings})


def test_model_dropped_everything_else_byte_for_byte(recorder: Recorder) -> None:
    body = b'{"model": "google/gemma-3", "messages": [{"role": "user", "content": "caf\\u00e9 1.50"}], "top_k": 1.0}'
    with gateway({"1": _to(recorder)}) as server:
        response = httpx.post(
            endpoint_url(server, "1"), content=body, headers={**CLIENT, "content-type": "application/json"}
        )
        assert (response.status_code, response.content) == (200, COMPLETION)
        as_is = b'{"messages": [{"role": "user", "content": "hi"}]}'
        httpx.post(endpoint_url(server, "1"), content=as_is, headers=CLIENT)
    first, second = recorder.received
    assert first.path == "/v1/chat/completions"
    assert first.body == b'{"messages": [{"role": "user", "content": "caf\\u00e9 1.50"}], "top_k": 1.0}'
    assert second.body == as_is


def test_model_rewritten_to_the_served_name(recorder: Recorder) -> None:
    with gateway({"1": _to(recorder, model="meta-llama/Llama-3.1-8B-Instruct")}) as server:
        httpx.post(endpoint_url(server, "1"), content=b'{"model":"x","messages":[]}', headers=CLIENT)
        httpx.post(endpoint_url(server, "1"), content=b'{"messages":[]}', headers=CLIENT)
    assert [r.body for r in recorder.received] == [
        b'{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[]}',
        b'{"model":"meta-llama/Llama-3.1-8B-Instruct","messages":[]}',
    ]


def test_static_bearer_goes_upstream_and_client_credentials_do_not(recorder: Recorder) -> None:
    with gateway({"1": _to(recorder, auth="bearer", bearer_token=SecretStr(UPSTREAM_KEY))}) as server:
        headers = {**CLIENT, "x-goog-api-key": CLIENT_KEY}
        assert (
            httpx.post(endpoint_url(server, "1") + f"?key={CLIENT_KEY}", json=SEED, headers=headers).status_code == 200
        )
    (received,) = recorder.received
    assert received.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert CLIENT_KEY not in json.dumps(received.headers) + received.path
    with gateway({"1": _to(recorder)}) as server:
        httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT)
    assert "authorization" not in recorder.received[-1].headers


def test_stream_relayed_frame_for_frame_as_it_arrives(recorder: Recorder) -> None:
    recorder.mode = "sse"
    with (
        gateway({"1": _to(recorder)}) as server,
        httpx.Client(timeout=10) as client,
        client.stream("POST", endpoint_url(server, "1"), json=SEED_STREAM, headers=CLIENT) as response,
    ):
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        chunks = response.iter_raw()
        first = next(chunks)  # arrives while the upstream holds the rest back: nothing is buffered
        recorder.proceed.set()
        body = first + b"".join(chunks)
    assert first == FRAMES[0]
    assert body == b"".join(FRAMES)
    assert body.endswith(b"data: [DONE]\n\n")


def test_container_error_relayed_as_written(recorder: Recorder) -> None:
    recorder.mode = "error"
    with gateway({"1": _to(recorder)}) as server:
        response = httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT)
        assert (response.status_code, response.content) == (422, TGI_ERROR)
        assert response.headers["content-type"] == "application/json"
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'openvertex_endpoint_requests_total{endpoint="1"} 1' in metrics


def test_client_disconnect_closes_the_upstream_stream(recorder: Recorder) -> None:
    recorder.mode = "slow"
    with gateway({"1": _to(recorder)}) as server:
        with (
            httpx.Client(timeout=10) as client,
            client.stream("POST", endpoint_url(server, "1"), json=SEED_STREAM, headers=CLIENT) as response,
        ):
            assert next(response.iter_raw()).startswith(b"data: ")
        assert recorder.closed.wait(5)


def test_client_disconnect_before_the_answer_closes_the_upstream(recorder: Recorder) -> None:
    recorder.mode = "hang"
    with gateway({"1": _to(recorder)}) as server:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT, timeout=0.5)
        assert recorder.closed.wait(5)


def test_upstream_silence_is_a_google_504(recorder: Recorder) -> None:
    recorder.mode = "hang"
    with gateway({"1": _to(recorder, timeout_s=0.3)}) as server:
        response = httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT, timeout=10)
    assert response.status_code == 504
    assert response.json() == [
        {"error": {"code": 504, "message": "Endpoint `1` did not answer within 0.3 s.", "status": "DEADLINE_EXCEEDED"}}
    ]


# ---- replicas: failover, health, gateway errors --------------------------------------------------


def test_one_of_two_replicas_killed_mid_run_fails_no_request() -> None:
    with ExitStack() as replica_b, serve(Settings(port=0), backends={"local": FakeBackend()}) as a:
        b = replica_b.enter_context(serve(Settings(port=0), backends={"local": FakeBackend()}))
        settings = EndpointSettings(
            upstreams=[f"{a.url}/v1", f"{b.url}/v1"],
            model="smollm2",
            auth="bearer",
            bearer_token=SecretStr("any"),
            health_path="/healthz",
            health_interval_s=60,  # the retry, not a health check, must save the requests
        )
        with gateway({"7": settings}) as server, ThreadPoolExecutor(4) as pool:

            def ask(i: int) -> int:
                body = {"messages": [{"role": "user", "content": f"request {i}"}]}
                return httpx.post(endpoint_url(server, "7"), json=body, headers=CLIENT, timeout=30).status_code

            statuses = []
            for done in as_completed([pool.submit(ask, i) for i in range(20)]):
                statuses.append(done.result())
                if len(statuses) == 6:
                    replica_b.close()  # stops B while the other requests are in flight or queued
            metrics = httpx.get(f"{server.url}/metrics").text
    assert statuses == [200] * 20
    assert 'openvertex_endpoint_requests_total{endpoint="7"} 20' in metrics
    retries = re.search(r'openvertex_endpoint_retries_total\{endpoint="7"\} (\d+)', metrics)
    assert retries is not None and int(retries.group(1)) >= 1  # the killed replica was tried, then the other


def test_request_reset_before_any_answer_goes_to_the_other_replica(recorder: Recorder) -> None:
    resetting = Recorder(mode="reset").start()
    try:
        upstreams = [f"{resetting.url}/v1", f"{recorder.url}/v1"]
        with gateway({"5": EndpointSettings(upstreams=upstreams, health_interval_s=60)}) as server:
            statuses = [httpx.post(endpoint_url(server, "5"), json=SEED, headers=CLIENT).status_code for _ in range(4)]
            metrics = httpx.get(f"{server.url}/metrics").text
    finally:
        resetting.stop()
    assert statuses == [200] * 4
    assert len(recorder.received) == 4 and len(resetting.received) >= 1
    assert f'openvertex_endpoint_retries_total{{endpoint="5"}} {len(resetting.received)}' in metrics


def test_every_replica_resetting_is_a_google_503() -> None:
    resetting = [Recorder(mode="reset").start(), Recorder(mode="reset").start()]
    try:
        upstreams = [f"{each.url}/v1" for each in resetting]
        with gateway({"6": EndpointSettings(upstreams=upstreams, health_interval_s=60)}) as server:
            response = httpx.post(endpoint_url(server, "6"), json=SEED, headers=CLIENT)
    finally:
        for each in resetting:
            each.stop()
    assert response.status_code == 503
    assert response.json()[0]["error"]["message"] == "No replica of endpoint `6` could be reached."
    assert [len(each.received) for each in resetting] == [1, 1]  # each tried once, no more


def test_all_replicas_down_is_a_google_503() -> None:
    down = [f"http://127.0.0.1:{_free_port()}/v1", f"http://127.0.0.1:{_free_port()}/v1"]
    with gateway({"9": EndpointSettings(upstreams=down, health_interval_s=60)}) as server:
        response = httpx.post(endpoint_url(server, "9"), json=SEED, headers=CLIENT)
        assert response.status_code == 503
        assert response.json() == [
            {"error": {"code": 503, "message": "No replica of endpoint `9` could be reached.", "status": "UNAVAILABLE"}}
        ]
        metrics = httpx.get(f"{server.url}/metrics").text
    assert 'openvertex_endpoint_retries_total{endpoint="9"} 1' in metrics
    assert 'openvertex_endpoint_errors_total{endpoint="9"} 1' in metrics


def test_unknown_endpoint_is_a_google_404(recorder: Recorder) -> None:
    with gateway({"1": _to(recorder)}) as server:
        response = httpx.post(endpoint_url(server, "2"), json=SEED, headers=CLIENT)
        assert response.status_code == 404
        assert response.json() == [
            {"error": {"code": 404, "message": "Endpoint `2` not found.", "status": "NOT_FOUND"}}
        ]
        assert httpx.post(endpoint_url(server, "1", version="v2"), json=SEED, headers=CLIENT).status_code == 404
        assert httpx.post(endpoint_url(server, "1"), json=SEED).status_code == 401
        for version in ("v1", "v1beta1"):
            assert (
                httpx.post(
                    endpoint_url(server, "1", version=version, location="us-east5"), json=SEED, headers=CLIENT
                ).status_code
                == 200
            )
    assert len(recorder.received) == 2  # the 401 and 404 never reached it


def test_replica_back_in_service_once_its_health_check_passes(recorder: Recorder) -> None:
    settings = _to(recorder, health_interval_s=0.1, max_failures=1, health_path="/health")
    with gateway({"1": settings}) as server:
        url = endpoint_url(server, "1")
        assert httpx.post(url, json=SEED, headers=CLIENT).status_code == 200
        recorder.stop()
        assert httpx.post(url, json=SEED, headers=CLIENT).status_code == 503  # refused: taken out
        out = httpx.post(url, json=SEED, headers=CLIENT)
        assert (out.status_code, out.json()[0]["error"]["message"]) == (503, "Endpoint `1` has no healthy replica.")
        revived = Recorder(port=recorder.port).start()
        try:
            deadline = time.monotonic() + 10
            while (status := httpx.post(url, json=SEED, headers=CLIENT).status_code) != 200:
                assert status == 503 and time.monotonic() < deadline
                time.sleep(0.05)
            assert revived.health_checks >= 1 and len(revived.received) == 1
        finally:
            revived.stop()


# ---- Google tokens to the upstream: the real google-auth code path against a loopback token endpoint


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def test_google_id_token_for_the_replica(recorder: Recorder, tmp_path: Path) -> None:
    with token_endpoint(tmp_path) as tokens:
        settings = _to(recorder, auth="google-id-token", credentials_file=tokens.key_file)
        with gateway({"1": settings}) as server:
            for _ in range(2):
                assert httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT).status_code == 200
    scheme, _, token = recorder.received[-1].headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    assert _claims(token)["aud"] == recorder.url  # the replica's origin, as Cloud Run expects
    assert [grant["target_audience"] for grant in tokens.grants] == [recorder.url]  # fetched once, then reused


def test_google_access_token_for_the_replica(recorder: Recorder, tmp_path: Path) -> None:
    with token_endpoint(tmp_path) as tokens:
        settings = _to(recorder, auth="google-access-token", credentials_file=tokens.key_file)
        with gateway({"1": settings}) as server:
            assert httpx.post(endpoint_url(server, "1"), json=SEED, headers=CLIENT).status_code == 200
    assert recorder.received[-1].headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert len(tokens.grants) == 1


# ---- an endpoint answered by a configured backend ------------------------------------------------


def test_endpoint_backed_by_a_backend_answers_like_openapi() -> None:
    with gateway({"77": EndpointSettings(backend="local")}) as server:
        pinned = httpx.post(endpoint_url(server, "77"), json=SEED, headers=CLIENT)
        openapi = httpx.post(endpoint_url(server, "openapi"), json={**SEED, "model": "smollm2"}, headers=CLIENT)
        streamed = httpx.post(endpoint_url(server, "77"), json={**SEED_STREAM, "model": "google/x"}, headers=CLIENT)
    assert pinned.status_code == openapi.status_code == 200
    assert pinned.json()["model"] == "77"
    assert pinned.json()["choices"] == openapi.json()["choices"]
    *chunks, done = sse_events(streamed.content)
    assert done == b"[DONE]"
    assert {json.loads(chunk)["model"] for chunk in chunks} == {"77"}
