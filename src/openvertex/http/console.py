"""The web console's files, served at `/` and `/console/…` from the package: read once, sent with
a content hash for revalidation and a policy that lets the page load nothing but its own files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from openvertex.errors import NotFoundError

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

# Scripts, styles and requests only from this server; attachments are shown from data: URLs.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src 'self' data: blob:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS = {
    "content-security-policy": _POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",  # revalidated each load: an upgraded server's page is the new one
}


@dataclass(frozen=True, slots=True)
class _File:
    body: bytes
    media_type: str
    etag: str


def _files() -> dict[str, _File]:
    folder = resources.files("openvertex") / "console"
    found: dict[str, _File] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _TYPES:
            body = entry.read_bytes()
            found[entry.name] = _File(body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    return found


class Console:
    def __init__(self) -> None:
        self._files = _files()

    def routes(self) -> list[Route]:
        return [
            Route("/", self.index, methods=["GET"], name="console_page"),
            Route("/console/{file:str}", self.file, methods=["GET"], name="console_file"),
        ]

    async def index(self, request: Request) -> Response:
        return self._send(request, "index.html")

    async def file(self, request: Request) -> Response:
        return self._send(request, request.path_params["file"])

    def _send(self, request: Request, name: str) -> Response:
        found = self._files.get(name)
        if found is None:
            raise NotFoundError("The requested URL was not found on this server.")
        headers = {**_HEADERS, "etag": found.etag}
        if request.headers.get("if-none-match") == found.etag:
            return Response(status_code=304, headers=headers)
        return Response(found.body, media_type=found.media_type, headers=headers)
