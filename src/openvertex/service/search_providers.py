"""Where a grounded answer's sources come from, for backends without Google Search.

- `Searxng`: a SearxNG instance's JSON API (`/search?q=…&format=json`), the self-hosted
  metasearch engine.
- `LocalCorpus`: a folder of documents (.txt, .md, .html), cut into passages and indexed with SQLite
  FTS5 in `state_dir`; indexed again only when a file was added, changed or removed. A question's
  words are searched with OR (bm25 ranking), one passage per document.
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

_SUFFIXES = (".txt", ".md", ".html", ".htm")
_PASSAGE_CHARS = 800
_WORD = re.compile(r"\w+", re.UNICODE)
_TAGS = re.compile(r"<(script|style)\b.*?</\1>|<[^>]+>", re.DOTALL | re.IGNORECASE)
MAX_QUERY_WORDS = 32


@dataclass(frozen=True, slots=True)
class Source:
    uri: str
    title: str
    text: str

    @property
    def domain(self) -> str:
        return urlsplit(self.uri).hostname or "local"


class SearchProvider(Protocol):
    async def search(self, query: str, limit: int) -> list[Source]: ...

    async def close(self) -> None: ...


class Searxng:
    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url.rstrip("/") + "/search"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def search(self, query: str, limit: int) -> list[Source]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(self._url, params={"q": query, "format": "json"}) as response:
                if response.status != 200:
                    raise UnavailableError(f"The search engine answered HTTP {response.status}.")
                results: list[dict[str, Any]] = (await response.json())["results"]
            sources = [
                Source(str(result["url"]), str(result.get("title") or result["url"]), str(result.get("content") or ""))
                for result in results
                if isinstance(result, dict) and isinstance(result.get("url"), str)
            ]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            raise UnavailableError("The search engine did not answer; the request could not be grounded.") from None
        return sources[:limit]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class LocalCorpus:
    def __init__(self, folder: Path, index: Path, *, base_url: str | None) -> None:
        self._folder = folder.expanduser().resolve()
        self._index = index
        self._base_url = base_url.rstrip("/") if base_url else None
        self._lock = threading.Lock()
        self._ready = False

    async def search(self, query: str, limit: int) -> list[Source]:
        return await asyncio.to_thread(self._search, query, limit)

    def _search(self, query: str, limit: int) -> list[Source]:
        words = list(dict.fromkeys(word.lower() for word in _WORD.findall(query)))[:MAX_QUERY_WORDS]
        if not words:
            return []
        match = " OR ".join('"' + word.replace('"', '""') + '"' for word in words)
        with self._lock:
            self._build()
            with sqlite3.connect(self._index) as db:
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

    def _build(self) -> None:
        """Index the folder, unless the index holds it as it is now."""
        if self._ready:
            return
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
        self._ready = True

    async def close(self) -> None:
        return None


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
