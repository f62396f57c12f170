"""What rates text for harm, for backends that do not filter themselves: classifiers behind one
interface, each giving a probability of harm for the Gemini categories it covers, and the
operator's blocklist.

- `ProfanityClassifier`: alt-profanity-check, a linear model over word n-grams whose weights ship
  inside its package (offline, a few milliseconds a call). It detects insults and slurs, so it
  stands for harassment and hate speech; it knows nothing of danger or sexual content.
- `ModerationClassifier`: a moderation model (Llama Guard, say) behind any OpenAI-compatible
  server. It answers `safe`, or `unsafe` and a line of category codes that the configuration maps
  to Gemini's categories: a flagged category is rated 1, the others 0.
- `Blocklist`: terms (whole words, any case) and regular expressions; a hit blocks whatever the
  safety settings say, as Vertex's terminology blocklists do.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import aiohttp

from openvertex.errors import UnavailableError
from openvertex.settings import BlocklistSettings, ModerationSettings

Ratings = dict[str, float]  # a category → the probability that the text is harmful in it


class HarmClassifier(Protocol):
    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        """Ratings for each text: parts of a prompt (`prompt` None), or of an answer to `prompt`."""
        ...

    async def close(self) -> None: ...


class ProfanityClassifier:
    def __init__(self, categories: Sequence[str]) -> None:
        self._categories = tuple(categories)
        self._predict: Any = None  # profanity_check.predict_prob, imported at the first use
        self._lock = threading.Lock()

    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        scores = await asyncio.to_thread(self._scores, list(texts))
        return [dict.fromkeys(self._categories, score) for score in scores]

    def _scores(self, texts: list[str]) -> list[float]:
        with self._lock:  # its import loads scikit-learn and the model: once
            if self._predict is None:
                from profanity_check import predict_prob

                self._predict = predict_prob
        return [float(score) for score in self._predict(texts)]

    async def close(self) -> None:
        return None


class ModerationClassifier:
    def __init__(self, settings: ModerationSettings) -> None:
        self._settings = settings
        self._url = f"{settings.url}/chat/completions"
        self._session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "application/json"}
        if settings.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"

    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        return list(await asyncio.gather(*(self._rate(text, prompt) for text in texts)))

    async def _rate(self, text: str, prompt: str | None) -> Ratings:
        # A prompt is the user's turn; an answer is the assistant's, after the user's turn it answers.
        messages = [{"role": "user", "content": text}]
        if prompt is not None:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        body: dict[str, Any] = {"messages": messages, "max_tokens": 32, "temperature": 0}
        if self._settings.model is not None:
            body["model"] = self._settings.model
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._settings.timeout_s))
        try:
            async with self._session.post(self._url, json=body, headers=self._headers) as response:
                if response.status != 200:
                    raise UnavailableError(f"The moderation model answered HTTP {response.status}.")
                answer = (await response.json())["choices"][0]["message"]["content"] or ""
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, IndexError, TypeError):
            raise UnavailableError("The moderation model did not answer; the text could not be checked.") from None
        return self._ratings(answer)

    def _ratings(self, answer: str) -> Ratings:
        lines = answer.strip().splitlines()
        verdict = lines[0].strip().lower() if lines else ""
        if verdict not in ("safe", "unsafe"):
            raise UnavailableError("The moderation model's answer was neither `safe` nor `unsafe`.")
        flagged = {code.strip() for line in lines[1:] for code in line.split(",")} if verdict == "unsafe" else set()
        ratings: Ratings = dict.fromkeys(self._settings.categories.values(), 0.0)
        for code, category in self._settings.categories.items():
            if code in flagged:
                ratings[category] = 1.0
        return ratings

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Blocklist:
    def __init__(self, settings: BlocklistSettings) -> None:
        words = [r"\b" + re.escape(term) + r"\b" for term in settings.terms]
        self._terms = re.compile("|".join(words), re.IGNORECASE) if words else None
        self._patterns = [re.compile(pattern) for pattern in settings.patterns]

    def __bool__(self) -> bool:
        return self._terms is not None or bool(self._patterns)

    def hit(self, text: str) -> bool:
        if self._terms is not None and self._terms.search(text):
            return True
        return any(pattern.search(text) for pattern in self._patterns)
