"""Media a request points at, read into bytes for a backend that cannot fetch it itself.

Gemini on Vertex fetches `gs://` and `https://` URIs on its own, and gets them as `fileData`. A
backend without that (the embedded model) gets every media part as `inlineData`, read here:

- `data:` URIs are already inline: their base64 must decode and their bytes match their MIME type;
- `https://` is fetched by the server, refusing any address that is loopback, private,
  link-local, the cloud metadata service or otherwise not public, unless the operator allows the
  host; redirects are followed by hand and checked again, size and time are bounded, and
  `http://` is refused unless allowed. The check is made on the resolved addresses, and again on
  the address each connection goes to, so a name that changes its answer in between gains nothing;
- `gs://` is read with google-cloud-storage under Application Default Credentials, or from the
  emulator `STORAGE_EMULATOR_HOST` names (the ecosystem's convention), within fetch_timeout_s.
  Those are the server's credentials (and Gemini on Vertex reads a `gs://` URI as the project's
  service agent), so a request may name only the buckets the operator allows, for every backend.

Every failure is a 400 that names the part and the reason.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp

from openvertex.errors import InvalidArgumentError
from openvertex.http_clients import HttpClients, SessionSpec
from openvertex.protocol import generate_content as gc
from openvertex.settings import MediaSettings

Namer = Callable[[str], str]

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MEDIA_FAMILIES = ("image/", "audio/", "video/", "application/pdf")  # a served type taken as the media's
INLINE_CHECK_CHARS = 256 * 1024  # base64 decoded on the event loop up to this much, else on a thread

# What Gemini reads (Vertex's documented input types): these images and documents, and audio,
# video and text of any subtype.
SUPPORTED_MIME_TYPES = frozenset(
    {"image/png", "image/jpeg", "image/webp", "image/heic", "image/heif", "application/pdf"}
)
SUPPORTED_MIME_FAMILIES = ("audio/", "video/", "text/")
# Other names clients use for the same types.
MIME_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/mp3": "audio/mpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/x-flac": "audio/flac",
    "audio/x-aiff": "audio/aiff",
}


def canonical_mime(mime: str) -> str:
    base = mime.split(";", 1)[0].strip().lower()
    return MIME_ALIASES.get(base, base)


# Leading bytes that name a format unambiguously (its magic): (offset, magic, MIME type).
_MAGIC = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (8, b"WEBP", "image/webp"),
    (8, b"WAVE", "audio/wav"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"fLaC", "audio/flac"),
    (0, b"OggS", "audio/ogg"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
)


def sniff_mime(data: bytes) -> str | None:
    """The type the bytes themselves show, for the formats whose magic is unambiguous."""
    for offset, magic, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (offset == 0 or data[:4] == b"RIFF"):
            return mime
    if len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0 and data[1] & 0x06:  # an MPEG audio frame
        return "audio/mpeg"
    return None


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Set while fetching from a host the operator allowed by name: its addresses may be internal.
_HOST_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("media_host_allowed", default=False)


# IPv6 forms that carry an IPv4 address in their last 32 bits, and reach it where a host routes
# them: NAT64's well-known prefix (RFC 6052), SIIT's IPv4-translated form (RFC 2765) and the
# deprecated IPv4-compatible form. Such an address is judged as the IPv4 address it carries.
_CARRYING_IPV4 = tuple(ipaddress.IPv6Network(net) for net in ("64:ff9b::/96", "::ffff:0:0:0/96", "::/96"))
# Local-use NAT64 (RFC 8215) puts the IPv4 address where the operator chooses: never public.
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def _ip(address: str) -> IPAddress:
    """The address a connection to `address` reaches: an IPv6 form of an IPv4 address (mapped,
    6to4, NAT64, translated, compatible) is that IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if not isinstance(ip, ipaddress.IPv6Address) or ip.is_loopback or ip.is_unspecified:
        return ip
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in network for network in _CARRYING_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _is_public(ip: IPAddress) -> bool:
    return ip.is_global and not ip.is_multicast and ip not in _LOCAL_NAT64


@dataclass(frozen=True, slots=True)
class Media:
    mime_type: str
    data: bytes


class MediaReader:
    """Reads what media parts point at. `https://` goes through one session of `clients`, whose
    connections reach only the addresses `_socket` lets through."""

    def __init__(self, settings: MediaSettings, clients: HttpClients) -> None:
        self.settings = settings
        networks: list[Network] = []
        names: set[str] = set()
        for entry in settings.allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                names.add(entry.lower())
        self._allowed_networks = tuple(networks)
        self._allowed_names = frozenset(names)
        # No DNS cache: every connection resolves afresh, and `_socket` checks the address it got.
        guarded = SessionSpec(
            timeout=aiohttp.ClientTimeout(total=settings.fetch_timeout_s),
            socket_factory=self._socket,
            use_dns_cache=False,
            trust_env=False,  # a proxy from the environment would connect for us, unchecked
        )
        self._client = clients.add(guarded)
        self._storage: Any = None  # google.cloud.storage.Client, made on first gs:// read

    # ------------------------------------------------------------------ requests

    def check_buckets(self, request: gc.GenerateContentRequest, name: Namer) -> None:
        """Every `gs://` URI names a bucket the operator allows: for a backend that reads them
        itself (Gemini on Vertex, as the project's service agent)."""
        for path, part in _media_parts(request):
            uri = part.file_data.file_uri if part.file_data is not None else ""
            if urlsplit(uri).scheme.lower() == "gs":
                self._bucket_object(uri, param=_origin(part) or name(f"{path}.fileData.fileUri"))

    async def check_inline(self, request: gc.GenerateContentRequest, name: Namer) -> None:
        """Inline media, for every backend: valid base64, a supported type its bytes agree with,
        and within the per-part and per-request sizes (decoded off the event loop when large)."""
        size = sum(len(part.inline_data.data) for _, part in _media_parts(request) if part.inline_data is not None)
        if size > INLINE_CHECK_CHARS:
            await asyncio.to_thread(self._check_inline, request, name)
        elif size:
            self._check_inline(request, name)

    def _check_inline(self, request: gc.GenerateContentRequest, name: Namer) -> None:
        total = 0
        for path, part in _media_parts(request):
            if part.inline_data is None:
                continue
            param = _origin(part) or name(f"{path}.inlineData")
            media = self._decoded(part.inline_data, param=param)
            total += len(media.data)
            if total > self.settings.max_request_bytes:
                raise InvalidArgumentError(
                    f"the request's media exceed {self.settings.max_request_bytes} bytes", param=param
                )

    async def inline(self, request: gc.GenerateContentRequest, name: Namer) -> gc.GenerateContentRequest:
        """The request with every `fileData` part of its messages read and sent as `inlineData`
        instead. A function response's files stay references: a tool's result names them, and a
        text model is told what they are (their bytes would not be read by it)."""
        if not any(part.file_data is not None for _, part in _media_parts(request, responses=False)):
            return request
        request = request.model_copy(deep=True)
        total = sum(len(p.inline_data.data) * 3 // 4 for _, p in _media_parts(request) if p.inline_data is not None)
        for path, part in _media_parts(request, responses=False):
            if part.file_data is None:
                continue
            param = _origin(part) or name(f"{path}.fileData.fileUri")
            media = await self.read(part.file_data.file_uri, part.file_data.mime_type, param=param)
            total += len(media.data)
            if total > self.settings.max_request_bytes:
                raise InvalidArgumentError(
                    f"the request's media exceed {self.settings.max_request_bytes} bytes", param=param
                )
            encoded = base64.b64encode(media.data).decode()
            part.inline_data, part.file_data = gc.Blob(mime_type=media.mime_type, data=encoded), None
        return request

    # ------------------------------------------------------------------ one URI

    async def read(self, uri: str, declared: str | None, *, param: str) -> Media:
        scheme = urlsplit(uri).scheme.lower()
        if scheme == "gs":
            data = await self._read_gcs(uri, param=param)
        elif scheme == "https" or (scheme == "http" and self.settings.allow_http):
            data, served = await self._fetch(uri, param=param)
            declared = declared or served
        elif scheme == "http":
            raise InvalidArgumentError("http:// URIs are not fetched; use https://", param=param)
        else:
            raise InvalidArgumentError("expected a gs://, https:// or data: URI", param=param)
        return Media(self._checked_type(declared, data, param=param), data)

    def _decoded(self, blob: gc.Blob, *, param: str) -> Media:
        text = blob.data
        if len(text) * 3 // 4 > self.settings.max_part_bytes:
            raise InvalidArgumentError(f"inline data larger than {self.settings.max_part_bytes} bytes", param=param)
        try:
            data = base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgumentError("inline data is not valid base64", param=param) from None
        return Media(self._checked_type(blob.mime_type, data, param=param), data)

    def _checked_type(self, declared: str | None, data: bytes, *, param: str) -> str:
        sniffed = sniff_mime(data)
        mime = canonical_mime(declared) if declared else sniffed
        if mime is None or mime == "application/octet-stream":
            if sniffed is None:
                raise InvalidArgumentError("the media type is unknown: give a MIME type", param=param)
            mime = sniffed
        if mime not in SUPPORTED_MIME_TYPES and not mime.startswith(SUPPORTED_MIME_FAMILIES):
            raise InvalidArgumentError(f"unsupported MIME type {mime}", param=param)
        if sniffed is not None and sniffed != mime:
            raise InvalidArgumentError(f"the data is {sniffed}, not {mime}", param=param)
        return mime

    # ------------------------------------------------------------------ https://

    def _socket(self, addr_info: Any) -> socket.socket:
        """Every connection's last check: the address it is about to connect to."""
        family, kind, proto, _, address = addr_info
        if not _HOST_ALLOWED.get() and not self._allowed_address(str(address[0])):
            raise OSError(errno.EACCES, f"{address[0]} is not a public address")
        return socket.socket(family, kind, proto)

    def _allowed_address(self, address: str) -> bool:
        ip = _ip(address)
        return _is_public(ip) or any(ip in network for network in self._allowed_networks)

    async def _check_host(self, host: str, port: int, *, param: str) -> None:
        allowed = host.lower() in self._allowed_names
        _HOST_ALLOWED.set(allowed)
        if allowed:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:
            raise InvalidArgumentError(f"the host {host} could not be resolved", param=param) from None
        for *_, address in infos:
            if not self._allowed_address(str(address[0])):
                reached = str(_ip(str(address[0])))
                shown = address[0] if reached == address[0] else f"{address[0]} ({reached})"
                raise InvalidArgumentError(
                    f"refusing to fetch from {host}: it resolves to {shown}, not a public address", param=param
                )

    async def _fetch(self, uri: str, *, param: str) -> tuple[bytes, str | None]:
        """The bytes at `uri`, and the media type the server gave (when it names one): the whole
        fetch, every name resolved and every redirect followed, within fetch_timeout_s."""
        try:
            async with asyncio.timeout(self.settings.fetch_timeout_s):
                return await self._follow(uri, param=param)
        except TimeoutError:
            raise InvalidArgumentError(
                f"fetching the URI took longer than {self.settings.fetch_timeout_s:g} s", param=param
            ) from None

    async def _follow(self, uri: str, *, param: str) -> tuple[bytes, str | None]:
        for _ in range(self.settings.max_redirects + 1):
            await self._check_target(uri, param=param)
            try:
                async with self._client.session.get(uri, allow_redirects=False) as response:
                    if response.status in REDIRECTS and "location" in response.headers:
                        uri = urljoin(uri, response.headers["location"])
                        continue
                    if response.status != 200:
                        raise InvalidArgumentError(f"fetching the URI answered HTTP {response.status}", param=param)
                    data = await self._bounded_body(response, param=param)
                    served = response.headers.get("content-type", "")
                    return data, served if served.startswith(MEDIA_FAMILIES) else None
            except TimeoutError:
                raise InvalidArgumentError(
                    f"fetching the URI took longer than {self.settings.fetch_timeout_s:g} s", param=param
                ) from None
            except aiohttp.ClientConnectorError as error:
                if error.os_error.errno == errno.EACCES:
                    reason = f"refusing to fetch from {error.host}: not a public address"
                    raise InvalidArgumentError(reason, param=param) from None
                reason = f"the URI could not be fetched: {error.strerror or error}"
                raise InvalidArgumentError(reason, param=param) from None
            except aiohttp.ClientError as error:
                raise InvalidArgumentError(f"the URI could not be fetched: {error}", param=param) from None
        raise InvalidArgumentError(f"more than {self.settings.max_redirects} redirects", param=param)

    async def _check_target(self, uri: str, *, param: str) -> None:
        """A URI about to be fetched (the first, or where a redirect leads): scheme, host, address."""
        parts = urlsplit(uri)
        if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not self.settings.allow_http):
            raise InvalidArgumentError(f"a redirect to {parts.scheme}:// is not followed", param=param)
        try:
            host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidArgumentError("the URI's port is not valid", param=param) from None
        if not host:
            raise InvalidArgumentError("the URI has no host", param=param)
        await self._check_host(host, port, param=param)

    async def _bounded_body(self, response: aiohttp.ClientResponse, *, param: str) -> bytes:
        limit = self.settings.max_part_bytes
        if (response.content_length or 0) > limit:
            raise InvalidArgumentError(f"the media are larger than {limit} bytes", param=param)
        body = bytearray()
        async for piece in response.content.iter_chunked(64 * 1024):
            body += piece
            if len(body) > limit:
                raise InvalidArgumentError(f"the media are larger than {limit} bytes", param=param)
        return bytes(body)

    # ------------------------------------------------------------------ gs://

    def _bucket_object(self, uri: str, *, param: str) -> tuple[str, str]:
        """A `gs://` URI's bucket and object, the bucket one the operator allows."""
        bucket, _, name = uri[len("gs://") :].partition("/")
        if not bucket or not name:
            raise InvalidArgumentError("expected gs://BUCKET/OBJECT", param=param)
        if not any(fnmatchcase(bucket, allowed) for allowed in self.settings.allowed_buckets):
            raise InvalidArgumentError(
                f"the bucket {bucket} is not one this server reads media from (media.allowed_buckets)", param=param
            )
        return bucket, name

    async def _read_gcs(self, uri: str, *, param: str) -> bytes:
        bucket, name = self._bucket_object(uri, param=param)
        timeout_s = self.settings.fetch_timeout_s
        try:
            # The thread's own calls give up by the same deadline (the client's timeouts and retry).
            async with asyncio.timeout(timeout_s):
                return await asyncio.to_thread(self._read_gcs_blocking, bucket, name, param)
        except TimeoutError:
            raise InvalidArgumentError(
                f"reading gs://{bucket}/{name} took longer than {timeout_s:g} s", param=param
            ) from None

    def _read_gcs_blocking(self, bucket: str, name: str, param: str) -> bytes:
        from google.api_core import exceptions  # the storage client's own errors
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud.storage.retry import DEFAULT_RETRY

        limit = self.settings.max_part_bytes
        deadline = time.monotonic() + self.settings.fetch_timeout_s

        def left() -> float:
            return max(deadline - time.monotonic(), 0.001)

        try:
            blob = (
                self._storage_client()
                .bucket(bucket)
                .get_blob(name, timeout=left(), retry=DEFAULT_RETRY.with_timeout(left()))
            )
            if blob is None:
                raise InvalidArgumentError(f"gs://{bucket}/{name} does not exist", param=param)
            if (blob.size or 0) > limit:
                raise InvalidArgumentError(f"the media are larger than {limit} bytes", param=param)
            data: bytes = blob.download_as_bytes(end=limit, timeout=left(), retry=DEFAULT_RETRY.with_timeout(left()))
            return data
        except exceptions.NotFound:
            raise InvalidArgumentError(f"gs://{bucket}/{name} does not exist", param=param) from None
        except exceptions.Forbidden:
            raise InvalidArgumentError(
                f"gs://{bucket}/{name} is not readable with these credentials", param=param
            ) from None
        except (exceptions.GoogleAPIError, DefaultCredentialsError, OSError) as error:
            raise InvalidArgumentError(f"gs://{bucket}/{name} could not be read: {error}", param=param) from None

    def _storage_client(self) -> Any:
        if self._storage is None:
            from google.cloud import storage

            if os.environ.get("STORAGE_EMULATOR_HOST"):
                self._storage = storage.Client.create_anonymous_client()
            else:
                self._storage = storage.Client()
        return self._storage


def _origin(part: gc.Part | gc.FunctionResponsePart) -> str | None:
    return part.origin() if isinstance(part, gc.Part) else None


def _media_parts(request: gc.GenerateContentRequest, *, responses: bool = True) -> list[tuple[str, Any]]:
    """Every part that holds or points at media, with its native path; with `responses`, those of
    multimodal function responses too."""
    found: list[tuple[str, Any]] = []
    for i, content in enumerate(request.contents):
        for j, part in enumerate(content.parts):
            path = f"contents[{i}].parts[{j}]"
            if part.inline_data is not None or part.file_data is not None:
                found.append((path, part))
            response = part.function_response if responses else None
            for k, inner in enumerate(response.parts or [] if response is not None else []):
                if inner.inline_data is not None or inner.file_data is not None:
                    found.append((f"{path}.functionResponse.parts[{k}]", inner))
    return found
