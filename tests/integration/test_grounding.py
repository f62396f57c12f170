"""Grounding: googleSearch / web_search_options answered by this server's own search for backends
without Google Search (a local corpus indexed with SQLite FTS5, a SearxNG instance on a local
server), with Gemini's groundingMetadata (byte offsets) and the OpenAI surface's url_citation
annotations (character offsets); a backend with Google Search (Gemini) gets the tool as sent and
its metadata passes through."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from openvertex.backends.base import Capabilities
from openvertex.backends.fake import FakeBackend
from openvertex.protocol import generate_content as gc
from openvertex.settings import GroundingSettings, Settings
from tests.support.server import RunningServer, serve
from tests.support.stub import Reply, stub_server

AUTH = {"Authorization": "Bearer test"}
NATIVE = "/v1beta1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash"
QUESTION = "Where does the Zorblax festival take place?"
# Not ASCII, so that byte and character offsets differ.
ANSWER = "Selon la légende — the Zorblax festival takes place in Quenton every March. Qué bien! Tickets are free [2]."


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "festival.md").write_text(
        "# The Zorblax festival\n\nThe Zorblax festival takes place in Quenton, every March, since 1921.\n"
    )
    (folder / "tickets.txt").write_text("Zorblax tickets\n\nTickets for the festival are free for everyone.\n")
    (folder / "weather.html").write_text(
        "<html><head><title>Quenton weather</title></head><body><p>Quenton is rainy in March.</p></body></html>"
    )
    (folder / "other.txt").write_text("Gardening\n\nTomatoes need sun and water.\n")
    return folder


def _searchless() -> FakeBackend:
    return FakeBackend(capabilities=Capabilities(function_calling=True, thinking=True))


@pytest.fixture
def fake() -> FakeBackend:
    return _searchless()


@pytest.fixture
def server(fake: FakeBackend, corpus: Path, tmp_path: Path) -> Iterator[RunningServer]:
    grounding = GroundingSettings(provider="corpus", corpus_dir=corpus, corpus_base_url="https://docs.example/kb")
    with serve(
        Settings(port=0, state_dir=tmp_path / "state", grounding=grounding), backends={"local": fake}
    ) as running:
        yield running


def _answer(text: str, *, finish: str = "STOP") -> gc.GenerateContentResponse:
    candidate = gc.Candidate(
        index=0, content=gc.Content(role="model", parts=[gc.Part(text=text)]), finish_reason=finish
    )
    return gc.GenerateContentResponse(candidates=[candidate])


def _native(server: RunningServer, *, stream: bool = False, tools: Any = None) -> httpx.Response:
    body = {"contents": [{"role": "user", "parts": [{"text": QUESTION}]}], "tools": tools or [{"googleSearch": {}}]}
    method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    return httpx.post(f"{server.url}{NATIVE}{method}", json=body, headers=AUTH, timeout=60)


def _chat(server: RunningServer, **extra: Any) -> httpx.Response:
    body = {
        "model": "google/gemini-2.5-flash",
        "messages": [{"role": "user", "content": QUESTION}],
        "web_search_options": {},
        **extra,
    }
    return httpx.post(server.chat_url, json=body, headers=AUTH, timeout=60)


def _events(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    lines = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


def _check_segments(answer: str, metadata: dict[str, Any]) -> None:
    encoded = answer.encode()
    for support in metadata["groundingSupports"]:
        segment = support["segment"]
        assert encoded[segment["startIndex"] : segment["endIndex"]].decode() == segment["text"]


def test_sources_reach_the_prompt_and_the_answer_cites_them(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([_answer(ANSWER)])
    response = _native(server)
    assert response.status_code == 200, response.text
    metadata = response.json()["candidates"][0]["groundingMetadata"]
    assert metadata["webSearchQueries"] == [QUESTION]
    uris = [chunk["web"]["uri"] for chunk in metadata["groundingChunks"]]
    assert uris[0] == "https://docs.example/kb/festival.md"  # the best match first
    assert "https://docs.example/kb/other.txt" not in uris  # shares no word with the question
    assert all(chunk["web"]["domain"] == "docs.example" for chunk in metadata["groundingChunks"])
    # The model was given the sources, numbered, and no search tool.
    sent = fake.requests[0]
    assert sent.tools is None and sent.system_instruction is not None
    assert "cite it by its number" in (sent.system_instruction.parts[-1].text or "")  # the server's instruction
    results = sent.contents[-1].parts[0].text or ""  # the web's text, in the user's turn
    assert "[1] The Zorblax festival (https://docs.example/kb/festival.md)" in results
    assert "takes place in Quenton" in results and sent.contents[-1].parts[-1].text == QUESTION
    _check_segments(ANSWER, metadata)
    supports = {s["segment"]["text"]: s for s in metadata["groundingSupports"]}
    fact = "Selon la légende — the Zorblax festival takes place in Quenton every March."
    assert uris[supports[fact]["groundingChunkIndices"][0]].endswith("festival.md")  # by the words it shares
    cited = supports["Tickets are free [2]."]
    assert cited["groundingChunkIndices"] == [1] and cited["confidenceScores"] == [1.0]  # by its number
    assert "Qué bien!" not in supports  # supported by nothing
    assert QUESTION.replace("?", "") in metadata["searchEntryPoint"]["renderedContent"]


def test_url_citations_slice_the_content(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([_answer(ANSWER)])
    message = _chat(server).json()["choices"][0]["message"]
    assert message["content"] == ANSWER
    annotations = message["annotations"]
    assert {a["type"] for a in annotations} == {"url_citation"}
    quoted = {ANSWER[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]] for a in annotations}
    assert quoted == {
        "Selon la légende — the Zorblax festival takes place in Quenton every March.",
        "Tickets are free [2].",
    }
    assert any(a["url_citation"]["url"].endswith("festival.md") for a in annotations)

    # Streamed, with thoughts shown in tags: the offsets count them too.
    pieces = ANSWER.split(" ")
    thought = gc.Candidate(index=0, content=gc.Content(role="model", parts=[gc.Part(text="Let me see.", thought=True)]))
    chunks = [gc.GenerateContentResponse(candidates=[thought])]
    for number, piece in enumerate(pieces):
        last = number == len(pieces) - 1
        chunks.append(_answer(piece + ("" if last else " "), finish="STOP" if last else None))
        chunks[-1].candidates[0].finish_reason = "STOP" if last else None  # type: ignore[index]
    fake.add(chunks)
    google = {"thought_tag_marker": "think", "thinking_config": {"include_thoughts": True}}
    events = _events(_chat(server, stream=True, extra_body={"google": google}))
    content = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert content.startswith("<think>Let me see.</think>") and content.endswith(ANSWER)
    streamed = [a for e in events if e["choices"] for a in e["choices"][0]["delta"].get("annotations") or []]
    assert {content[a["url_citation"]["start_index"] : a["url_citation"]["end_index"]] for a in streamed} == quoted


def test_a_streamed_native_answer_gets_its_metadata_at_the_end(server: RunningServer, fake: FakeBackend) -> None:
    fake.add([_answer("The Zorblax festival ", finish=None), _answer("takes place in Quenton every March.")])  # type: ignore[arg-type]
    events = _events(_native(server, stream=True))
    assert "groundingMetadata" not in events[0]["candidates"][0]
    metadata = events[-1]["candidates"][0]["groundingMetadata"]
    _check_segments("The Zorblax festival takes place in Quenton every March.", metadata)
    assert metadata["groundingSupports"][0]["segment"]["startIndex"] == 0


def test_search_tools_no_backend_here_honours(server: RunningServer) -> None:
    retrieval = [{"googleSearchRetrieval": {"dynamicRetrievalConfig": {"mode": "MODE_DYNAMIC"}}}]
    refused = _native(server, tools=retrieval)
    assert refused.status_code == 400
    assert "google_search_retrieval is not supported; please use google_search field instead" in refused.text
    options = _native(server, tools=[{"googleSearch": {"excludeDomains": ["example.com"]}}])
    assert options.status_code == 400 and "tools[0].googleSearch.excludeDomains" in options.text


def test_searxng_on_a_local_server(fake: FakeBackend, tmp_path: Path) -> None:
    results = {
        "query": QUESTION,
        "results": [
            {"url": "javascript:alert(1)", "title": "Not a page", "content": "Zorblax festival Quenton"},
            {"url": "http://[::1", "title": "Broken", "content": "Zorblax festival Quenton"},
            {
                "url": "https://zorblax.example/about",
                "title": "About Zorblax",
                "content": "The Zorblax festival is held in Quenton.",
            },
            {"url": "https://news.example/q", "title": "Quenton news", "content": "Quenton prepares for March."},
        ],
    }
    with stub_server([Reply(200, json.dumps(results).encode()), Reply(502, b"bad gateway")]) as searxng:
        grounding = GroundingSettings(provider="searxng", searxng_url=searxng.url, max_sources=1)
        settings = Settings(port=0, state_dir=tmp_path / "state", grounding=grounding)
        with serve(settings, backends={"local": fake}) as server:
            fake.add([_answer("The Zorblax festival is held in Quenton.")])
            response = _native(server)
            assert response.status_code == 200, response.text
            request = searxng.requests[0]
            assert request.method == "GET" and urlsplit(request.path).path == "/search"
            assert parse_qs(urlsplit(request.path).query) == {"q": [QUESTION], "format": ["json"]}
            metadata = response.json()["candidates"][0]["groundingMetadata"]
            assert [c["web"] for c in metadata["groundingChunks"]] == [
                {"uri": "https://zorblax.example/about", "title": "About Zorblax", "domain": "zorblax.example"}
            ]
            assert metadata["groundingSupports"][0]["groundingChunkIndices"] == [0]
            assert f'href="{searxng.url}/search?q=' in metadata["searchEntryPoint"]["renderedContent"]
            down = _native(server)  # the search engine fails: a 503, not an ungrounded answer
            assert down.status_code == 503 and down.json()["error"]["status"] == "UNAVAILABLE"


def test_geminis_grounded_answer_passes_through() -> None:
    # Built by hand from the Vertex docs' shape (spec E): redirect URIs, byte offsets.
    text = "Spain won Euro 2024, défeating England 2–1. It was their fourth title."
    first = "Spain won Euro 2024, défeating England 2–1."
    metadata = {
        "webSearchQueries": ["who won euro 2024"],
        "searchEntryPoint": {"renderedContent": "<div>chip</div>"},
        "groundingChunks": [
            {"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/AbC", "title": "uefa.com"}},
            {"web": {"uri": "https://vertexaisearch.cloud.google.com/grounding-api-redirect/DeF", "title": "bbc.com"}},
        ],
        "groundingSupports": [
            {
                "segment": {"startIndex": 0, "endIndex": len(first.encode()), "text": first},
                "groundingChunkIndices": [0, 1],
                "confidenceScores": [0.97, 0.91],
            },
            {
                "segment": {
                    "startIndex": len(first.encode()) + 1,
                    "endIndex": len(text.encode()),
                    "text": "It was their fourth title.",
                },
                "groundingChunkIndices": [0],
            },
        ],
        "retrievalMetadata": {},
    }
    answer = gc.GenerateContentResponse.model_validate(
        {
            "candidates": [
                {
                    "content": {"role": "model", "parts": [{"text": text}]},
                    "finishReason": "STOP",
                    "groundingMetadata": metadata,
                }
            ]
        }
    )
    gemini_like = FakeBackend([[answer], [answer]])  # declares googleSearch, as the Gemini backend does
    with serve(Settings(port=0), backends={"local": gemini_like}) as server:
        native = _native(server)
        assert native.json()["candidates"][0]["groundingMetadata"] == metadata
        assert gemini_like.requests[0].tools is not None and gemini_like.requests[0].tools[0].google_search == {}
        message = _chat(server).json()["choices"][0]["message"]
        citations = [a["url_citation"] for a in message["annotations"]]
        assert [(text[c["start_index"] : c["end_index"]], c["title"]) for c in citations] == [
            (first, "uefa.com"),
            (first, "bbc.com"),
            ("It was their fourth title.", "uefa.com"),
        ]


def test_on_the_embedded_model(corpus: Path, tmp_path: Path) -> None:
    grounding = GroundingSettings(provider="corpus", corpus_dir=corpus)
    with serve(Settings(port=0, state_dir=tmp_path / "state", grounding=grounding)) as server:
        response = _chat(server, max_tokens=40, temperature=0)
        assert response.status_code == 200, response.text
        plain = _chat(server, max_tokens=40, temperature=0, web_search_options=None)
        # The sources went into the prompt: many more prompt tokens than the question alone.
        assert response.json()["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 30
        content = response.json()["choices"][0]["message"]["content"]
        assert "Quenton" in content  # greedy decoding: the model takes the fact from its source
        for annotation in response.json()["choices"][0]["message"].get("annotations") or []:
            citation = annotation["url_citation"]
            assert 0 <= citation["start_index"] < citation["end_index"] <= len(content)
            assert citation["url"].startswith("file://")
        native = _native(server)
        metadata = native.json()["candidates"][0]["groundingMetadata"]
        assert metadata["groundingChunks"][0]["web"]["uri"] == (corpus / "festival.md").as_uri()
        parts = native.json()["candidates"][0]["content"]["parts"]
        _check_segments("".join(p["text"] for p in parts if not p.get("thought")), metadata)  # the answer's text
