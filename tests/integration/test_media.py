"""Media URIs read by the server for a backend that does not fetch them itself, on the real server
over loopback: what is fetched arrives inline, and every refusal (SSRF, size, type, scheme) is a
400 naming the part, with no request reaching a host it must not reach."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from openvertex.backends.base import Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.settings import MediaSettings, Settings
from tests.support.server import RunningServer, serve

AUTH = {"Authorization": "Bearer test"}
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
UNSIZED = PNG + bytes(256 * 1024 - len(PNG))  # 256 KiB, sent in 8 writes
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(64))
NATIVE = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent"
# A backend like the embedded model: it reads media bytes, never URIs.
READS_BYTES = Capabilities(input_mime_prefixes=("image/", "audio/", "application/pdf"), reads_media_uris=False)


@dataclass
class Files:
    """A loopback web server: `/x.png` a PNG, `/big.png` 64 KiB, `/to?url` a 302 there, `/page` HTML."""

    hits: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def files() -> Iterator[Files]:
    served = Files()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            served.hits.append(self.path)
            if self.path.startswith("/slowly-to?"):  # each hop takes its time
                time.sleep(0.4)
                self.send_response(302)
                self.send_header("location", self.path)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("location", self.path.removeprefix("/to?"))
                self.send_header("content-length", "0")
                self.end_headers()
                return
            if self.path == "/unsized.png":  # no length: the body ends when the connection closes
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.end_headers()
                for _ in range(8):
                    self.wfile.write(UNSIZED[: len(UNSIZED) // 8] if _ == 0 else bytes(len(UNSIZED) // 8))
                    self.wfile.flush()
                return
            body, kind = {
                "/x.png": (PNG, "image/png"),
                "/big.png": (PNG + bytes(64 * 1024), "image/png"),
                "/page": (b"<html></html>", "text/html"),
            }.get(self.path, (b"", ""))
            self.send_response(200 if kind else 404)
            self.send_header("content-type", kind or "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.port = server.server_port
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


@contextmanager
def _gateway(
    tmp_path: Path, fake: FakeBackend, *, loop: Literal["auto", "asyncio"] = "auto", **media: Any
) -> Iterator[RunningServer]:
    settings = Settings(port=0, state_dir=tmp_path, media=MediaSettings(**media))
    with serve(settings, backends={"local": fake}, loop=loop) as server:
        yield server


def _chat(server: RunningServer, *parts: dict[str, Any]) -> httpx.Response:
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": [*parts]}]}
    return httpx.post(server.chat_url, json=body, headers=AUTH, timeout=30)


def _image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _refusal(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    message: str = response.json()[0]["error"]["message"]
    return message


def test_an_allowed_host_is_fetched_and_sent_inline(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    with _gateway(tmp_path, fake, allow_http=True, allowed_hosts=["127.0.0.1"]) as server:
        response = _chat(server, {"type": "text", "text": "What is this?"}, _image(f"{files.url}/x.png"))
        assert response.status_code == 200, response.text
    part = fake.requests[-1].contents[0].parts[1]
    assert part.file_data is None and part.inline_data is not None
    assert (part.inline_data.mime_type, base64.b64decode(part.inline_data.data)) == ("image/png", PNG)
    assert files.hits == ["/x.png"]


def test_a_body_of_unknown_length_is_read_whole_and_bounded(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    with _gateway(tmp_path, fake, allow_http=True, allowed_hosts=["127.0.0.1"]) as server:
        assert _chat(server, _image(f"{files.url}/unsized.png")).status_code == 200
    inline = fake.requests[-1].contents[0].parts[0].inline_data
    assert inline is not None and base64.b64decode(inline.data) == UNSIZED
    media = {"allow_http": True, "allowed_hosts": ["127.0.0.1"], "max_part_bytes": 64 * 1024}
    with _gateway(tmp_path, FakeBackend(capabilities=READS_BYTES), **media) as server:
        assert "larger than 65536 bytes" in _refusal(_chat(server, _image(f"{files.url}/unsized.png")))
        assert "port is not valid" in _refusal(_chat(server, _image("https://example.com:99999/x.png")))


def test_the_timeout_covers_the_whole_fetch(tmp_path: Path, files: Files) -> None:
    # Each hop answers within the timeout; together they do not, and that is what counts.
    fake = FakeBackend(capabilities=READS_BYTES)
    with _gateway(tmp_path, fake, allow_http=True, allowed_hosts=["127.0.0.1"], fetch_timeout_s=1.0) as server:
        message = _refusal(_chat(server, _image(f"{files.url}/slowly-to?x")))
    assert message.endswith("fetching the URI took longer than 1 s")
    assert 2 <= len(files.hits) <= 3 and fake.requests == []


def test_a_resolver_that_never_answers_ends_at_the_deadline(
    tmp_path: Path, files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Name resolution counts against fetch_timeout_s too: a DNS server that never answers
    cannot hold a request (and its place) for the resolver's own minutes of retries."""
    resolve, released = socket.getaddrinfo, threading.Event()
    asked: list[str] = []

    def silent(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "never-answers.example":
            asked.append(host)
            released.wait(30)
            raise socket.gaierror(socket.EAI_AGAIN, "no answer")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", silent)
    fake = FakeBackend(capabilities=READS_BYTES)
    try:
        with _gateway(tmp_path, fake, loop="asyncio", fetch_timeout_s=1.0) as server:
            message = _refusal(_chat(server, _image("https://never-answers.example/cat.png")))
            assert message.endswith("fetching the URI took longer than 1 s")
            assert asked == ["never-answers.example"] and fake.requests == []
            released.set()  # before the server stops: its loop waits for its resolver threads
    finally:
        released.set()


def test_a_redirect_is_followed_and_checked_again(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    target = f"{files.url}/x.png"
    with _gateway(tmp_path, fake, allow_http=True, allowed_hosts=["localhost"]) as server:
        # localhost is allowed by name; the redirect leads to 127.0.0.1, which is not.
        message = _refusal(_chat(server, _image(f"http://localhost:{files.port}/to?{target}")))
    assert message.startswith("messages[0].content[0].image_url: refusing to fetch from 127.0.0.1")
    assert files.hits == [f"/to?{target}"]  # the redirect was asked for; its target never was


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("169.254.169.254", "169.254.169.254"),
        ("[::1]", "::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
        # IPv6 forms that carry an IPv4 address, and reach it on hosts that route them.
        ("[64:ff9b::a00:5]", "10.0.0.5"),  # NAT64
        ("[2002:7f00:1::]", "127.0.0.1"),  # 6to4
        ("[::7f00:1]", "127.0.0.1"),  # IPv4-compatible
        ("[::ffff:0:7f00:1]", "127.0.0.1"),  # SIIT translated
        ("[64:ff9b:1::a00:5]", "64:ff9b:1::a00:5"),  # local-use NAT64
        ("localhost", "127.0.0.1"),
    ],
)
def test_internal_addresses_are_refused_before_any_connection(
    tmp_path: Path, files: Files, host: str, shown: str
) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    with _gateway(tmp_path, fake, allow_http=True) as server:
        message = _refusal(_chat(server, _image(f"http://{host}:{files.port}/x.png")))
    assert "refusing to fetch from" in message and shown in message
    assert files.hits == [] and fake.requests == []


def test_http_is_refused_unless_allowed(tmp_path: Path, files: Files) -> None:
    with _gateway(tmp_path, FakeBackend(capabilities=READS_BYTES), allowed_hosts=["127.0.0.1"]) as server:
        message = _refusal(_chat(server, _image(f"{files.url}/x.png")))
    assert message == "messages[0].content[0].image_url: http:// URIs are not fetched; use https://"
    assert files.hits == []


def test_size_type_and_status_are_checked(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    media = {"allow_http": True, "allowed_hosts": ["127.0.0.1"], "max_part_bytes": 32 * 1024}
    with _gateway(tmp_path, fake, **media) as server:
        assert "larger than 32768 bytes" in _refusal(_chat(server, _image(f"{files.url}/big.png")))
        assert "answered HTTP 404" in _refusal(_chat(server, _image(f"{files.url}/missing.png")))
        jpeg_as_png = f"data:image/png;base64,{base64.b64encode(JPEG).decode()}"
        message = _refusal(_chat(server, _image(jpeg_as_png)))
        assert message == "messages[0].content[0].image_url: the data is image/jpeg, not image/png"
        gif = f"data:image/gif;base64,{base64.b64encode(b'GIF89a' + bytes(16)).decode()}"
        assert "unsupported MIME type image/gif" in _refusal(_chat(server, _image(gif)))
    assert fake.requests == []


def test_native_parts_are_named_by_their_path(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend(capabilities=READS_BYTES)
    with _gateway(tmp_path, fake, allow_http=True) as server:
        part = {"fileData": {"mimeType": "image/png", "fileUri": f"{files.url}/x.png"}}
        body = {"contents": [{"role": "user", "parts": [{"text": "look"}, part]}]}
        response = httpx.post(f"{server.url}{NATIVE}", json=body, headers=AUTH)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("contents[0].parts[1].fileData.fileUri: refusing to fetch from 127.0.0.1")
    assert files.hits == []


def test_a_backend_that_reads_uris_gets_them_untouched(tmp_path: Path, files: Files) -> None:
    fake = FakeBackend()  # like Gemini: fetches gs:// and https:// itself
    with _gateway(tmp_path, fake, allowed_buckets=["cloud-samples-*"]) as server:
        response = _chat(server, _image("gs://cloud-samples-data/generative-ai/image/scones.jpg"))
        assert response.status_code == 200, response.text
    part = fake.requests[-1].contents[0].parts[0]
    assert part.file_data is not None and part.file_data.file_uri.startswith("gs://cloud-samples-data/")
    assert files.hits == []


@pytest.mark.parametrize("reads_uris", [True, False], ids=["gemini-like", "read-by-openvertex"])
def test_a_gs_uri_names_only_a_bucket_the_operator_allows(tmp_path: Path, reads_uris: bool) -> None:
    """gs:// is read with the server's credentials (or the project's service agent on Vertex):
    a caller may not point it at the operator's other buckets, whichever backend answers."""
    fake = FakeBackend(capabilities=None if reads_uris else Capabilities(input_mime_prefixes=("image/",)))
    private = "gs://operator-private/secrets.png"
    native = {"contents": [{"role": "user", "parts": [{"fileData": {"mimeType": "image/png", "fileUri": private}}]}]}
    for allowed in ([], ["cloud-samples-*"]):  # none by default
        with _gateway(tmp_path, fake, allowed_buckets=allowed) as server:
            message = _refusal(_chat(server, _image(private)))
            assert message == (
                "messages[0].content[0].image_url: the bucket operator-private is not one this server "
                "reads media from (media.allowed_buckets)"
            )
            url = (
                f"{server.url}/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent"
            )
            response = httpx.post(url, json=native, headers=AUTH, timeout=30)
            assert response.status_code == 400
            assert response.json()["error"]["message"].startswith(
                "contents[0].parts[0].fileData.fileUri: the bucket operator-private is not one"
            )
    assert fake.requests == []


def test_a_gcs_read_that_never_answers_ends_at_the_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A storage server that accepts and never replies: the read gives up within fetch_timeout_s,
    the request is a 400 naming the object, and the server goes on."""
    silent = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(silent.accept()[0]), daemon=True).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{silent.getsockname()[1]}")
    fake = FakeBackend(capabilities=Capabilities(input_mime_prefixes=("image/",)))
    try:
        with _gateway(tmp_path, fake, allowed_buckets=["slow"], fetch_timeout_s=1) as server:
            started = time.monotonic()
            message = _refusal(_chat(server, _image("gs://slow/cat.png")))
            waited = time.monotonic() - started
            assert message == "messages[0].content[0].image_url: reading gs://slow/cat.png took longer than 1 s"
            assert accepted  # it did reach the server, which never answered
            assert waited < 20  # not the client library's 60 s timeout with retries for minutes
            assert _chat(server, {"type": "text", "text": "still there?"}).status_code == 200
    finally:
        for connection in accepted:
            connection.close()
        silent.close()


def test_media_in_a_system_instruction_is_a_400(tmp_path: Path) -> None:
    """Google's system instructions are text only: an image there would reach no model."""
    fake = FakeBackend(capabilities=READS_BYTES)
    png = base64.b64encode(PNG).decode()
    body = {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"inlineData": {"mimeType": "image/png", "data": png}}]},
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
    }
    with _gateway(tmp_path, fake) as server:
        response = httpx.post(f"{server.url}{NATIVE}", json=body, headers=AUTH)
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"] == "systemInstruction.parts[1]: a system instruction takes text parts only"
    )
    assert fake.requests == []


def test_a_context_cache_cannot_carry_a_gs_uri_past_the_bucket_rule(tmp_path: Path) -> None:
    """A cache's content reaches the backend too (counted when made, read when used): its gs://
    URIs name allowed buckets, or making the cache is the same 400 as sending the URI."""
    fake = FakeBackend()  # reads URIs itself, as Gemini on Vertex
    private = {"fileData": {"mimeType": "application/pdf", "fileUri": "gs://operator-private/secrets.pdf"}}
    cache = {
        "model": "projects/p/locations/l/publishers/google/models/gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [private]}],
    }
    with _gateway(tmp_path, fake, allowed_buckets=["cloud-samples-data"]) as server:
        url = f"{server.url}/v1beta1/projects/p/locations/l/cachedContents"
        response = httpx.post(url, json=cache, headers=AUTH, timeout=30)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"] == (
            "contents[0].parts[0].fileData.fileUri: the bucket operator-private is not one this server "
            "reads media from (media.allowed_buckets)"
        )
    assert fake.requests == [] and fake.prefixes == {}
