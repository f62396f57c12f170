"""What the embedded model remembers of a file it read (OCR, a transcript, a PDF's text) is kept
per tenant: a file another tenant sent is read again, so how fast it is read tells nothing."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from openvertex.backends.local import media_text
from openvertex.backends.local.media_text import MediaText
from openvertex.request_record import RequestRecord, current_record, end_record, start_record
from tests.support.media import text_png


@contextmanager
def tenant(name: str) -> Iterator[None]:
    token = start_record(RequestRecord("r", "POST", "/", "route", tenant=name))
    try:
        yield
    finally:
        end_record(token)


def test_a_file_read_for_one_tenant_is_read_again_for_another(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def recognise(self: MediaText, mime: str, data: bytes, *, param: str) -> str:
        reads.append(mime)
        return "[An image. Its text: HELLO]"

    monkeypatch.setattr(MediaText, "_recognise", recognise)
    text = MediaText()
    image = text_png("HELLO")
    with tenant("key:a"):
        first = text.describe("image/png", image, param="p")
        assert text.describe("image/png", image, param="p") == first  # remembered within the tenant
    assert reads == ["image/png"]
    with tenant("key:b"):
        assert text.describe("image/png", image, param="p") == first
    assert reads == ["image/png", "image/png"]  # read again: b learns nothing from a's


def test_the_recognisers_run_in_the_request_s_context() -> None:
    """The bounded pools carry the caller's context (its record), as asyncio.to_thread does."""
    with tenant("key:a"):
        assert media_text.RECOGNISERS.call(lambda: current_record().tenant) == "key:a"
    assert media_text.RECOGNISERS.call(lambda: current_record().tenant) is None
