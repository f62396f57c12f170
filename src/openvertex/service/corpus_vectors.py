"""The local corpus's search by meaning: each passage's vector, made by an embedding model and kept
in the corpus's SQLite index beside its words; a question's nearest passages by cosine; and the
fusion of two rankings by reciprocal rank.

The index says which model made its vectors: the model's name, and its vector of a fixed probe
text. Another name, or a probe vector that points elsewhere, empties the vectors and they are made
again; so does a rebuilt passage table (its rowids are new). A build that stopped half-way goes on
where it stopped: passages without a vector are embedded, those with one are kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from openvertex.backends.base import Backend
from openvertex.protocol.embeddings import EmbedRequest, EmbedText

Matrix = npt.NDArray[np.float32]

EMBED_BATCH = 64  # passages in one embed call
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al., 2009): 1 / (k + rank)
_PROBE = "openvertex: which model made this corpus's vectors"
# The probe's vector from the same model moves ~1e-5 with what it is batched with; another model's
# points elsewhere (or has another length).
_SAME_MODEL = 0.999

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS passage_vectors (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS vectors_made_by (model TEXT NOT NULL, probe BLOB NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class PassageEmbedder:
    """An embedding model as the corpus uses it: the backend a model name is routed to."""

    backend: Backend
    model: str

    async def documents(self, passages: Sequence[tuple[str, str]]) -> Matrix:
        """Unit vectors of (title, text) passages, embedded as retrieval documents."""
        texts = [EmbedText(text=text, task_type="RETRIEVAL_DOCUMENT", title=title or None) for title, text in passages]
        return await self._embed(texts)

    async def query(self, text: str) -> Matrix:
        vector: Matrix = (await self._embed([EmbedText(text=text, task_type="RETRIEVAL_QUERY")]))[0]
        return vector

    async def probe(self) -> Matrix:
        vector: Matrix = (await self.documents([("", _PROBE)]))[0]
        return vector

    async def _embed(self, texts: list[EmbedText]) -> Matrix:
        embeddings = await self.backend.embed(EmbedRequest(tuple(texts)), model=self.model)
        return _unit(np.asarray([embedding.values for embedding in embeddings], dtype=np.float32))


@dataclass(frozen=True, slots=True)
class PassageVectors:
    """Every passage's unit vector, in memory, by the passage's rowid."""

    ids: npt.NDArray[np.int64]
    matrix: Matrix

    def nearest(self, query: Matrix, count: int) -> list[int]:
        """The rowids of the `count` passages nearest `query`, nearest first."""
        if len(self.ids) == 0:
            return []
        scores = self.matrix @ query
        count = min(count, len(scores))
        top = np.argpartition(-scores, count - 1)[:count]
        return [int(self.ids[i]) for i in top[np.argsort(-scores[top], kind="stable")]]


def forget(db: sqlite3.Connection) -> None:
    """The passages are new: no vector (nor its maker) holds for them."""
    db.execute("DELETE FROM passage_vectors")
    db.execute("DELETE FROM vectors_made_by")


def pending(db: sqlite3.Connection, model: str, probe: Matrix) -> list[tuple[int, str, str]]:
    """The passages (rowid, title, text) still without a vector from this model; all of them when
    the stored vectors are another model's."""
    with db:
        if not _made_by(db, model, probe):
            forget(db)
            db.execute("INSERT INTO vectors_made_by VALUES (?, ?)", (model, probe.tobytes()))
    rows: list[tuple[int, str, str]] = db.execute(
        "SELECT rowid, title, text FROM passages WHERE rowid NOT IN (SELECT id FROM passage_vectors) ORDER BY rowid"
    ).fetchall()
    return rows


def _made_by(db: sqlite3.Connection, model: str, probe: Matrix) -> bool:
    row = db.execute("SELECT model, probe FROM vectors_made_by").fetchone()
    if row is None or row[0] != model or len(row[1]) != probe.nbytes:
        return False
    return float(np.frombuffer(row[1], dtype=np.float32) @ probe) >= _SAME_MODEL


def store(db: sqlite3.Connection, ids: Sequence[int], matrix: Matrix) -> None:
    with db:
        db.executemany(
            "INSERT OR REPLACE INTO passage_vectors (id, vector) VALUES (?, ?)",
            [(rowid, vector.tobytes()) for rowid, vector in zip(ids, matrix, strict=True)],
        )


def load(db: sqlite3.Connection) -> PassageVectors:
    rows = db.execute("SELECT id, vector FROM passage_vectors ORDER BY id").fetchall()
    ids = np.array([rowid for rowid, _ in rows], dtype=np.int64)
    if not rows:
        return PassageVectors(ids, np.empty((0, 0), dtype=np.float32))
    matrix = np.vstack([np.frombuffer(blob, dtype=np.float32) for _, blob in rows])
    return PassageVectors(ids, _unit(matrix))


def fuse(rankings: Sequence[Sequence[int]]) -> list[int]:
    """Reciprocal rank fusion: each id scored by the sum of 1 / (k + rank) over the rankings that
    hold it (rank from 1), best first; ties keep the earlier rankings' order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, rowid in enumerate(ranking, 1):
            scores[rowid] = scores.get(rowid, 0.0) + 1.0 / (RRF_K + rank)
    return sorted(scores, key=lambda rowid: -scores[rowid])


def _unit(matrix: Matrix) -> Matrix:
    norms = np.linalg.norm(matrix, axis=-1, keepdims=True)
    unit: Matrix = (matrix / np.where(norms == 0, 1, norms)).astype(np.float32)
    return unit
