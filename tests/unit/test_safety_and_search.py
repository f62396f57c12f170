"""The pieces of safety and grounding that need no server: the classifier's fast path gives the
library's own numbers, levels and windows, the blocklist's matching, and the corpus search under
questions that look like FTS5 query syntax."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from profanity_check import predict_prob

from openvertex.service.blocklist import Blocklist
from openvertex.service.harm_classifiers import _profanity_scorer
from openvertex.service.safety import LEVELS, _windows, level
from openvertex.service.search_providers import LocalCorpus
from openvertex.settings import BlocklistSettings


def test_the_fast_profanity_scores_are_the_librarys() -> None:
    texts = ["You are an idiot.", "Lovely weather today.", "hate hate hate", "x" * 500, "naïve café"]
    scorer = _profanity_scorer()
    assert scorer is not predict_prob  # the fast path applies to the shipped model
    assert list(scorer(texts)) == pytest.approx(list(predict_prob(texts)), abs=1e-9)


def test_levels_and_windows() -> None:
    assert [LEVELS[level(p)] for p in (0.0, 0.24, 0.25, 0.5, 0.74, 0.75, 1.0)] == [
        "NEGLIGIBLE",
        "NEGLIGIBLE",
        "LOW",
        "MEDIUM",
        "MEDIUM",
        "HIGH",
        "HIGH",
    ]
    text = "one two three four five six seven eight nine ten " * 3
    windows = _windows(text, 16)
    assert "".join(windows) == text and all(len(w) <= 16 for w in windows)
    assert all(w.endswith(" ") for w in windows[:-1])  # never a word cut in two
    assert _windows("x" * 40, 16) == ["x" * 16, "x" * 16, "x" * 8]  # no whitespace: cut anyway


def test_the_blocklist_matches_whole_terms_and_patterns() -> None:
    blocklist = Blocklist(BlocklistSettings(terms=["red panda", "c++"], patterns=[r"\bID-\d{3}\b"]))
    assert blocklist.hit("I saw a Red  Panda") and blocklist.hit("a red\npanda") and blocklist.hit("my ID-123 is")
    assert not blocklist.hit("redpanda") and not blocklist.hit("ID-1234")
    assert blocklist.hit("I write C++ daily")  # terms are literal, not regular expressions
    assert not Blocklist(BlocklistSettings())


@pytest.mark.parametrize(
    "question",
    [
        '"unbalanced',
        "a OR b AND NOT c",
        "NEAR(x y, 2)",
        "col:value",
        "pre* ^start",
        "((()))",
        "-x +y",
        "'; DROP",
        "é" * 300,
    ],
)
def test_a_question_is_never_read_as_query_syntax(tmp_path: Path, question: str) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Pandas\n\nRed pandas eat bamboo and value quiet.")
    corpus = LocalCorpus(tmp_path / "docs", tmp_path / "index.sqlite3", base_url=None)
    found = asyncio.run(corpus.search(question + " bamboo", 3))
    assert [source.title for source in found] == ["Pandas"]
    assert asyncio.run(corpus.search("the of and", 3)) == []  # only common words: nothing to search


def test_the_blocklist_reads_each_window_with_its_reach_either_side() -> None:
    blocklist = Blocklist(BlocklistSettings(terms=["forbidden fruit"], patterns=[r"code-\d{4}"]))
    # A phrase's words up to 16 spaces apart, and the character after it that ends its last word.
    assert blocklist.reach == len("forbidden") + 16 + len("fruit") + 1
    text = "It was a forbidden fruit indeed."
    start = text.index("forbidden")
    assert blocklist.hit_within(text, 0, start + 3)  # the match starts in the window, and ends past it
    assert not blocklist.hit_within(text, 0, start)  # it starts after the window: the next one's
    assert not blocklist.hit_within("a forbidden fruitcake", 0, 4)  # read past the window: not a whole word
    assert Blocklist(BlocklistSettings(patterns=["a.*b"])).reach == 1024  # unbounded: searched within 1 KiB
    looking = Blocklist(BlocklistSettings(patterns=[r"secret(?!ary)"]))  # what a lookahead reads counts too
    assert not looking.hit_within("the secretary", 0, 10) and looking.hit_within("the secret one", 0, 10)
