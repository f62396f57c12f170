"""Grounding in a local corpus searched by meaning: the embedded embedding model (all-MiniLM-L6-v2)
embeds each passage into the corpus's index, and a question finds what it means, words shared or
not; hybrid fuses that with the word search; the vectors are made once per folder and model."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from openvertex.app import create_app
from openvertex.backends.base import Capabilities
from openvertex.backends.embedding.backend import EmbeddingBackend
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import EmbeddingBackendSettings, GroundingSettings, Settings
from tests.support.server import serve

AUTH = {"Authorization": "Bearer test"}
NATIVE = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash:generateContent"
CAR = "How do I service my car?"  # none of its words but the common ones is in the corpus
CODE = "What does E4471 mean?"  # a word in one document only, that means nothing to the model
DOCUMENTS = {
    "engine.md": "# Automobile maintenance\n\nChange the engine oil every 10,000 km, check the tyre pressure "
    "each month and replace worn brake pads before they squeal.\n",
    "bread.md": "# Baking bread\n\nMix flour, water, yeast and salt, knead the dough, let it rise for an hour, "
    "then bake it in a hot oven.\n",
    "garden.txt": "Gardening\n\nTomatoes need sun, water and a stake to climb.\n",
    "dishwasher.txt": "Dishwasher\n\nE4471 means the drain pump is blocked.\n",
}
Ask = Callable[[str], list[str]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedding model's GGUF conversion, made once for the module."""
    return tmp_path_factory.mktemp("embedding-model")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in DOCUMENTS.items():
        (folder / name).write_text(text)
    return folder


@contextmanager
def grounded(state: Path, model_dir: Path, grounding: GroundingSettings) -> Iterator[tuple[Ask, EmbeddingBackend]]:
    """A server with a searchless fake model and the embedded embedding model (started afresh, its
    count of texts embedded from zero); `ask` answers the documents a question was grounded in."""
    fake = FakeBackend(capabilities=Capabilities(function_calling=True))
    embedding = EmbeddingBackend(EmbeddingBackendSettings(type="embedding"), model_dir)
    settings = Settings(port=0, state_dir=state, grounding=grounding)
    with serve(settings, backends={"local": fake, "embedding": embedding}) as server:

        def ask(question: str) -> list[str]:
            answer = gc.Content(role="model", parts=[gc.Part(text="Noted.")])
            fake.add([gc.GenerateContentResponse(candidates=[gc.Candidate(content=answer, finish_reason="STOP")])])
            body = {"contents": [{"role": "user", "parts": [{"text": question}]}], "tools": [{"googleSearch": {}}]}
            response = httpx.post(f"{server.url}{NATIVE}", json=body, headers=AUTH, timeout=60)
            assert response.status_code == 200, response.text
            chunks = response.json()["candidates"][0]["groundingMetadata"]["groundingChunks"]
            return [Path(chunk["web"]["uri"]).name for chunk in chunks]

        yield ask, embedding


def corpus_grounding(corpus: Path, **settings: Any) -> GroundingSettings:
    return GroundingSettings(provider="corpus", corpus_dir=corpus, **settings)


def stored(state: Path, table: str) -> int:
    with sqlite3.connect(state / "grounding" / "corpus.sqlite3") as db:
        count: int = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    db.close()
    return count


def test_a_question_finds_what_it_means_with_no_word_in_common(tmp_path: Path, model_dir: Path, corpus: Path) -> None:
    with grounded(tmp_path / "meaning", model_dir, corpus_grounding(corpus, corpus_search="meaning")) as (ask, _):
        assert ask(CAR)[0] == "engine.md"
        assert ask("a recipe for a loaf")[0] == "bread.md"
        assert len(ask(CAR)) == 4  # max_sources, one passage per document
    with grounded(tmp_path / "words", model_dir, corpus_grounding(corpus, corpus_search="words")) as (ask, _):
        assert "engine.md" not in ask(CAR)  # shares no word with it
        assert ask(CODE) == ["dishwasher.txt"]


def test_hybrid_finds_by_meaning_and_keeps_exact_words(tmp_path: Path, model_dir: Path, corpus: Path) -> None:
    with grounded(tmp_path / "state", model_dir, corpus_grounding(corpus)) as (ask, _):  # hybrid, the default
        assert ask(CAR)[0] == "engine.md"
        assert ask(CODE)[0] == "dishwasher.txt"  # the word's rank and the meaning's, fused


def test_vectors_are_kept_and_made_again_when_the_folder_or_model_changes(
    tmp_path: Path, model_dir: Path, corpus: Path
) -> None:
    state = tmp_path / "state"
    grounding = corpus_grounding(corpus, corpus_search="meaning")
    with grounded(state, model_dir, grounding) as (ask, embedding):
        assert ask(CAR)[0] == "engine.md"
        passages = stored(state, "passages")
        assert stored(state, "passage_vectors") == passages
        assert embedding.load().texts_embedded == passages + 2  # and the model's probe, and the question
    with grounded(state, model_dir, grounding) as (ask, embedding):  # a restart: the same folder, the same model
        assert ask(CAR)[0] == "engine.md"
        assert embedding.load().texts_embedded == 2
    (corpus / "bread.md").write_text("# Baking bread\n\nKnead the dough.\n\nBake it for forty minutes.\n")
    with grounded(state, model_dir, grounding) as (ask, embedding):  # a changed file: all made again
        assert ask("how long in the oven")[0] == "bread.md"
        assert stored(state, "passages") == passages + 1
        assert embedding.load().texts_embedded == passages + 1 + 2
    renamed = corpus_grounding(corpus, corpus_search="meaning", embedding_model="gemini-embedding-001")
    with grounded(state, model_dir, renamed) as (ask, embedding):  # another model: its own vectors
        assert ask(CAR)[0] == "engine.md"
        assert embedding.load().texts_embedded == passages + 1 + 2


def test_a_corpus_left_half_embedded_is_finished_not_redone(tmp_path: Path, model_dir: Path, corpus: Path) -> None:
    state = tmp_path / "state"
    grounding = corpus_grounding(corpus, corpus_search="hybrid")
    with grounded(state, model_dir, grounding) as (ask, _):
        ask(CAR)
    with sqlite3.connect(state / "grounding" / "corpus.sqlite3") as db:  # as if stopped after two
        db.execute("DELETE FROM passage_vectors WHERE id NOT IN (SELECT id FROM passage_vectors LIMIT 2)")
        probe = db.execute("SELECT probe FROM vectors_made_by").fetchone()[0]
    db.close()
    with grounded(state, model_dir, grounding) as (ask, embedding):
        assert ask(CAR)[0] == "engine.md"
        assert embedding.load().texts_embedded == stored(state, "passages") - 2 + 2
    with sqlite3.connect(state / "grounding" / "corpus.sqlite3") as db:  # another model of the same name
        db.execute("UPDATE vectors_made_by SET probe = ?", ((-np.frombuffer(probe, dtype=np.float32)).tobytes(),))
    db.close()
    with grounded(state, model_dir, grounding) as (ask, embedding):
        assert ask(CAR)[0] == "engine.md"
        assert embedding.load().texts_embedded == stored(state, "passages") + 2


@pytest.mark.parametrize(
    ("model", "why"),
    [
        ("text-embedding-005", "`text-embedding-005` is routed to no backend"),
        ("google/gemini-2.5-flash", "`google/gemini-2.5-flash` is routed to 'local', which does not embed"),
    ],
)
@pytest.mark.parametrize("search", ["meaning", "hybrid"])
def test_a_search_by_meaning_with_no_embedding_model_is_refused_at_start(
    tmp_path: Path, corpus: Path, model: str, why: str, search: str
) -> None:
    grounding = corpus_grounding(corpus, corpus_search=search, embedding_model=model)
    settings = Settings(port=0, state_dir=tmp_path, grounding=grounding)
    with pytest.raises(ValueError, match=f'corpus_search = "{search}" needs grounding.embedding_model') as refused:
        create_app(settings, backends={"local": FakeBackend()})  # no embedding backend
    assert why in str(refused.value)


def test_hybrid_by_default_falls_back_to_words(tmp_path: Path, corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(port=0, state_dir=tmp_path, grounding=corpus_grounding(corpus))
    with caplog.at_level(logging.WARNING, logger="openvertex.service.grounding"):
        create_app(settings, backends={"local": FakeBackend()})
    [warning] = [record.getMessage() for record in caplog.records if record.name == "openvertex.service.grounding"]
    assert "searched by its words only: the embedding model `text-embedding-005` is routed to no backend" in warning
