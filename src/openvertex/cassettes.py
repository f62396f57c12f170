"""Cassettes: recorded exchanges (a GenerateContentRequest and its answer) kept in a directory, one
JSON file per exchange, named by a digest of the normalised request.

The normalised request is what a backend is asked (after translation from either surface, so a
recording made through google-genai answers the OpenAI surface too) as Gemini's JSON, less what
names a resource rather than asks something (`model`, `cachedContent`: the cache's content is
already in front), with each inline medium's bytes replaced by `{"sha256": …}`; the bytes are kept
once under `media/<sha256>`. The digest is the SHA-256 of that request and the routed model id as
canonical JSON (sorted keys, no spaces), so it covers media by content.

    <dir>/<digest>.whole.json     a generateContent answer (or the error it got)
    <dir>/<digest>.stream.json    a stream's chunks, each at its offset from the request's start
    <dir>/media/<sha256>          a request's inline medium, once

Files are written atomically (a temporary file, then a rename) and checked when read: the format
version, a checksum of the whole file and the digest of its request; what fails is a
DamagedCassette, never an answer. Credentials never reach a file: requests carry none (keys and
tokens travel in headers, which are not recorded).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from openvertex.protocol import generate_content as gc

FORMAT = 1
Kind = Literal["whole", "stream"]
KINDS: tuple[Kind, ...] = ("whole", "stream")
_NAME = re.compile(r"^([0-9a-f]{64})\.(whole|stream)\.json$")
_MEDIA_REFERENCE = re.compile(r'"sha256":\s*"([0-9a-f]{64})"')
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOT_ASKED = ("model", "cachedContent")  # names of resources, not what is asked


class DamagedCassette(Exception):
    """A cassette file that cannot be trusted; `name` is the file's name."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path.name}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Chunk:
    offset_s: float  # from the request's start
    response: dict[str, Any]  # a GenerateContentResponse's JSON


@dataclass(frozen=True, slots=True)
class RecordedError:
    """An error the backend answered (Google's shape): replayed as it came."""

    code: int
    status: str
    message: str
    details: list[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Exchange:
    """One recorded request and its answer: a whole response, a stream's chunks, or an error."""

    digest: str
    model: str
    kind: Kind
    request: dict[str, Any]  # normalised
    recorded_at: float  # Unix seconds
    elapsed_s: float  # until the answer was complete
    response: dict[str, Any] | None = None
    chunks: tuple[Chunk, ...] | None = None
    error: RecordedError | None = None

    @property
    def first_chunk_s(self) -> float | None:
        return self.chunks[0].offset_s if self.chunks else None


@dataclass(frozen=True, slots=True)
class Normalised:
    """A request as cassettes key it: its JSON, its digest, and the media its JSON refers to."""

    model: str
    request: dict[str, Any]
    digest: str
    media: dict[str, bytes] = field(default_factory=dict)


# ---------------------------------------------------------------------- the key


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def digest_of(model: str, request: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({"model": model, "request": request})).hexdigest()


def normalise(request: gc.GenerateContentRequest, model: str) -> Normalised:
    data = request.to_json_dict()
    for name in _NOT_ASKED:
        data.pop(name, None)
    media: dict[str, bytes] = {}
    data = _media_by_reference(data, media)
    return Normalised(model, data, digest_of(model, data), media)


def _media_by_reference(value: Any, media: dict[str, bytes]) -> Any:
    """`inlineData.data` (base64) anywhere (parts, function responses' parts) → {"sha256": …}."""
    if isinstance(value, list):
        return [_media_by_reference(item, media) for item in value]
    if not isinstance(value, dict):
        return value
    out = {key: _media_by_reference(item, media) for key, item in value.items()}
    blob = out.get("inlineData")
    if isinstance(blob, dict) and isinstance(blob.get("data"), str):
        data = _bytes(blob["data"])
        sha = hashlib.sha256(data).hexdigest()
        media[sha] = data
        out["inlineData"] = {**blob, "data": {"sha256": sha}}
    return out


def _bytes(text: str) -> bytes:
    """Base64 in either alphabet, padded or not (proto3 JSON reads both); else the text itself."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        return text.encode()


# ---------------------------------------------------------------------- the directory


class Cassettes:
    """A cassette directory: write, find, read and list exchanges."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.expanduser()

    def path(self, digest: str, kind: Kind) -> Path:
        return self.directory / f"{digest}.{kind}.json"

    def media_path(self, sha256: str) -> Path:
        return self.directory / "media" / sha256

    def write(self, exchange: Exchange, media: dict[str, bytes]) -> Path:
        """The exchange's file (replacing an earlier recording of the same request and kind), its
        media first: a file is never seen before what it refers to."""
        for sha, data in media.items():
            target = self.media_path(sha)
            if not target.exists():
                _write_atomically(target, data)
        target = self.path(exchange.digest, exchange.kind)
        _write_atomically(target, seal(exchange_to_json(exchange)))
        return target

    def find(self, digest: str, kind: Kind) -> Exchange | None:
        """The recording of this request and kind; None if there is none; DamagedCassette if it
        cannot be trusted."""
        path = self.path(digest, kind)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        return read_exchange(path, raw)

    def files(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(p for p in self.directory.iterdir() if _NAME.match(p.name))

    def exchanges(self) -> Iterator[Exchange | DamagedCassette]:
        """Every exchange, a damaged file as its DamagedCassette."""
        for path in self.files():
            try:
                yield read_exchange(path, path.read_bytes())
            except DamagedCassette as damaged:
                yield damaged
            except OSError as error:
                yield DamagedCassette(path, f"unreadable: {error.strerror or error}")

    def matching(self, prefix: str) -> list[Path]:
        """The files of the digests that start with `prefix`."""
        return [path for path in self.files() if path.name.startswith(prefix.lower())]


def _write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(scratch, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)


# ---------------------------------------------------------------------- the file


def exchange_to_json(exchange: Exchange) -> dict[str, Any]:
    answer: dict[str, Any] = {"elapsed_s": round(exchange.elapsed_s, 6)}
    if exchange.error is not None:
        error = exchange.error
        answer["error"] = {"code": error.code, "status": error.status, "message": error.message}
        if error.details is not None:
            answer["error"]["details"] = error.details
    elif exchange.chunks is not None:
        answer["first_chunk_s"] = exchange.first_chunk_s
        answer["chunks"] = [{"offset_s": round(c.offset_s, 6), "response": c.response} for c in exchange.chunks]
    else:
        answer["response"] = exchange.response
    return {
        "format": FORMAT,
        "digest": exchange.digest,
        "model": exchange.model,
        "kind": exchange.kind,
        "recorded_at": format_time(exchange.recorded_at),
        "request": exchange.request,
        "answer": answer,
    }


def seal(data: dict[str, Any]) -> bytes:
    """The file's text: its JSON with a checksum of the rest, pretty for the reader's diff."""
    data = {**data, "checksum": hashlib.sha256(canonical(data)).hexdigest()}
    return json.dumps(data, indent=1, ensure_ascii=False).encode() + b"\n"


def read_exchange(path: Path, raw: bytes) -> Exchange:
    """A file's exchange, checked: format, checksum, the digest of its request, its name."""
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise DamagedCassette(path, f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise DamagedCassette(path, "not a JSON object")
    if data.get("format") != FORMAT:
        raise DamagedCassette(path, f"format {data.get('format')!r}; this openvertex reads format {FORMAT}")
    checksum = data.pop("checksum", None)
    if checksum != hashlib.sha256(canonical(data)).hexdigest():
        raise DamagedCassette(path, "its checksum does not match its content")
    try:
        exchange = _exchange(data)
    except (KeyError, TypeError, ValueError) as error:
        raise DamagedCassette(path, f"not an exchange ({type(error).__name__}: {error})") from None
    if digest_of(exchange.model, exchange.request) != exchange.digest:
        raise DamagedCassette(path, "its request does not have the digest it is filed under")
    if path.name != f"{exchange.digest}.{exchange.kind}.json":
        raise DamagedCassette(path, f"it holds the {exchange.kind} exchange {exchange.digest}")
    return exchange


def _exchange(data: dict[str, Any]) -> Exchange:
    answer = data["answer"]
    kind = data["kind"]
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}")
    error = answer.get("error")
    chunks = answer.get("chunks")
    if error is None and (chunks is None) == (kind == "stream"):
        raise ValueError(f"a {kind} exchange without its answer")
    request = data["request"]
    if not isinstance(request, dict) or not isinstance(data["model"], str):
        raise TypeError("request or model")
    return Exchange(
        digest=str(data["digest"]),
        model=data["model"],
        kind=kind,
        request=request,
        recorded_at=parse_time(str(data["recorded_at"])),
        elapsed_s=float(answer["elapsed_s"]),
        response=_object(answer["response"]) if error is None and chunks is None else None,
        chunks=tuple(Chunk(float(c["offset_s"]), _object(c["response"])) for c in chunks) if chunks else None,
        error=RecordedError(int(error["code"]), str(error["status"]), str(error["message"]), error.get("details"))
        if error is not None
        else None,
    )


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("a response that is not an object")
    return value


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC, as Google writes timestamps."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def first_user_text(request: dict[str, Any]) -> str | None:
    """The first text of a user turn (for listings)."""
    for content in request.get("contents") or []:
        if isinstance(content, dict) and content.get("role", "user") == "user":
            for part in content.get("parts") or []:
                if isinstance(part, dict) and isinstance(part.get("text"), str) and not part.get("thought"):
                    return str(part["text"])
    return None


# ---------------------------------------------------------------------- the nearest recording


@dataclass(frozen=True, slots=True)
class Difference:
    """Where a request first differs from the nearest recording of its model."""

    digest: str  # the recording's
    path: str  # the first differing JSON path, as native requests name fields (`contents[1].parts[0].text`)
    recorded: str  # the value there, shortened; "absent" where it has none
    requested: str


def nearest(cassettes: Cassettes, wanted: Normalised) -> Difference | None:
    """The recording of the same model whose request shares the most leaf values with `wanted`
    (damaged files skipped), and where the two first differ; None if the model has none."""
    leaves = set(_leaves(wanted.request))
    best: tuple[int, Exchange] | None = None
    for exchange in cassettes.exchanges():
        if isinstance(exchange, Exchange) and exchange.model == wanted.model:
            shared = len(leaves & set(_leaves(exchange.request)))
            if best is None or shared > best[0]:
                best = shared, exchange
    if best is None:
        return None
    found = _first_difference(best[1].request, wanted.request, "")
    path, recorded, requested = found or ("", "the same request", "the same request")
    return Difference(best[1].digest, path or "(the whole request)", recorded, requested)


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, json.dumps(value)


_ABSENT = object()


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, str, str] | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(a.keys() | b.keys()):
            found = _first_difference(a.get(key, _ABSENT), b.get(key, _ABSENT), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            left = a[index] if index < len(a) else _ABSENT
            right = b[index] if index < len(b) else _ABSENT
            found = _first_difference(left, right, f"{path}[{index}]")
            if found:
                return found
        return None
    return None if a == b else (path, _shown(a), _shown(b))


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "absent"
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------- upkeep


def referenced_media(cassettes: Cassettes) -> set[str]:
    """The media any exchange file names, damaged ones included (their text is searched): what
    cannot be read is never the reason a medium is removed."""
    referenced: set[str] = set()
    for path in cassettes.files():
        try:
            referenced.update(_MEDIA_REFERENCE.findall(path.read_text(errors="replace")))
        except OSError:
            continue
    return referenced


def prune(cassettes: Cassettes, *, older_than_s: float | None, unused_media: bool, at: float) -> list[Path]:
    """Remove exchanges recorded more than `older_than_s` before `at` (a damaged file is kept: its
    age cannot be trusted), then, with `unused_media`, the media (`media/<sha256>`) no exchange
    names. What was removed."""
    removed = []
    if older_than_s is not None:
        for exchange in list(cassettes.exchanges()):
            if isinstance(exchange, Exchange) and exchange.recorded_at < at - older_than_s:
                path = cassettes.path(exchange.digest, exchange.kind)
                path.unlink(missing_ok=True)
                removed.append(path)
    media = cassettes.directory / "media"
    if unused_media and media.is_dir():
        keep = referenced_media(cassettes)
        for path in sorted(media.iterdir()):
            # Only what `write` makes: not a .gitkeep, a write under way, nor the other files of a
            # folder `media` links to.
            if _SHA256.fullmatch(path.name) and path.is_file() and path.name not in keep:
                path.unlink()
                removed.append(path)
    return removed
