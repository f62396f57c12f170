"""StopMatcher: stop sequences never reach the client, however the text is split."""

from __future__ import annotations

import pytest

from openvertex.backends.local.stop import StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        out += matcher.feed(piece)
        if matcher.stopped:
            break
    return out + matcher.flush(), matcher.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["END"], ["Hello ", "world"], ("Hello world", False)),
        (["END"], ["Hello E", "N", "D tail"], ("Hello ", True)),
        (["END"], ["Hello EN"], ("Hello EN", False)),  # a partial match at the end is released
        (["\n\n", "User:"], ["a\n", "\nb"], ("a", True)),
        (["ab", "b"], ["xab"], ("x", True)),  # the earliest match wins
        (["aaa"], ["a", "a", "b", "aaa"], ("aab", True)),
        (["THE END"], ["THE", " ", "EN", "D"], ("", True)),
    ],
)
def test_stop_sequences(stops: list[str], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert _run(stops, pieces) == expected


def test_every_split_gives_the_same_answer() -> None:
    text = "The quick brown fox jumps over the lazy dog"
    for cut in range(1, len(text)):
        for second in range(cut, len(text)):
            pieces = [text[:cut], text[cut:second], text[second:]]
            assert _run(["over the"], pieces) == ("The quick brown fox jumps ", True)
            assert _run(["missing"], pieces) == (text, False)


def test_text_is_released_as_soon_as_it_cannot_start_a_stop() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("abc S") == "abc "
    assert matcher.feed("x") == "Sx"


@pytest.mark.parametrize("size", [1, 2, 3, 5, 100])
def test_a_stop_never_cuts_inside_a_call_block(size: int) -> None:
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": "x\\ny"}}\n</tool_call>\nDone.\nMore'
    matcher = StopMatcher(["\n", "Done"], exempt=("<tool_call>", "</tool_call>"))
    out = ""
    for start in range(0, len(text), size):
        out += matcher.feed(text[start : start + size])
        if matcher.stopped:
            break
    out += matcher.flush()
    assert out == "Sure."  # the first newline, outside any call, stops it
    matcher = StopMatcher(["\n"], exempt=("<tool_call>", "</tool_call>"))
    call = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>'
    out = ""
    for start in range(0, len(call + "\nafter"), size):
        out += matcher.feed((call + "\nafter")[start : start + size])
        if matcher.stopped:
            break
    assert out + matcher.flush() == call  # the call whole, then the stop after it
