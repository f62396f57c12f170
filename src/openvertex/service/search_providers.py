"""Where a grounded answer's sources come from, for backends without Google Search.

- `Searxng`: a SearxNG instance's JSON API (`/search?q=…&format=json`), the self-hosted
  metasearch engine.
- `LocalCorpus`: a folder of documents (.txt, .md, .html), cut into passages and indexed with SQLite
  FTS5 in `state_dir` at the first search after a start (again only if a file was added, changed or
  removed since the index was built). A question's words, common English words left out, are
  searched with OR (bm25 ranking), one passage per document.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import re
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import aiohttp

from openvertex.errors import UnavailableError
from openvertex.http_clients import HttpClients, SessionSpec

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
    def __init__(self, folder: Path, index: Path, *, base_url: str | None) -> None:
        self._folder = folder.expanduser().resolve()
        self._index = index
        self._base_url = base_url.rstrip("/") if base_url else None
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        """Index the folder now (at the server's start), not at the first question."""
        await asyncio.to_thread(self._connected)

    def _connected(self) -> None:
        with self._lock:
            self._open()

    async def search(self, query: str, limit: int) -> list[Source]:
        return await asyncio.to_thread(self._search, query, limit)

    def _search(self, query: str, limit: int) -> list[Source]:
        words = [word for word in dict.fromkeys(w.lower() for w in _WORD.findall(query)) if word not in _STOPWORDS]
        if not words:
            return []
        # Each word quoted: a question's text is never read as FTS5 query syntax.
        match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words[:MAX_QUERY_WORDS])
        with self._lock:
            db = self._open()
            rows = db.execute(
                "SELECT path, title, text FROM passages WHERE passages MATCH ? ORDER BY bm25(passages) LIMIT ?",
                (match, limit * 8),
            ).fetchall()
        sources: list[Source] = []
        seen: set[str] = set()
        for path, title, text in rows:  # the best passage of each document
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
            known = db.execute("SELECT value FROM stamp").fetchone()
            if known is None or known[0] != stamp:
                db.execute("DELETE FROM passages")
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
            if self._db is not None:
                self._db.close()
                self._db = None


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
