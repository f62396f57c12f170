"""What rates text for harm, for backends that do not filter themselves: classifiers behind one
interface, each giving a probability of harm for the Gemini categories it covers, and the
operator's blocklist.

- `ProfanityClassifier`: alt-profanity-check, a linear model over word n-grams whose weights ship
  inside its package (offline, a few milliseconds a call). It detects insults and slurs, so it
  stands for harassment and hate speech; it knows nothing of danger or sexual content.
- `ModerationClassifier`: a moderation model (Llama Guard, say) behind any OpenAI-compatible
  server. It answers `safe`, or `unsafe` and a line of category codes that the configuration maps
  to Gemini's categories: a flagged category is rated 1, the others 0.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp

from openvertex.errors import UnavailableError
from openvertex.http_clients import HttpClients, SessionSpec
from openvertex.settings import ModerationSettings

MODERATION_CALLS = 8  # in flight at once, per server
Ratings = dict[str, float]  # a category → the probability that the text is harmful in it


class HarmClassifier(Protocol):
    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        """Ratings for each text: parts of a prompt (`prompt` None), or of an answer to `prompt`."""
        ...


class ProfanityClassifier:
    def __init__(self, categories: Sequence[str]) -> None:
        self._categories = tuple(categories)
        self._predict: Callable[[list[str]], Sequence[float]] | None = None  # loaded at the first use
        self._lock = threading.Lock()

    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        scores = await asyncio.to_thread(self._scores, list(texts))
        return [dict.fromkeys(self._categories, score) for score in scores]

    def _scores(self, texts: list[str]) -> list[float]:
        with self._lock:  # its import loads scikit-learn and the model: once
            if self._predict is None:
                self._predict = _profanity_scorer()
        return [float(score) for score in self._predict(texts)]


def _profanity_scorer() -> Callable[[list[str]], Sequence[float]]:
    """alt-profanity-check's probability. Its model is scikit-learn's sigmoid-calibrated ensemble of
    linear SVMs, whose predict_proba spends 2 ms a call validating its input: the same sums in
    numpy take 0.3 ms. Used only where they give the library's own numbers, else the library."""
    import numpy as np
    from profanity_check import predict_prob
    from profanity_check import profanity_check as loaded

    try:
        folds = loaded.model.calibrated_classifiers_
        weights = np.vstack([fold.estimator.coef_[0] for fold in folds]).T
        intercepts = np.array([fold.estimator.intercept_[0] for fold in folds])
        slopes = np.array([fold.calibrators[0].a_ for fold in folds])
        offsets = np.array([fold.calibrators[0].b_ for fold in folds])
    except (AttributeError, IndexError, ValueError):
        return predict_prob  # type: ignore[no-any-return]

    def scores(texts: list[str]) -> Sequence[float]:
        decisions = loaded.vectorizer.transform(texts) @ weights + intercepts
        return list(np.mean(1.0 / (1.0 + np.exp(slopes * decisions + offsets)), axis=1))

    probes = ["You are a stupid idiot.", "The capital of France is Paris.", "damn it", ""]
    same = bool(np.allclose(scores(probes), predict_prob(probes), atol=1e-9))
    return scores if same else predict_prob


class ModerationClassifier:
    def __init__(self, settings: ModerationSettings, clients: HttpClients) -> None:
        self._settings = settings
        self._url = f"{settings.url}/chat/completions"
        self._client = clients.add(SessionSpec(timeout=aiohttp.ClientTimeout(total=settings.timeout_s)))
        self._calls = asyncio.Semaphore(MODERATION_CALLS)  # a long text's windows do not flood the model
        self._headers = {"Content-Type": "application/json"}
        if settings.bearer_token is not None:
            self._headers["Authorization"] = f"Bearer {settings.bearer_token.get_secret_value()}"

    async def rate(self, texts: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        return list(await asyncio.gather(*(self._rate(text, prompt) for text in texts)))

    async def _rate(self, text: str, prompt: str | None) -> Ratings:
        async with self._calls:
            return await self._call(text, prompt)

    async def _call(self, text: str, prompt: str | None) -> Ratings:
        # A prompt is the user's turn; an answer is the assistant's, after the user's turn it answers.
        messages = [{"role": "user", "content": text}]
        if prompt is not None:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}]
        body: dict[str, Any] = {"messages": messages, "max_tokens": 32, "temperature": 0}
        if self._settings.model is not None:
            body["model"] = self._settings.model
        try:
            async with self._client.session.post(self._url, json=body, headers=self._headers) as response:
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
