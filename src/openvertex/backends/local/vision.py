"""Images seen by a vision model: its projector (an `mmproj` GGUF) through llama.cpp's multimodal
library (mtmd), the image's embeddings decoded into the engine's KV like prompt tokens.

A prompt stays a list of ints: an image's positions hold placeholders, negative numbers, each a
62-bit hash keyed by the image's whole SHA-256 and the row of its embeddings. Prefix reuse, KV
snapshots and context caches then work on images as on text: the same image gives the same
placeholders, another image others at every row, so an image made to take over another's KV
would need a 62-bit second preimage per row (a prefix of the hash, as placeholders once held,
can be matched by brute force). The engine finds each placeholder's image and row in the job's
images (`image_rows`), not in the number's bits, and decodes a run of rows from their embeddings
in a batch of its own (llama.cpp takes tokens or embeddings in a batch, not both).

Images are decoded (Pillow), preprocessed and encoded on the planning threads, one encoder at a
time (it uses every core), and the last few encodings are remembered: a conversation sends its
images again at every turn, remembered by their whole SHA-256.
"""

from __future__ import annotations

import base64
import ctypes
import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd
from llama_cpp._logger import llama_log_callback

from openvertex.backends.compute_thread import COMPUTE
from openvertex.backends.local.media_text import opened_image
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc
from openvertex.request_record import current_record

# The MIME types given to the projector (what Pillow decodes of Gemini's image types).
SEEN_MIME_TYPES = ("image/png", "image/jpeg", "image/webp")
REMEMBERED = 16  # encoded images kept, by their bytes' hash
_ROW_PERSON = b"openvertex-row"  # blake2b's personalisation: these hashes are placeholders, nothing else

T = TypeVar("T")


def image_digest(data: bytes) -> bytes:
    """What an image is known by: the SHA-256 of its bytes, all 32 of them."""
    return hashlib.sha256(data).digest()


def placeholder(digest: bytes, row: int) -> int:
    """Row `row` of the image whose SHA-256 is `digest`: a negative int64 (the prompt's token ids,
    snapshot files and computeTokens hold int64s), -1 - a 62-bit blake2b of the row keyed by the
    whole digest."""
    mac = hashlib.blake2b(row.to_bytes(4, "big"), digest_size=8, key=digest, person=_ROW_PERSON)
    return -(int.from_bytes(mac.digest(), "big") >> 2) - 1


@dataclass(frozen=True, slots=True)
class EncodedImage:
    placeholders: tuple[int, ...]  # its rows' placeholders, in order
    embeddings: bytes  # float32, one row of the model's n_embd per placeholder
    non_causal: bool  # the projector's rows attend to each other both ways (Gemma 3)


# What a prompt's placeholders name: each one's image and row.
ImageRows = Mapping[int, tuple[EncodedImage, int]]


def image_rows(images: Iterable[EncodedImage]) -> dict[int, tuple[EncodedImage, int]]:
    return {token: (image, row) for image in images for row, token in enumerate(image.placeholders)}


@dataclass(frozen=True, slots=True)
class PromptImage:
    data: bytes
    param: str  # where the request held it, for errors


class Vision:
    """A projector loaded for one text model."""

    def __init__(self, projector: Path, model: llama_cpp.llama_model_p, *, n_threads: int, n_batch: int) -> None:
        # Its log lines follow llama.cpp's (on with debug logging only).
        mtmd.mtmd_log_set(llama_log_callback, None)
        mtmd.mtmd_helper_log_set(llama_log_callback, None)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = False
        params.print_timings = False
        params.warmup = False
        params.n_threads = n_threads
        context = mtmd.mtmd_init_from_file(str(projector).encode(), model, params)
        if not context:
            raise RuntimeError(f"llama.cpp could not load the projector {projector} for this model")
        if not mtmd.mtmd_support_vision(context) or mtmd.mtmd_decode_use_mrope(context):
            mtmd.mtmd_free(context)
            raise RuntimeError(
                f"{projector} is not a vision projector openvertex can run (audio-only, or M-RoPE positions)"
            )
        self._context = context
        self.n_embd: int = llama_cpp.llama_model_n_embd(model)
        self._n_batch = n_batch  # an image whose rows attend both ways is decoded in one batch
        self._lock = threading.Lock()  # one mtmd call at a time: its context is not thread-safe
        self._encoded: OrderedDict[bytes, EncodedImage] = OrderedDict()  # by the image's SHA-256
        self._tokens: OrderedDict[bytes, list[int]] = OrderedDict()
        # Where an image sits in a rendered prompt; never in a client's text (it cannot guess it).
        self._marker = f"<image-{secrets.token_hex(8)}-"
        self._markers = re.compile(re.escape(self._marker) + r"(\d+)>")

    def close(self) -> None:
        with self._lock:
            if self._context:
                mtmd.mtmd_free(self._context)
                self._context = None
                COMPUTE.forget(self)

    # ------------------------------------------------------------------ prompts

    def with_markers(self, request: gc.GenerateContentRequest) -> tuple[gc.GenerateContentRequest, list[PromptImage]]:
        """The request with each image it holds replaced by a marker in the text, and the images."""
        images: list[PromptImage] = []

        def part(i: int, j: int, part: gc.Part) -> gc.Part:
            blob = part.inline_data
            if blob is None or blob.mime_type not in SEEN_MIME_TYPES:
                return part
            param = part.origin() or f"contents[{i}].parts[{j}].inlineData"  # as the client wrote it
            images.append(PromptImage(base64.b64decode(blob.data), param))
            return gc.Part(text=f"{self._marker}{len(images) - 1}>")

        contents = [
            content.model_copy(update={"parts": [part(i, j, p) for j, p in enumerate(content.parts)]})
            for i, content in enumerate(request.contents)
        ]
        return (request.model_copy(update={"contents": contents}) if images else request), images

    def split(self, text: str) -> Iterator[str | int]:
        """A rendered prompt's text in pieces: text, and the index of each image between."""
        start = 0
        for found in self._markers.finditer(text):
            if found.start() > start:
                yield text[start : found.start()]
            yield int(found.group(1))
            start = found.end()
        if start < len(text):
            yield text[start:]

    def tokens(self, image: PromptImage) -> list[int]:
        """The image's prompt tokens: its placeholders, with the tokens the projector wants around
        them (an image start and end marker, say)."""
        digest = image_digest(image.data)
        with self._lock:
            known = _remembered(self._tokens, _scoped(digest))
        if known is None:
            known = self._run(image, digest, encode=False)[0]
        return known

    def encode(self, image: PromptImage) -> EncodedImage:
        digest = image_digest(image.data)
        with self._lock:
            known = _remembered(self._encoded, _scoped(digest))
        if known is None:
            encoded = self._run(image, digest, encode=True)[1]
            assert encoded is not None
            known = encoded
        return known

    # ------------------------------------------------------------------ mtmd

    def _run(self, image: PromptImage, digest: bytes, *, encode: bool) -> tuple[list[int], EncodedImage | None]:
        width, height, pixels = _rgb(image)
        with self._lock, _bitmap(width, height, pixels) as bitmap, _chunks() as chunks:
            if not self._context:
                raise RuntimeError("the projector was closed")
            marker = mtmd.mtmd_default_marker()
            text = mtmd.mtmd_input_text(marker, len(marker), False, True)
            bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
            status = mtmd.mtmd_tokenize(self._context, chunks, ctypes.byref(text), bitmaps, 1)
            if status != 0:
                raise InvalidArgumentError(f"the image could not be prepared (mtmd status {status})", param=image.param)
            tokens: list[int] = []
            encoded: EncodedImage | None = None
            for index in range(mtmd.mtmd_input_chunks_size(chunks)):
                chunk = mtmd.mtmd_input_chunks_get(chunks, index)
                kind = mtmd.mtmd_input_chunk_get_type(chunk)
                if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                    count = ctypes.c_size_t()
                    ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(count))
                    tokens += [ids[i] for i in range(count.value)]
                    continue
                if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE or encoded is not None:
                    raise InvalidArgumentError("the projector made more than one image of it", param=image.param)
                rows = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                if rows > self._n_batch and mtmd.mtmd_decode_use_non_causal(self._context, chunk):
                    raise InvalidArgumentError(
                        f"the image makes {rows} embeddings, decoded together, and this server's batch holds"
                        f" {self._n_batch} (n_batch)",
                        param=image.param,
                    )
                placeholders = tuple(placeholder(digest, row) for row in range(rows))
                tokens += placeholders
                if encode:
                    encoded = self._encode(chunk, placeholders, image)
            _remember(self._tokens, _scoped(digest), tokens)
            if encoded is not None:
                _remember(self._encoded, _scoped(digest), encoded)
            return tokens, encoded

    def _encode(
        self, chunk: mtmd.mtmd_input_chunk_p, placeholders: tuple[int, ...], image: PromptImage
    ) -> EncodedImage:
        status = COMPUTE.run(self, lambda: mtmd.mtmd_encode_chunk(self._context, chunk))
        if status != 0:
            raise InvalidArgumentError("the projector could not encode the image", param=image.param)
        output = mtmd.mtmd_get_output_embd(self._context)
        if not output:
            raise InvalidArgumentError("the projector gave no embeddings for the image", param=image.param)
        size = len(placeholders) * self.n_embd * ctypes.sizeof(ctypes.c_float)
        return EncodedImage(
            placeholders=placeholders,
            embeddings=ctypes.string_at(output, size),
            non_causal=bool(mtmd.mtmd_decode_use_non_causal(self._context, chunk)),
        )


def _scoped(digest: bytes) -> bytes:
    """The key an image is remembered by: its digest, within its request's tenant, so how fast an
    image is seen never tells one tenant what another sent."""
    return hashlib.sha256((current_record().tenant or "").encode() + b"\0" + digest).digest()


def _remembered(known: OrderedDict[bytes, T], key: bytes) -> T | None:
    value = known.get(key)
    if value is not None:
        known.move_to_end(key)
    return value


def _remember(known: OrderedDict[bytes, T], key: bytes, value: T) -> None:
    known[key] = value
    known.move_to_end(key)
    while len(known) > REMEMBERED:
        known.popitem(last=False)


def _rgb(image: PromptImage) -> tuple[int, int, bytes]:
    with opened_image(image.data, param=image.param) as opened:
        return opened.size[0], opened.size[1], opened.convert("RGB").tobytes()


@contextmanager
def _bitmap(width: int, height: int, pixels: bytes) -> Iterator[mtmd.mtmd_bitmap_p]:
    data = (ctypes.c_uint8 * len(pixels)).from_buffer_copy(pixels)
    bitmap = mtmd.mtmd_bitmap_init(width, height, data)
    if not bitmap:
        raise RuntimeError("mtmd could not make a bitmap")
    try:
        yield bitmap
    finally:
        mtmd.mtmd_bitmap_free(bitmap)


@contextmanager
def _chunks() -> Iterator[mtmd.mtmd_input_chunks_p]:
    chunks = mtmd.mtmd_input_chunks_init()
    if not chunks:
        raise RuntimeError("mtmd could not allocate chunks")
    try:
        yield chunks
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
