"""User content parts → Gemini parts: text, image_url, input_audio, file (spec §2.3)."""

from __future__ import annotations

import re

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.tables import (
    AUDIO_FORMAT_TO_MIME,
    EXTENSION_TO_MIME,
    IMAGE_DETAIL_TO_MEDIA_RESOLUTION,
    URL_DEFAULT_MIME,
)

_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+*-]+)(?P<params>(;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_URI_SCHEMES = ("gs://", "https://", "http://")


def _data_uri_to_blob(uri: str, *, param: str) -> gc.Blob:
    match = _DATA_URI.match(uri)
    if match is None or ";base64" not in match.group("params"):
        raise InvalidArgumentError("expected a data URI of the form data:<MIME>;base64,<DATA>", param=param)
    return gc.Blob(mime_type=match.group("mime"), data=match.group("data"))


def _mime_from_url(url: str, default: str) -> str:
    path = url.split("?", 1)[0].split("#", 1)[0]
    extension = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return EXTENSION_TO_MIME.get(extension, default)


def uri_to_part(uri: str, *, default_mime: str, param: str) -> gc.Part:
    """A data URI becomes inline data; a gs:// or http(s):// URI becomes file data."""
    if uri.startswith("data:"):
        return gc.Part(inline_data=_data_uri_to_blob(uri, param=param)).with_origin(param)
    if uri.startswith(_URI_SCHEMES):
        file_data = gc.FileData(mime_type=_mime_from_url(uri, default_mime), file_uri=uri)
        return gc.Part(file_data=file_data).with_origin(param)
    raise InvalidArgumentError("expected a gs://, https:// or data: URI", param=param)


def _audio_mime(audio_format: str, *, param: str) -> str:
    mime = AUDIO_FORMAT_TO_MIME.get(audio_format, audio_format)
    if "/" not in mime:
        raise InvalidArgumentError(f"unknown audio format {audio_format!r}; use wav, mp3 or a MIME type", param=param)
    return mime


def _image_part(image: str | oa.ImageUrl, *, param: str) -> gc.Part:
    url, detail = (image, None) if isinstance(image, str) else (image.url, image.detail)
    part = uri_to_part(url, default_mime=URL_DEFAULT_MIME, param=f"{param}.image_url")
    if detail in IMAGE_DETAIL_TO_MEDIA_RESOLUTION:
        part.media_resolution = gc.PartMediaResolution(level=IMAGE_DETAIL_TO_MEDIA_RESOLUTION[detail])
    return part


def _audio_part(audio: oa.InputAudio, *, param: str) -> gc.Part:
    mime = _audio_mime(audio.format, param=f"{param}.input_audio.format")
    data_param = f"{param}.input_audio.data"
    if audio.data.startswith(("data:", *_URI_SCHEMES)):
        part = uri_to_part(audio.data, default_mime=mime, param=data_param)
        if part.file_data is not None:
            part.file_data.mime_type = mime
        return part
    return gc.Part(inline_data=gc.Blob(mime_type=mime, data=audio.data)).with_origin(data_param)  # bare base64


def _file_part(file: oa.FileRef, *, param: str) -> gc.Part:
    if file.file_data is None:
        raise InvalidArgumentError("only file_data (a data: URI) is supported", param=f"{param}.file")
    return uri_to_part(file.file_data, default_mime="application/octet-stream", param=f"{param}.file.file_data")


def content_part_to_part(part: oa.ContentPart, *, param: str) -> gc.Part:
    if part.type == "text":
        result = gc.Part(text=part.text)
    elif part.type == "image_url":
        assert part.image_url is not None  # checked by the wire type
        result = _image_part(part.image_url, param=param)
    elif part.type == "input_audio":
        assert part.input_audio is not None
        result = _audio_part(part.input_audio, param=param)
    else:
        assert part.file is not None
        result = _file_part(part.file, param=param)
    return apply_google_extras(result, part.extra_content)


def apply_google_extras(part: gc.Part, extra: oa.ExtraContent | None) -> gc.Part:
    """`extra_content.google.thought` / `thought_signature` onto the Gemini part (spec §3.2)."""
    google = extra.google if extra is not None else None
    if google is not None:
        if google.thought is not None:
            part.thought = google.thought
        if google.thought_signature is not None:
            part.thought_signature = google.thought_signature
    return part
