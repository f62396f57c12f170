"""Image placeholders (backends/local/vision.py): each row's is a hash keyed by the image's whole
SHA-256, so no prefix of the hash stands for the image, and the engine finds a placeholder's
image and row in the job's images."""

from __future__ import annotations

import hashlib

from openvertex.backends.local.vision import EncodedImage, image_digest, image_rows, placeholder

ROWS = 64


def _digest(seed: bytes) -> bytes:
    return hashlib.sha256(seed).digest()


def test_an_image_is_known_by_its_whole_sha256() -> None:
    assert image_digest(b"png bytes") == hashlib.sha256(b"png bytes").digest()
    assert len(image_digest(b"")) == 32


def test_placeholders_are_negative_int64s_and_the_same_for_the_same_image_and_row() -> None:
    digest = _digest(b"a")
    tokens = [placeholder(digest, row) for row in range(ROWS)]
    assert all(-(2**62) <= token <= -1 for token in tokens)  # never a vocabulary id, always an int64
    assert tokens == [placeholder(digest, row) for row in range(ROWS)]
    assert len(set(tokens)) == ROWS


def test_two_digests_that_share_all_but_their_last_bit_share_no_placeholder() -> None:
    digest = _digest(b"victim")
    forged = digest[:-1] + bytes([digest[-1] ^ 1])
    assert forged[:5] == digest[:5]  # the 40 bits placeholders once carried
    mine = {placeholder(digest, row) for row in range(ROWS)}
    theirs = {placeholder(forged, row) for row in range(ROWS)}
    assert mine.isdisjoint(theirs)


def test_image_rows_names_each_placeholder_image_and_row() -> None:
    first = EncodedImage(tuple(placeholder(_digest(b"1"), row) for row in range(3)), bytes(12), False)
    second = EncodedImage(tuple(placeholder(_digest(b"2"), row) for row in range(2)), bytes(8), True)
    rows = image_rows([first, second, first])  # an image seen twice names the same rows
    assert len(rows) == 5
    assert rows[first.placeholders[2]] == (first, 2)
    assert rows[second.placeholders[0]] == (second, 0)
    assert placeholder(_digest(b"3"), 0) not in rows
