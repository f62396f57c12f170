"""Where a grounded answer's sources come from, for backends without Google Search.

- `Searxng`: a SearxNG instance's JSON API (`/search?q=…&format=json`), the self-hosted
  metasearch engine.
- `LocalCorpus`: a folder of documents (.txt, .md, .html), cut into passages and indexed with SQLite
  FTS5 in `state_dir` at the server's start (again only if a file was added, changed or removed
  since the index was built). A question's words, common English words left out, are searched with
  OR (bm25 ranking); by meaning, the question's vector against each passage's (service/corpus_vectors.py);
  or both, the two rankings fused. One passage per document.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
import re
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp

from openvertex.errors import ApiError, UnavailableError
from openvertex.http_clients import HttpClients, SessionSpec
from openvertex.service import corpus_vectors
from openvertex.service.corpus_vectors import EMBED_BATCH, Matrix, PassageEmbedder, PassageVectors

log = logging.getLogger(__name__)

CorpusSearch = Literal["words", "meaning", "hybrid"]
_T = TypeVar("_T")

_SUFFIXES = (".txt", ".md", ".html", ".htm")
_PASSAGE_CHARS = 800
_WORD = re.compile(r"\w+", re.UNICODE)
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.DOTALL | re.IGNORECASE)
MAX_QUERY_WORDS = 24
# Words that match nearly every English passage: searching for them costs time and ranks nothing.
_COMMON_WORDS = (
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its"
    " me my no not of on or our she so than that the their them then there these they this to was we were"
    " what when where which who whom why will with would you your"
)
_STOPWORDS = frozenset(_COMMON_WORDS.split())


@dataclass(frozen=True, slots=True)
class Source:
    uri: str
    title: str
    text: str

    @property
    def domain(self) -> str:
        try:
            return urlsplit(self.uri).hostname or "local"
        except ValueError:
            return "local"


class SearchProvider(Protocol):
    async def start(self) -> None: ...

    async def search(self, query: str, limit: int) -> list[Source]: ...

    async def close(self) -> None: ...


class Searxng:
    def __init__(self, url: str, *, timeout_s: float, clients: HttpClients) -> None:
        self._url = url.rstrip("/") + "/search"
        self._client = clients.add(SessionSpec(timeout=aiohttp.ClientTimeout(total=timeout_s)))

    async def start(self) -> None:
        return None

    async def search(self, query: str, limit: int) -> list[Source]:
        try:
            async with self._client.session.get(self._url, params={"q": query, "format": "json"}) as response:
                if response.status != 200:
                    raise UnavailableError(f"The search engine answered HTTP {response.status}.")
                results: list[dict[str, Any]] = (await response.json())["results"]
            sources = [
                Source(str(result["url"]), str(result.get("title") or result["url"]), str(result.get("content") or ""))
                for result in results
                if isinstance(result, dict) and _is_web_url(result.get("url"))
            ]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            raise UnavailableError("The search engine did not answer; the request could not be grounded.") from None
        return sources[:limit]

    async def close(self) -> None:
        return None  # its session is its HttpClients' to close


def _is_web_url(url: object) -> bool:
    """An http(s) URL with a host: what a citation may link to (never javascript:, data:, …)."""
    if not isinstance(url, str) or len(url) > 4096:
        return False
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:  # an unbalanced IPv6 bracket, a bad port
        return False


class LocalCorpus:
    """A folder of documents searched by its words, by meaning (`embedder`'s vectors of its
    passages) or both, fused by rank (`search`)."""

    def __init__(
        self,
        folder: Path,
        index: Path,
        *,
        base_url: str | None,
        search: CorpusSearch = "words",
        embedder: PassageEmbedder | None = None,
    ) -> None:
        if (search == "words") != (embedder is None):
            raise ValueError(f"a corpus searched by {search} needs an embedder, and only then")
        self._folder = folder.expanduser().resolve()
        self._index = index
        self._base_url = base_url.rstrip("/") if base_url else None
        self._search_by = search
        self._embedder = embedder
        self._lock = threading.Lock()  # the connection, used from worker threads
        self._building = asyncio.Lock()
        self._db: sqlite3.Connection | None = None
        self._vectors: PassageVectors | None = None
        self._degraded = False  # a hybrid search fell back to words (logged once)

    async def start(self) -> None:
        """Index the folder now (at the server's start), not at the first question."""
        await self._ready()

    async def _ready(self) -> None:
        """The index built (its passages, and their vectors when searched by meaning); a build that
        failed is tried again by the next search."""
        if self._db is not None and (self._embedder is None or self._vectors is not None):
            return
        async with self._building:
            if self._db is None:
                await asyncio.to_thread(self._connected)
            if self._embedder is not None and self._vectors is None:
                self._vectors = await self._embed_passages(self._embedder)

    def _connected(self) -> None:
        with self._lock:
            self._open()

    async def _embed_passages(self, embedder: PassageEmbedder) -> PassageVectors:
        """Vectors for the passages without one: embedded on the event loop (the backend's own
        async embed), read and written on a worker thread, a batch at a time."""
        probe = await embedder.probe()
        missing = await asyncio.to_thread(self._with_db, corpus_vectors.pending, embedder.model, probe)
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            matrix = await embedder.documents([(title, text) for _, title, text in batch])
            await asyncio.to_thread(self._with_db, corpus_vectors.store, [rowid for rowid, _, _ in batch], matrix)
        if missing:
            log.info("embedded %d passages of the corpus with %s", len(missing), embedder.model)
        return await asyncio.to_thread(self._with_db, corpus_vectors.load)

    def _with_db(self, call: Callable[..., _T], *args: Any) -> _T:
        with self._lock:
            return call(self._open(), *args)

    async def search(self, query: str, limit: int) -> list[Source]:
        meant = None
        try:
            await self._ready()
            if self._embedder is not None and query.strip():
                meant = await self._embedder.query(query)
        except ApiError as error:  # the embedding model failed: a hybrid search still has the words
            if self._search_by != "hybrid" or self._db is None:
                raise
            if not self._degraded:
                log.warning("the corpus is searched by its words only: the embedding model failed (%s)", error)
                self._degraded = True
        return await asyncio.to_thread(self._search, query, meant, limit)

    def _search(self, query: str, meant: Matrix | None, limit: int) -> list[Source]:
        candidates = limit * 8  # from each ranking: enough for `limit` documents, one passage each
        rankings: list[list[int]] = []
        with self._lock:
            db = self._open()
            if self._search_by != "meaning":
                rankings.append(_word_ranking(db, query, candidates))
            if meant is not None and self._vectors is not None:
                rankings.append(self._vectors.nearest(meant, candidates))
            ranked = rankings[0] if len(rankings) == 1 else corpus_vectors.fuse(rankings)
            marks = ",".join("?" * len(ranked))
            rows = db.execute(f"SELECT rowid, path, title, text FROM passages WHERE rowid IN ({marks})", ranked)
            found = {rowid: (path, title, text) for rowid, path, title, text in rows}
        sources: list[Source] = []
        seen: set[str] = set()
        for path, title, text in (found[rowid] for rowid in ranked if rowid in found):  # each document's best
            if path not in seen and len(sources) < limit:
                seen.add(path)
                sources.append(Source(self._uri(path), title, text))
        return sources

    def _uri(self, relative: str) -> str:
        if self._base_url is None:
            return (self._folder / relative).as_uri()
        return f"{self._base_url}/{quote(relative)}"

    def _open(self) -> sqlite3.Connection:
        """The index, built first if the folder changed since it was (under the lock)."""
        if self._db is None:
            self._build()
            self._db = sqlite3.connect(self._index, check_same_thread=False)  # used under the lock only
        return self._db

    def _build(self) -> None:
        """Index the folder, unless the index holds it as it is now."""
        files = sorted(p for p in self._folder.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
        stamp = hashlib.sha256(
            "\n".join(
                f"{p.relative_to(self._folder)}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files
            ).encode()
        ).hexdigest()
        self._index.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(self._index) as db:
            db.execute("CREATE TABLE IF NOT EXISTS stamp (value TEXT)")
            db.execute("CREATE VIRTUAL TABLE IF NOT EXISTS passages USING fts5(path UNINDEXED, title, text)")
            for table in corpus_vectors.SCHEMA:
                db.execute(table)
            known = db.execute("SELECT value FROM stamp").fetchone()
            if known is None or known[0] != stamp:
                db.execute("DELETE FROM passages")
                corpus_vectors.forget(db)  # whichever search this start makes, old vectors would misplace
                for path in files:
                    relative = str(path.relative_to(self._folder))
                    title, passages = _read(path)
                    db.executemany(
                        "INSERT INTO passages (path, title, text) VALUES (?, ?, ?)",
                        [(relative, title, passage) for passage in passages],
                    )
                db.execute("DELETE FROM stamp")
                db.execute("INSERT INTO stamp VALUES (?)", (stamp,))
        db.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            self._vectors = None
            if self._db is not None:
                self._db.close()
                self._db = None


def _word_ranking(db: sqlite3.Connection, query: str, count: int) -> list[int]:
    """The rowids of the passages that best match the question's words (bm25), best first."""
    words = [word for word in dict.fromkeys(w.lower() for w in _WORD.findall(query)) if word not in _STOPWORDS]
    if not words:
        return []
    # Each word quoted: a question's text is never read as FTS5 query syntax.
    match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words[:MAX_QUERY_WORDS])
    rows = db.execute(
        "SELECT rowid FROM passages WHERE passages MATCH ? ORDER BY bm25(passages) LIMIT ?", (match, count)
    )
    return [rowid for (rowid,) in rows]


def _read(path: Path) -> tuple[str, list[str]]:
    """A document's title (its first heading or line, else its name) and its passages."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".html", ".htm"):
        found = re.search(r"<title[^>]*>(.*?)</title>", text, re.DOTALL | re.IGNORECASE)
        title = html.unescape(found.group(1)).strip() if found else ""
        text = html.unescape(_TAGS.sub(" ", text))
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        title = first.lstrip("#").strip() if path.suffix.lower() == ".md" or len(first) <= 120 else ""
    passages: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        flat = " ".join(paragraph.split())
        passages += [flat[i : i + _PASSAGE_CHARS] for i in range(0, len(flat), _PASSAGE_CHARS)]
    return (title or path.stem), passages
