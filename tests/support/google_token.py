"""A Google OAuth token endpoint on loopback, and a service-account key file that points at it,
so the real google-auth code path (a signed JWT exchanged for a token) runs in tests."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

ACCESS_TOKEN = "ya29.openvertex-test"


def _unpadded(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


@dataclass
class TokenEndpoint:
    key_file: Path  # a service-account JSON whose token_uri is this endpoint
    grants: list[dict[str, object]] = field(default_factory=list)  # the verified JWT claims received


@contextmanager
def token_endpoint(directory: Path, *, expires_in: int = 3599, status: int = 200) -> Iterator[TokenEndpoint]:
    """`status`: what every exchange answers; other than 200, an OAuth error."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key()
    grants: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["content-length"])).decode()))
            header, payload, signature = form.get("assertion", "..").split(".")
            public.verify(_decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_decode(payload))
            grants.append(claims)
            if "target_audience" in claims:
                now = int(time.time())
                token = {"aud": claims["target_audience"], "iat": now, "exp": now + expires_in}
                body = {"id_token": f"e30.{_unpadded(json.dumps(token).encode()).decode()}.c2ln"}
            else:
                body = {"access_token": ACCESS_TOKEN, "expires_in": expires_in, "token_type": "Bearer"}
            if status != 200:
                body = {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    key_file = directory / "service-account.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "sa-project",
                "private_key_id": "test-key",
                "private_key": pem.decode(),
                "client_email": "tester@sa-project.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": f"http://127.0.0.1:{server.server_port}/token",
            }
        )
    )
    try:
        yield TokenEndpoint(key_file, grants)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
