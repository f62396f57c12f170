"""Safety settings enforced around a backend that does not filter itself (the embedded model, a
self-deployed model named as a backend); Gemini applies its own, and gets the settings as sent.

A request's blocking thresholds need a classifier for their category (service/harm_classifiers.py),
else they are a 400 naming the entry: nothing is passed silently. The prompt's user text is rated
before generation: blocked, the answer is Gemini's blocked prompt (no candidates,
`promptFeedback.blockReason`, prompt-only usage). The answer is rated by a response stage
(`SafetyStage`) in windows of at most `window_chars` characters cut at whitespace, which fall where
the text alone says: a stream holds each window until it is rated (and the blocklist has read its
reach past it), so it stops at the first blocked window without sending it (what was sent before
stays sent), and a whole answer is rated on the same windows. The blocked candidate ends with
`finishReason: SAFETY` (or `BLOCKLIST`), no content, and its ratings with `blocked: true`. Ratings
map a probability to Gemini's levels (under 0.25 NEGLIGIBLE, 0.5 LOW, 0.75 MEDIUM, else HIGH); the
classifiers give no separate severity, so `method: SEVERITY` is judged on the same score. The
operator's blocklist (service/blocklist.py) applies to every request on every backend, Gemini
included, whatever its settings. What a candidate says is rated in the order it says it: its
text, the thoughts the client gets (hidden ones never leave) and the string values of its function
calls' arguments (whole, or streamed as partialArgs), each call's strings ended by a newline. So a
term split between a thought and the answer, or hidden in an argument, blocks like any other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from openvertex.backends.base import Backend, Capabilities
from openvertex.errors import InvalidArgumentError, unsupported
from openvertex.http_clients import HttpClients
from openvertex.protocol import generate_content as gc
from openvertex.service.blocklist import Blocklist, json_strings
from openvertex.service.capabilities import Namer
from openvertex.service.harm_classifiers import (
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
MAX_RATED_CHARS = 256 * 1024  # of a prompt's user turns, when classifiers rate it
CONTEXT_CHARS = 4000  # of the last user turn, sent to a moderation model with each answer window
OFF_LOOP_CHARS = 64 * 1024  # texts longer than this are matched and cut on a worker thread


def level(probability: float) -> int:
    return sum(probability >= floor for floor in _LEVEL_FLOORS)


class SafetyPolicy:
    """The server's classifiers and blocklist; `plan` decides what one request gets."""

    def __init__(self, config: SafetyConfig, clients: HttpClients) -> None:
        self.window_chars = config.window_chars
        profanity = [category for category, kind in config.classifiers.items() if kind == "profanity"]
        shared: dict[str, HarmClassifier] = {}
        if profanity:
            shared["profanity"] = ProfanityClassifier(profanity)
        if config.moderation is not None:
            shared["moderation"] = ModerationClassifier(config.moderation, clients)
        self._classifiers: dict[str, HarmClassifier] = {c: shared[kind] for c, kind in config.classifiers.items()}
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
        return SafetyCheck(self, thresholds, name)

    async def rate(self, texts: Sequence[str], categories: Sequence[str], *, prompt: str | None) -> Ratings:
        """The highest probability each category gets over `texts`."""
        highest: Ratings = {}
        for ratings in await self.rate_each(texts, categories, prompt=prompt):
            for category, score in ratings.items():
                highest[category] = max(score, highest.get(category, 0.0))
        return highest

    async def rate_each(self, texts: Sequence[str], categories: Sequence[str], *, prompt: str | None) -> list[Ratings]:
        """Each text's probability in each category: one call of each classifier for all of them."""
        if not texts or not categories:
            return [{} for _ in texts]
        by_classifier: dict[int, tuple[HarmClassifier, list[str]]] = {}
        for category in categories:
            classifier = self._classifiers[category]
            by_classifier.setdefault(id(classifier), (classifier, []))[1].append(category)
        results = await asyncio.gather(
            *(classifier.rate(texts, prompt=prompt) for classifier, _ in by_classifier.values())
        )
        each: list[Ratings] = [{} for _ in texts]
        for (_, wanted), ratings in zip(by_classifier.values(), results, strict=True):
            for mine, rating in zip(each, ratings, strict=True):
                mine.update({category: rating.get(category, 0.0) for category in wanted})
        return each


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

    def __init__(self, policy: SafetyPolicy, thresholds: dict[str, str], name: Namer) -> None:
        self._policy = policy
        self._thresholds = thresholds
        self._name = name
        self._prompt: str | None = None  # the last user turn, which an answer is rated as answering
        self._candidates = 1
        self._source: tuple[Backend, gc.GenerateContentRequest, str] | None = None  # for token counts

    async def prompt_block(
        self, request: gc.GenerateContentRequest, backend: Backend, model: str
    ) -> gc.GenerateContentResponse | None:
        """Gemini's blocked prompt when the prompt is blocked, else None."""
        turns = request.user_texts()
        total = sum(map(len, turns))
        if self._thresholds and total > MAX_RATED_CHARS:  # rated whole, or not at all
            raise InvalidArgumentError(
                f"safety settings are enforced on at most {MAX_RATED_CHARS} characters of a prompt's user turns "
                f"here; this prompt has {total}",
                param=self._name("safetySettings"),
            )
        self._prompt = turns[-1][-CONTEXT_CHARS:] if turns else None
        config = request.generation_config
        self._candidates = (config.candidate_count if config else None) or 1
        self._source = (backend, request, model)
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

    def stage(self) -> SafetyStage:
        return SafetyStage(self)

    async def judge_windows(self, windows: Sequence[tuple[str, int, int]]) -> list[Verdict]:
        """The verdict on each window of an answer, `(text, start, end)`: `text[start:end]` rated
        as answering the prompt (one call of each classifier for all), the blocklist read around it."""
        if not windows:
            return []
        if sum(end - start for _, start, end in windows) > OFF_LOOP_CHARS:  # a long answer's matching
            hits = await asyncio.to_thread(self._blocklist_hits, windows)
        else:
            hits = self._blocklist_hits(windows)
        texts = [text[start:end] for text, start, end in windows]
        ratings = await self._policy.rate_each(texts, list(self._thresholds), prompt=self._prompt)
        return [
            Verdict(reason="BLOCKLIST") if hit else self._verdict(rating)
            for hit, rating in zip(hits, ratings, strict=True)
        ]

    def _blocklist_hits(self, windows: Sequence[tuple[str, int, int]]) -> list[bool]:
        blocklist = self._policy.blocklist
        return [bool(blocklist) and blocklist.hit_within(text, start, end) for text, start, end in windows]

    async def usage_so_far(self, answers: Iterable[str]) -> gc.UsageMetadata | None:
        """A stream stopped before its backend gave its usage: the prompt's tokens, and the text
        generated so far tokenized as an answer (the backend's own count is not known)."""
        if self._source is None:
            return None
        backend, request, model = self._source
        prompt = await backend.count_tokens(request, model=model)
        said = gc.GenerateContentRequest(contents=[gc.Content(role="model", parts=[gc.Part(text="")])])
        empty = await backend.count_tokens(said, model=model)
        output = 0
        for answer in answers:
            if answer:
                said.contents[0].parts[0].text = answer
                output += max(0, await backend.count_tokens(said, model=model) - empty)
        return gc.UsageMetadata(
            prompt_token_count=prompt, candidates_token_count=output, total_token_count=prompt + output
        )

    async def _judge(self, texts: Sequence[str], *, prompt: str | None) -> Verdict:
        texts = [text for text in texts if text]
        if not texts:
            return Verdict()
        if sum(map(len, texts)) > OFF_LOOP_CHARS:  # a long text's matching and cutting: off the event loop
            hit, windows = await asyncio.to_thread(self._prepare, texts)
        else:
            hit, windows = self._prepare(texts)
        if hit:
            return Verdict(reason="BLOCKLIST")
        return await self._rated(windows, prompt=prompt)

    async def _rated(self, windows: Sequence[str], *, prompt: str | None) -> Verdict:
        return self._verdict(await self._policy.rate([w for w in windows if w], list(self._thresholds), prompt=prompt))

    def _verdict(self, ratings: Ratings) -> Verdict:
        blocked = frozenset(
            category
            for category, score in ratings.items()
            if level(score) >= _BLOCKS_FROM.get(self._thresholds[category], len(LEVELS))
        )
        return Verdict(ratings, "SAFETY" if blocked else None, blocked)

    def _prepare(self, texts: list[str]) -> tuple[bool, list[str]]:
        """Whether the blocklist holds any of the texts, and the windows the classifiers rate."""
        blocklist = self._policy.blocklist
        if blocklist and any(blocklist.hit(text) for text in texts):
            return True, []
        if not self._thresholds:
            return False, []
        return False, [piece for text in texts for piece in _windows(text, self._policy.window_chars)]

    @property
    def candidates(self) -> int:
        return self._candidates

    @property
    def window(self) -> tuple[int, int]:
        """An answer's window size, and how far the blocklist reads past a window's end."""
        blocklist = self._policy.blocklist
        return self._policy.window_chars, blocklist.reach if blocklist else 0


class SafetyStage:
    """The response stage that rates what an answer says a window at a time and holds each window
    until it is rated (and the blocklist has read past it): a stream stops at the first blocked
    window without sending it, what was sent before stays sent, and a whole answer, fed as one
    chunk, is rated on the same windows. A part goes on once all it says is rated (a text part may
    go in pieces; a function call goes whole); a part that says nothing, once those before it have."""

    def __init__(self, check: SafetyCheck) -> None:
        self._check = check
        self._held: dict[int, _Held] = {}
        self._last: gc.GenerateContentResponse | None = None
        self.stopped = False

    async def feed(self, chunk: gc.GenerateContentResponse) -> list[gc.GenerateContentResponse]:
        held = self._held
        for position, candidate in enumerate(chunk.candidates or []):
            held.setdefault(candidate.index_at(position), _Held()).add(candidate)
        self._last = chunk
        candidates = await self._release(final=False)
        blocked = any(h.blocked for h in held.values())
        self.stopped = blocked and all(i in held and held[i].closed for i in range(self._check.candidates))
        update: dict[str, Any] = {"candidates": candidates or None}
        if self.stopped and not _counts_output(chunk.usage_metadata):
            update["usage_metadata"] = await self._check.usage_so_far(h.answer for h in held.values())
        if candidates or chunk.usage_metadata is not None or chunk.prompt_feedback is not None or self.stopped:
            return [chunk.model_copy(update=update)]
        return []

    async def finish(self) -> list[gc.GenerateContentResponse]:
        """The upstream ended: what is left is rated now, a candidate it never finished included."""
        if self.stopped:
            return []
        candidates = await self._release(final=True)
        if candidates and self._last is not None:
            return [self._last.model_copy(update={"candidates": candidates, "usage_metadata": None})]
        return []

    async def _release(self, *, final: bool) -> list[gc.Candidate]:
        """Rate each candidate's due windows; the candidates to send now: their rated parts (and
        their end), or their block."""
        size, reach = self._check.window
        due = {index: h.windows(size, reach, final=final) for index, h in self._held.items() if not h.closed}
        spans = [(index, start, end) for index, windows in due.items() for start, end in windows]
        judged = await self._check.judge_windows([(self._held[index].seen, start, end) for index, start, end in spans])
        verdicts: dict[int, list[tuple[int, Verdict]]] = {}
        for (index, _, end), verdict in zip(spans, judged, strict=True):
            verdicts.setdefault(index, []).append((end, verdict))
        candidates = []
        for index, h in sorted(self._held.items()):
            if h.closed:
                continue
            candidate = h.judged(index, verdicts.get(index, []), final=final)
            if candidate is not None:
                candidates.append(candidate)
        return candidates


@dataclass(slots=True)
class _Held:
    """What the safety stage holds of one candidate until it is rated."""

    parts: list[gc.Part] = field(default_factory=list)  # not yet sent
    seen: str = ""  # all it said so far, as rated (`_said`)
    answer: str = ""  # all of its answer text so far (thoughts and calls left out)
    rated: int = 0  # characters of `seen` rated, and so free to send
    sent: int = 0  # characters of `seen` sent
    logprobs: list[gc.LogprobsResult] = field(default_factory=list)
    last: gc.Candidate | None = None  # its latest candidate as the backend sent it
    verdict: Verdict = field(default_factory=Verdict)
    finished: bool = False  # the backend ended it
    closed: bool = False  # its end (or its block) was sent
    blocked: bool = False

    def add(self, candidate: gc.Candidate) -> None:
        if self.closed:
            return  # blocked: the rest of it is dropped
        parts = candidate.content_parts()
        self.parts += parts
        self.seen += "".join(map(_said, parts))
        self.answer += candidate.text()
        if candidate.logprobs_result is not None:
            self.logprobs.append(candidate.logprobs_result)
        self.last = candidate
        self.finished = self.finished or candidate.finish_reason is not None

    def windows(self, size: int, reach: int, *, final: bool) -> list[tuple[int, int]]:
        """The windows to rate now, as (start, end) in `seen`. Where they fall depends on the text
        alone, not on how it arrived: a window is cut at the last whitespace within `size`
        characters once more text follows it, and rated once `reach` characters more are there."""
        return _spans(self.seen, self.rated, size, reach=reach, done=self.finished or final)

    def judged(self, index: int, verdicts: list[tuple[int, Verdict]], *, final: bool) -> gc.Candidate | None:
        """The candidate to send once its due windows are judged (in order, up to the first that
        blocks): its block, or its rated parts and perhaps its end."""
        for end, verdict in verdicts:
            self.verdict = self.verdict.merge(verdict)
            if verdict.reason is not None:
                return self.block(index)
            self.rated = end
        return self.release(index, final=final)

    def release(self, index: int, *, final: bool) -> gc.Candidate | None:
        """The candidate to send with the parts whose answer text is rated, and the parts that need
        no rating before the first that is not."""
        out: list[gc.Part] = []
        budget = self.rated - self.sent
        while self.parts:
            part = self.parts[0]
            said = len(_said(part))
            if said <= budget:  # all it says is rated (a part that says nothing: at once)
                budget -= said
                out.append(self.parts.pop(0))
            else:
                if budget and part.text:  # a part cut at the window's end: its signature stays with its start
                    out.append(part.model_copy(update={"text": part.text[:budget]}))
                    self.parts[0] = part.model_copy(update={"text": part.text[budget:], "thought_signature": None})
                    budget = 0
                break
        self.sent = self.rated - budget
        ending = (self.finished or final) and not self.parts
        if not out and not ending:
            return None
        content = gc.Content(role="model", parts=out) if out else None
        if not ending:
            return gc.Candidate(index=index, content=content)
        self.closed = True
        last = self.last or gc.Candidate(index=index)
        return last.model_copy(
            update={
                "index": index,
                "content": content,
                "safety_ratings": self.verdict.safety_ratings(),
                "logprobs_result": _joined(self.logprobs),  # held to the end: they hold the tokens' text
            }
        )

    def block(self, index: int) -> gc.Candidate:
        self.parts, self.logprobs = [], []
        self.closed = self.blocked = True
        candidate = gc.Candidate(index=index)
        _apply(candidate, self.verdict)
        return candidate


def _said(part: gc.Part) -> str:
    """What a part says, as the safety settings and the blocklist rate it: its text (a thought's
    too), code execution's code or output, or a function call's string values (each ended by a
    newline; a streamed piece's end where its string ends; the arguments' keys are not read)."""
    if part.text:
        return part.text
    for written, field_name in ((part.executable_code, "code"), (part.code_execution_result, "output")):
        if written is not None and isinstance(written.get(field_name), str):  # code execution's code and output
            return f"{written[field_name]}\n"
    call = part.function_call
    if call is None:
        return ""
    if call.args:
        return "".join(f"{value}\n" for value in json_strings(call.args))
    return "".join(
        (arg.string_value or "") + ("" if arg.will_continue else "\n")
        for arg in call.partial_args or []
        if arg.string_value is not None
    )


def _joined(results: list[gc.LogprobsResult]) -> gc.LogprobsResult | None:
    if not results:
        return None
    return gc.LogprobsResult(
        chosen_candidates=[c for r in results for c in r.chosen_candidates or []],
        top_candidates=[c for r in results for c in r.top_candidates or []],
    )


def _counts_output(usage: gc.UsageMetadata | None) -> bool:
    return usage is not None and usage.candidates_token_count is not None


def _cut(text: str) -> str:
    """A window's text: up to its last whitespace (a word is never split between two windows)."""
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[: cut + 1] if cut > 0 else text


def _spans(text: str, start: int, size: int, *, reach: int = 0, done: bool = True) -> list[tuple[int, int]]:
    """The windows of `text` from `start`, as (start, end): each at most `size` characters, cut at
    whitespace once more text follows it; the last, the rest of a text that is `done`. A window
    that is not the text's last waits until `reach` more characters follow it."""
    spans = []
    while start < len(text):
        if len(text) - start > size:
            end = start + len(_cut(text[start : start + size]))
        elif done:
            end = len(text)
        else:
            break
        if not done and len(text) <= end + reach:
            break
        spans.append((start, end))
        start = end
    return spans


def _windows(text: str, size: int) -> list[str]:
    """The whole text in windows of at most `size` characters, cut at whitespace where there is some."""
    return [text[start:end] for start, end in _spans(text, 0, size)]


def _apply(candidate: gc.Candidate, verdict: Verdict) -> None:
    candidate.safety_ratings = verdict.safety_ratings()
    if verdict.reason is not None:
        # Nothing of the blocked text stays: not its parts, its tokens, nor the sentences that
        # grounding metadata or any other field quotes.
        for name in list(candidate.model_extra or {}):
            delattr(candidate, name)
        candidate.content = None
        candidate.logprobs_result = None
        candidate.avg_logprobs = None
        candidate.grounding_metadata = None
        candidate.finish_reason = verdict.reason
        candidate.finish_message = _message("The answer", verdict)


def _message(what: str, verdict: Verdict) -> str:
    if verdict.reason == "BLOCKLIST":
        return f"{what} holds a term of this server's blocklist."
    named = ", ".join(sorted(verdict.blocked))
    return f"{what} was blocked by the safety settings ({named})."
