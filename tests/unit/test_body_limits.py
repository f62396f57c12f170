"""JSON bodies within bounds: nesting depth, number length, and values JSON cannot carry."""

from __future__ import annotations

import pytest

from openvertex.errors import InvalidArgumentError
from openvertex.translate.bounded_json import JsonLimits, load_json

LIMITS = JsonLimits(max_depth=8, max_number_length=10)


def _refusal(body: bytes, limits: JsonLimits = LIMITS) -> str:
    with pytest.raises(InvalidArgumentError) as raised:
        load_json(body, limits)
    assert raised.value.message.startswith("Invalid JSON payload received. ")
    return raised.value.message


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_depth_is_counted_through_arrays_and_objects(opening: bytes) -> None:
    closing = b"]" if opening == b"[" else b"}"
    assert load_json(opening * 8 + b"1" + closing * 8, LIMITS) is not None
    message = _refusal(opening * 9 + b"1" + closing * 9)
    assert message.endswith("Nesting depth exceeds the limit of 8.")


def test_scalars_do_not_count_as_a_level() -> None:
    assert load_json(b"[" * 8 + b'"text", 1, null' + b"]" * 8, LIMITS)


def test_input_deep_enough_to_exhaust_the_parser_gets_the_same_answer() -> None:
    message = _refusal(b"[" * 100_000 + b"]" * 100_000, JsonLimits())
    assert message.endswith("Nesting depth exceeds the limit of 64.")


@pytest.mark.parametrize("number", [b"1234567890", b"-123456789", b"1.2345e-10"])
def test_numbers_up_to_the_limit_are_read(number: bytes) -> None:
    assert load_json(b"[" + number + b"]", LIMITS) == [float(number) if b"." in number else int(number)]


@pytest.mark.parametrize("number", [b"12345678901", b"-1234567890", b"1.23456e-100"])
def test_longer_numbers_are_refused(number: bytes) -> None:
    assert "a number longer than 10 characters" in _refusal(b'{"n": ' + number + b"}")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_are_not_json(literal: bytes) -> None:
    assert "NaN and Infinity are not JSON numbers" in _refusal(b"[" + literal + b"]")


def test_a_number_too_large_for_a_double_is_refused() -> None:
    assert "Number out of range: 1e999" in _refusal(b"[1e999]")


@pytest.mark.parametrize("body", [b'["\\ud800"]', b'{"\\udc00x": 1}', b'"a\\ud83d"'])
def test_lone_surrogates_are_refused(body: bytes) -> None:
    assert "lone UTF-16 surrogate" in _refusal(body)


def test_a_surrogate_pair_is_one_character() -> None:
    assert load_json(b'["\\ud83d\\ude00"]', LIMITS) == ["\U0001f600"]
