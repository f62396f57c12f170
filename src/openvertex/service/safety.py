"""Safety settings enforced around a backend that does not filter itself (the embedded model, a
self-deployed model named as a backend); Gemini applies its own, and gets the settings as sent.

A request's blocking thresholds need a classifier for their category (service/harm_classifiers.py),
else they are a 400 naming the entry: nothing is passed silently. The prompt's user text is rated
before generation: blocked, the answer is Gemini's blocked prompt (no candidates,
`promptFeedback.blockReason`, prompt-only usage). An answer is rated in windows of about
`window_chars` characters, cut at whitespace: a stream holds each window until it is rated, so a
stream stops at the first blocked window without sending it (what was sent before stays sent), and
the blocked candidate ends with `finishReason: SAFETY` (or `BLOCKLIST`), no content, and its
ratings with `blocked: true`. Ratings map a probability to Gemini's levels (under 0.25 NEGLIGIBLE,
0.5 LOW, 0.75 MEDIUM, else HIGH); the classifiers give no separate severity, so `method: SEVERITY`
is judged on the same score. The operator's blocklist applies to every request on these backends,
whatever its settings. Thoughts and function calls are not rated.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from openvertex.backends.base import Backend, Capabilities
from openvertex.errors import InvalidArgumentError, unsupported
from openvertex.protocol import generate_content as gc
from openvertex.service.capabilities import Namer
from openvertex.service.harm_classifiers import (
    Blocklist,
    HarmClassifier,
    ModerationClassifier,
    ProfanityClassifier,
    Ratings,
)
from openvertex.settings import SafetyConfig

LEVELS = ("NEGLIGIBLE", "LOW", "MEDIUM", "HIGH")
_LEVEL_FLOORS = (0.25, 0.5, 0.75)  # the probability at which LOW, MEDIUM and HIGH start
_BLOCKS_FROM = {"BLOCK_LOW_AND_ABOVE": 1, "BLOCK_MEDIUM_AND_ABOVE": 2, "BLOCK_ONLY_HIGH": 3}  # the lowest blocked level
_UNRATED = frozenset({"OFF"})


def level(probability: float) -> int:
    return sum(probability >= floor for floor in _LEVEL_FLOORS)


class SafetyPolicy:
    """The server's classifiers and blocklist; `plan` decides what one request gets."""

    def __init__(self, config: SafetyConfig) -> None:
        self.window_chars = config.window_chars
        profanity = [category for category, kind in config.classifiers.items() if kind == "profanity"]
        shared: dict[str, HarmClassifier] = {}
        if profanity:
            shared["profanity"] = ProfanityClassifier(profanity)
        if config.moderation is not None:
            shared["moderation"] = ModerationClassifier(config.moderation)
        self._classifiers: dict[str, HarmClassifier] = {c: shared[kind] for c, kind in config.classifiers.items()}
        self._shared = list(shared.values())
        self.blocklist = Blocklist(config.blocklist)

    def plan(self, request: gc.GenerateContentRequest, caps: Capabilities, name: Namer) -> SafetyCheck | None:
        """What this request's answer is checked for here, or None; a 400 for what cannot be."""
        settings = request.safety_settings or []
        if settings and request.model_armor_config is not None:
            raise InvalidArgumentError(
                "safetySettings and modelArmorConfig cannot be set together", param=name("safetySettings")
            )
        seen: set[str] = set()
        thresholds: dict[str, str] = {}
        for index, setting in enumerate(settings):
            if setting.category in seen:
                raise InvalidArgumentError(
                    f"{setting.category} is set twice", param=name(f"safetySettings[{index}].category")
                )
            seen.add(setting.category)
            if caps.safety_filtering or setting.threshold in _UNRATED:
                continue  # the backend filters itself, or nothing is asked
            if setting.category not in self._classifiers:
                if setting.threshold in _BLOCKS_FROM:
                    raise unsupported(
                        name(f"safetySettings[{index}].category"),
                        f"blocking {setting.category} (no classifier for it is configured: safety.classifiers)",
                    )
                continue  # BLOCK_NONE: nothing to block, and no rating to give
            thresholds[setting.category] = setting.threshold
        if not thresholds and not self.blocklist:
            return None
        return SafetyCheck(self, thresholds)

    async def rate(self, texts: Sequence[str], categories: Sequence[str], *, prompt: str | None) -> Ratings:
        """The highest probability each category gets over `texts`."""
        if not texts or not categories:
            return {}
        by_classifier: dict[int, tuple[HarmClassifier, list[str]]] = {}
        for category in categories:
            classifier = self._classifiers[category]
            by_classifier.setdefault(id(classifier), (classifier, []))[1].append(category)
        results = await asyncio.gather(
            *(classifier.rate(texts, prompt=prompt) for classifier, _ in by_classifier.values())
        )
        highest: Ratings = {}
        for (_, wanted), ratings in zip(by_classifier.values(), results, strict=True):
            for category in wanted:
                highest[category] = max(rating.get(category, 0.0) for rating in ratings)
        return highest

    async def close(self) -> None:
        await asyncio.gather(*(classifier.close() for classifier in self._shared))


@dataclass(slots=True)
class Verdict:
    ratings: Ratings = field(default_factory=dict)
    reason: str | None = None  # SAFETY or BLOCKLIST when blocked
    blocked: frozenset[str] = frozenset()  # the categories that blocked it

    def safety_ratings(self) -> list[gc.SafetyRating] | None:
        if not self.ratings:
            return None
        return [
            gc.SafetyRating(
                category=category,
                probability=LEVELS[level(score)],
                probability_score=round(score, 4),
                severity=f"HARM_SEVERITY_{LEVELS[level(score)]}",
                severity_score=round(score, 4),
                blocked=True if category in self.blocked else None,
            )
            for category, score in sorted(self.ratings.items())
        ]

    def merge(self, other: Verdict) -> Verdict:
        ratings = dict(self.ratings)
        for category, score in other.ratings.items():
            ratings[category] = max(score, ratings.get(category, 0.0))
        return Verdict(ratings, self.reason or other.reason, self.blocked | other.blocked)


class SafetyCheck:
    """One request's checks: its prompt, then its answer (whole, or as a stream)."""

    def __init__(self, policy: SafetyPolicy, thresholds: dict[str, str]) -> None:
        self._policy = policy
        self._thresholds = thresholds
        self._prompt: str | None = None  # the last user turn, which an answer is rated as answering

    async def prompt_block(
        self, request: gc.GenerateContentRequest, backend: Backend, model: str
    ) -> gc.GenerateContentResponse | None:
        """Gemini's blocked prompt when the prompt is blocked, else None."""
        turns = [_text(content.parts) for content in request.contents if content.role in (None, "user")]
        turns = [turn for turn in turns if turn]
        self._prompt = turns[-1] if turns else None
        verdict = await self._judge(turns, prompt=None)
        if verdict.reason is None:
            return None
        tokens = await backend.count_tokens(request, model=model)
        return gc.GenerateContentResponse(
            prompt_feedback=gc.PromptFeedback(
                block_reason=verdict.reason,
                block_reason_message=_message("The prompt", verdict),
                safety_ratings=verdict.safety_ratings(),
            ),
            usage_metadata=gc.UsageMetadata(prompt_token_count=tokens, total_token_count=tokens),
        )

    async def check_answer(self, response: gc.GenerateContentResponse) -> None:
        """Rate each candidate of a whole answer; a blocked one loses its content."""
        candidates = response.candidates or []
        verdicts = await asyncio.gather(*(self._judge([_text(_parts(c))], prompt=self._prompt) for c in candidates))
        for candidate, verdict in zip(candidates, verdicts, strict=True):
            _apply(candidate, verdict)

    async def guard(
        self, upstream: AsyncIterator[gc.GenerateContentResponse]
    ) -> AsyncIterator[gc.GenerateContentResponse]:
        """The stream, each window of each candidate's text held until it is rated."""
        held: list[gc.GenerateContentResponse] = []
        pending: dict[int, str] = {}  # text not yet rated, per candidate
        verdicts: dict[int, Verdict] = {}
        blocked: set[int] = set()
        usage: gc.UsageMetadata | None = None
        try:
            async for chunk in upstream:
                usage = chunk.usage_metadata or usage
                _drop(chunk, blocked)
                held.append(chunk)
                due = _due(chunk, pending, self._policy.window_chars)
                if not due:
                    continue
                newly = await self._judge_windows(due, pending, verdicts)
                for ready in _released(held, newly, verdicts):
                    yield ready
                held = []
                if newly:
                    blocked |= set(newly)
                    yield gc.GenerateContentResponse(
                        candidates=[_blocked(index, verdict) for index, verdict in sorted(newly.items())],
                        usage_metadata=usage,
                    )
                    if all(index in blocked for index in pending):
                        return  # nothing left to send: the generation stops here
            for ready in held:
                yield ready
        finally:
            with contextlib.suppress(Exception):
                await upstream.aclose()  # type: ignore[attr-defined]

    async def _judge_windows(
        self, due: dict[int, str], pending: dict[int, str], verdicts: dict[int, Verdict]
    ) -> dict[int, Verdict]:
        """Rate each candidate's due window, taken off its pending text; the candidates it blocks."""
        judged = await asyncio.gather(*(self._judge([text], prompt=self._prompt) for text in due.values()))
        newly: dict[int, Verdict] = {}
        for index, verdict in zip(due, judged, strict=True):
            pending[index] = pending[index][len(due[index]) :]
            verdicts[index] = verdicts.get(index, Verdict()).merge(verdict)
            if verdict.reason is not None:
                newly[index] = verdicts[index]
        return newly

    async def _judge(self, texts: Sequence[str], *, prompt: str | None) -> Verdict:
        texts = [text for text in texts if text]
        if not texts:
            return Verdict()
        if self._policy.blocklist and any(self._policy.blocklist.hit(text) for text in texts):
            return Verdict(reason="BLOCKLIST")
        windows = [piece for text in texts for piece in _windows(text, self._policy.window_chars)]
        ratings = await self._policy.rate(windows, list(self._thresholds), prompt=prompt)
        blocked = frozenset(
            category
            for category, score in ratings.items()
            if level(score) >= _BLOCKS_FROM.get(self._thresholds[category], len(LEVELS))
        )
        return Verdict(ratings, "SAFETY" if blocked else None, blocked)


def _parts(candidate: gc.Candidate) -> list[gc.Part]:
    return candidate.content.parts if candidate.content is not None else []


def _text(parts: Sequence[gc.Part]) -> str:
    return "".join(part.text for part in parts if part.text and not part.thought)


def _index(candidate: gc.Candidate, position: int) -> int:
    return candidate.index if candidate.index is not None else position


def _cut(text: str, *, final: bool) -> str:
    """What of a candidate's pending text is rated now: all of it at its end, else up to its last
    whitespace (a word is never split between two windows)."""
    if final:
        return text
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[: cut + 1] if cut > 0 else text


def _windows(text: str, size: int) -> list[str]:
    windows = []
    while len(text) > size:
        piece = _cut(text[:size], final=False)
        windows.append(piece)
        text = text[len(piece) :]
    return [*windows, text] if text else windows


def _due(chunk: gc.GenerateContentResponse, pending: dict[int, str], window: int) -> dict[int, str]:
    """The chunk's text added to each candidate's pending text; the windows to rate now: a
    candidate's whole pending text when it finishes, else its first `window` characters' worth."""
    finishing = set()
    for position, candidate in enumerate(chunk.candidates or []):
        index = _index(candidate, position)
        pending[index] = pending.get(index, "") + _text(_parts(candidate))
        if candidate.finish_reason is not None:
            finishing.add(index)
    return {
        index: _cut(text, final=index in finishing)
        for index, text in pending.items()
        if index in finishing or len(text) >= window
    }


def _released(
    held: list[gc.GenerateContentResponse], blocked: dict[int, Verdict], verdicts: dict[int, Verdict]
) -> list[gc.GenerateContentResponse]:
    """The held chunks that may go now: without the candidates just blocked, finishing candidates
    with their ratings."""
    for chunk in held:
        _drop(chunk, set(blocked))
        _rate_finished(chunk, verdicts)
    return [chunk for chunk in held if chunk.candidates or chunk.usage_metadata or chunk.prompt_feedback]


def _drop(chunk: gc.GenerateContentResponse, blocked: set[int]) -> None:
    if blocked and chunk.candidates:
        kept = [c for position, c in enumerate(chunk.candidates) if _index(c, position) not in blocked]
        chunk.candidates = kept or None


def _rate_finished(chunk: gc.GenerateContentResponse, verdicts: dict[int, Verdict]) -> None:
    for position, candidate in enumerate(chunk.candidates or []):
        verdict = verdicts.get(_index(candidate, position))
        if candidate.finish_reason is not None and verdict is not None:
            candidate.safety_ratings = verdict.safety_ratings()


def _apply(candidate: gc.Candidate, verdict: Verdict) -> None:
    candidate.safety_ratings = verdict.safety_ratings()
    if verdict.reason is not None:
        candidate.content = None
        candidate.finish_reason = verdict.reason
        candidate.finish_message = _message("The answer", verdict)


def _blocked(index: int, verdict: Verdict) -> gc.Candidate:
    candidate = gc.Candidate(index=index)
    _apply(candidate, verdict)
    return candidate


def _message(what: str, verdict: Verdict) -> str:
    if verdict.reason == "BLOCKLIST":
        return f"{what} holds a term of this server's blocklist."
    named = ", ".join(sorted(verdict.blocked))
    return f"{what} was blocked by the safety settings ({named})."
