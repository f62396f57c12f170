"""What safety settings and local grounding add to a request: one openvertex on a zero-cost backend
(the scripted test backend, which answers at once by echoing the question, so that only
openvertex's own work is timed), asked the same question three ways, in interleaved rounds:

- off: no safety settings, no search;
- safety: harassment and hate speech at BLOCK_MEDIUM_AND_ABOVE, rated by the shipped classifier
  (alt-profanity-check) on the prompt and on the answer, whole and streamed;
- grounding: `web_search_options` answered from a local corpus of generated documents (SQLite
  FTS5), the sources put in the prompt and the answer's groundingMetadata built.

Prints the median latency at one client for each and what safety and grounding add, and writes
JSON.

    .venv/bin/python benchmarks/safety_grounding.py [--rounds 5] [--requests 60] [--documents 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from openvertex.backends.base import Capabilities  # noqa: E402
from openvertex.backends.fake import FakeBackend  # noqa: E402
from openvertex.service.search_providers import LocalCorpus  # noqa: E402
from openvertex.settings import GroundingSettings, Settings  # noqa: E402
from tests.support.server import serve  # noqa: E402

QUESTION = (
    "Where does the yearly Zorblax festival take place, who organises it, how many people came to it "
    "last year, and what should a first-time visitor bring along to enjoy the music and the food there?"
)
SAFETY = [
    {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_MEDIUM_AND_ABOVE"},
    {"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_MEDIUM_AND_ABOVE"},
]
CONDITIONS: dict[str, dict[str, Any]] = {
    "off": {},
    "safety": {"extra_body": {"google": {"safety_settings": SAFETY}}},
    "grounding": {"web_search_options": {}},
}


def write_corpus(folder: Path, documents: int) -> None:
    """Documents of made-up words (a vocabulary of a few thousand); one in a hundred is about the
    festival the question asks after."""
    rng = random.Random(0)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "zu", "pi", "da", "go"]
    vocabulary = list({"".join(rng.choices(syllables, k=3)) for _ in range(4000)})
    topic = "the Zorblax festival takes place in Quenton every March and is organised by volunteers"
    for number in range(documents):
        paragraphs = [" ".join(rng.choices(vocabulary, k=60)) for _ in range(3)]
        if number % 100 == 0:
            paragraphs[1] += f" {topic}."
        (folder / f"doc{number:05}.md").write_text(f"# Document {number}\n\n" + "\n\n".join(paragraphs))


def timed(client: httpx.Client, url: str, extra: dict[str, Any], *, stream: bool) -> float:
    body = {"model": "google/gemini-2.5-flash", "messages": [{"role": "user", "content": QUESTION}], **extra}
    started = time.perf_counter()
    response = client.post(url, json={**body, "stream": stream})
    assert response.status_code == 200, response.text
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=60, help="per condition and round")
    parser.add_argument("--documents", type=int, default=2000, help="in the generated corpus")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "safety_grounding.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work) / "corpus"
        corpus.mkdir()
        write_corpus(corpus, args.documents)
        indexed = time.perf_counter()  # what a server's start spends indexing this corpus
        asyncio.run(LocalCorpus(corpus, Path(work) / "index.sqlite3", base_url=None).start())
        index_s = time.perf_counter() - indexed
        settings = Settings(
            port=0,
            state_dir=Path(work) / "state",
            grounding=GroundingSettings(provider="corpus", corpus_dir=corpus),
        )
        backend = FakeBackend(capabilities=Capabilities(function_calling=True))  # no filter, no search of its own
        samples: dict[str, list[float]] = {f"{name}{mode}": [] for name in CONDITIONS for mode in ("", "_stream")}
        with (
            serve(settings, backends={"local": backend}) as server,
            httpx.Client(headers={"Authorization": "Bearer b"}) as client,
        ):
            for extra in CONDITIONS.values():  # warm: the classifier's first load, connections
                timed(client, server.chat_url, extra, stream=False)
            for _ in range(args.rounds):
                for name, extra in CONDITIONS.items():
                    for stream in (False, True):
                        key = name + ("_stream" if stream else "")
                        samples[key] += [
                            timed(client, server.chat_url, extra, stream=stream) for _ in range(args.requests)
                        ]
            backend.requests.clear()
    medians = {key: round(statistics.median(values), 3) for key, values in samples.items()}
    added = {
        f"{name}{mode}_added_ms": round(medians[f"{name}{mode}"] - medians[f"off{mode}"], 3)
        for name in ("safety", "grounding")
        for mode in ("", "_stream")
    }
    result = {
        "documents": args.documents,
        "corpus_index_s": round(index_s, 2),
        "median_latency_ms": medians,
        **added,
        "rounds": args.rounds,
        "requests_per_condition_and_round": args.requests,
    }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
