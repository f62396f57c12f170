"""The local corpus's search by meaning, its parts alone: the nearest passages by cosine, the fusion
of two rankings by reciprocal rank, which model made the stored vectors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from openvertex.service import corpus_vectors
from openvertex.service.corpus_vectors import PassageVectors, fuse
from openvertex.service.search_providers import LocalCorpus


def test_the_nearest_passages_come_first_by_cosine() -> None:
    matrix = np.array([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]], dtype=np.float32)
    vectors = PassageVectors(np.array([10, 20, 30, 40], dtype=np.int64), matrix)
    assert vectors.nearest(np.array([0, 1], dtype=np.float32), 3) == [20, 30, 10]
    assert vectors.nearest(np.array([1, 0], dtype=np.float32), 99) == [10, 30, 20, 40]
    empty = PassageVectors(np.array([], dtype=np.int64), np.empty((0, 0), dtype=np.float32))
    assert empty.nearest(np.array([1, 0], dtype=np.float32), 3) == []


def test_reciprocal_rank_fusion() -> None:
    # 2 is second in both (2/62) and beats 1, first in one only (1/61); ties keep the first ranking's order.
    assert fuse([[1, 2, 3], [4, 2, 5]]) == [2, 1, 4, 3, 5]
    assert fuse([[7, 8]]) == [7, 8]
    assert fuse([[], [9]]) == [9]


def test_stored_vectors_are_kept_only_for_the_model_that_made_them(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.execute("CREATE VIRTUAL TABLE passages USING fts5(path UNINDEXED, title, text)")
    for table in corpus_vectors.SCHEMA:
        db.execute(table)
    db.executemany("INSERT INTO passages VALUES (?, ?, ?)", [("a", "A", "one"), ("b", "B", "two")])
    probe = np.array([0.6, 0.8], dtype=np.float32)
    assert [rowid for rowid, _, _ in corpus_vectors.pending(db, "m", probe)] == [1, 2]
    corpus_vectors.store(db, [1], np.array([[1, 0]], dtype=np.float32))
    nudged = probe + np.float32(1e-5)  # the same model, batched with other texts
    assert [rowid for rowid, _, _ in corpus_vectors.pending(db, "m", nudged)] == [2]
    assert [rowid for rowid, _, _ in corpus_vectors.pending(db, "other", probe)] == [1, 2]  # another name
    corpus_vectors.store(db, [1, 2], np.array([[1, 0], [0, 2]], dtype=np.float32))
    assert corpus_vectors.pending(db, "other", probe) == []
    assert corpus_vectors.load(db).matrix.tolist() == [[1, 0], [0, 1]]  # unit length
    flipped = np.array([0.8, -0.6], dtype=np.float32)  # the same name, another model
    assert len(corpus_vectors.pending(db, "other", flipped)) == 2
    db.close()


def test_a_search_by_meaning_needs_an_embedder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs an embedder"):
        LocalCorpus(tmp_path, tmp_path / "index.sqlite3", base_url=None, search="hybrid")


def test_a_hybrid_search_keeps_its_words_when_the_embedding_model_fails(tmp_path: Path) -> None:
    import asyncio

    from openvertex.backends.base import Capabilities
    from openvertex.backends.fake import FakeBackend
    from openvertex.errors import ApiError
    from openvertex.service.corpus_vectors import PassageEmbedder

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bread.md").write_text("# Bread\n\nKnead the dough and bake it for forty minutes.\n")
    broken = FakeBackend(capabilities=Capabilities(embeddings=False))  # its embed raises a 400
    corpus = {
        search: LocalCorpus(
            folder,
            tmp_path / f"{search}.sqlite3",
            base_url=None,
            search=search,
            embedder=PassageEmbedder(broken, "text-embedding-005"),
        )
        for search in ("hybrid", "meaning")
    }
    found = asyncio.run(corpus["hybrid"].search("how long to bake dough", 2))
    assert [source.title for source in found] == ["Bread"]  # the words still find it
    with pytest.raises(ApiError):  # asked for by meaning alone, the failure is the answer
        asyncio.run(corpus["meaning"].search("how long to bake dough", 2))
