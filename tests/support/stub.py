"""A scripted HTTP server on loopback: records every request, answers from a list of replies
(the last one repeats), or with what a function makes of each request. For upstream failure modes
a real server does not produce on demand, and upstreams that answer by what they are asked."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Stub:
    url: str
    replies: list[Reply]
    requests: list[Recorded] = field(default_factory=list)


@contextmanager
def stub_server(replies: list[Reply], answer: Callable[[Recorded], Reply] | None = None) -> Iterator[Stub]:
    lock = threading.Lock()
    stub = Stub("", list(replies))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.do_POST("GET")

        def do_POST(self, method: str = "POST") -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            recorded = Recorded(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            with lock:
                stub.requests.append(recorded)
                if answer is None:
                    reply = stub.replies.pop(0) if len(stub.replies) > 1 else stub.replies[0]
            if answer is not None:
                reply = answer(recorded)
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            self.send_header("content-length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
