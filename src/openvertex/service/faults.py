"""Gemini's failures, injected on purpose so a client's retry and streaming code can be tested
against them: by rule (settings `faults`: a model glob, a key, a sequence or a probability) or, when
`faults_from_header` allows it, by the request's own `x-openvertex-fault` header.

A fault is drawn once a request's model and key are known (`Faults.draw`). The errors Gemini
answers before anything is sent (429, 503, 500, 504) are raised there (`before_answer`), before the
backend is asked; the others change the answer as it goes out (`FaultStage`, the pipeline's last
response stage), streamed or whole alike:

    stream_error     after `after_chunks` chunks, a 500 INTERNAL error event (a whole answer: the error)
    slow_first_byte  `delay_s` before the first chunk (a whole answer: before it)
    slow_chunks      `delay_s` before each chunk after the first (a whole answer, one chunk: none)
    cut              after `after_chunks` chunks the connection drops (`ConnectionCut`, let through to
                     the HTTP edge, which ends the response without its end; a whole answer: mid-body)
    safety           after `after_chunks` chunks the answer is blocked: finishReason SAFETY and its
                     ratings, as the safety stage blocks one (a whole answer: all of it)

The delays run inside the request's deadline, as a slow model's would.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import get_args

from openvertex.errors import (
    ApiError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from openvertex.protocol import generate_content as gc
from openvertex.service.safety import Verdict
from openvertex.settings import FaultKind, FaultRule

log = logging.getLogger(__name__)

HEADER = "x-openvertex-fault"
KINDS: tuple[str, ...] = get_args(FaultKind)
# What an embedding request can be given: it has no chunks and no answer to block.
EMBEDDING_KINDS = frozenset({"429", "503", "500", "deadline", "slow_first_byte"})

# Gemini's own wording of each error (as its APIs answer them).
_RESOURCE_EXHAUSTED = (
    "Resource exhausted. Please try again later. Please refer to "
    "https://cloud.google.com/vertex-ai/generative-ai/docs/error-code-429 for more details."
)
_UNAVAILABLE = "The model is overloaded. Please try again later."
_INTERNAL = "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting"
_DEADLINE = "Deadline expired before operation could complete."
_BLOCKED_CATEGORY = "HARM_CATEGORY_DANGEROUS_CONTENT"


class ConnectionCut(Exception):
    """The connection is to drop without the response's end: the HTTP edge lets it through."""


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    after_chunks: int = 1
    delay_s: float = 1.0
    retry_after_s: float = 1.0

    @classmethod
    def of_rule(cls, kind: FaultKind, rule: FaultRule) -> Fault:
        return cls(kind, rule.after_chunks, rule.delay_s, rule.retry_after_s)


# The fault a request asked for by its header, set by the HTTP edge for the request's task.
_requested: ContextVar[Fault | None] = ContextVar("openvertex_fault", default=None)


def request_fault(fault: Fault) -> Token[Fault | None]:
    return _requested.set(fault)


def end_request_fault(token: Token[Fault | None]) -> None:
    _requested.reset(token)


def refuse_requested_fault(why: str) -> None:
    """A 400 naming the header where a request asked for a fault that cannot be injected (`why`)."""
    if _requested.get() is not None:
        raise InvalidArgumentError(f"{why}: no fault is injected there", param=HEADER)


_HEADER_FORMAT = (
    f"{HEADER} must be `<kind>[;after_chunks=N][;delay_s=S][;retry_after_s=S]`, kind one of {', '.join(KINDS)}"
)
_NUMBER = re.compile(r"[0-9]{1,6}(\.[0-9]{1,6})?")
_LIMITS = {"after_chunks": 1e6, "delay_s": 600.0, "retry_after_s": 3600.0}


def parse_header(value: str) -> Fault:
    """The fault a header asks for; a 400 naming the header when it is not one."""
    kind, *options = (item.strip() for item in value.split(";"))
    if kind not in KINDS:
        raise InvalidArgumentError(f"unknown fault {kind[:32]!r}; {_HEADER_FORMAT}", param=HEADER)
    fault = Fault(kind)  # type: ignore[arg-type]  # checked against KINDS above
    for option in options:
        name, _, number = option.partition("=")
        name, number = name.strip(), number.strip()
        if name not in _LIMITS or not _NUMBER.fullmatch(number) or float(number) > _LIMITS[name]:
            raise InvalidArgumentError(f"bad option {option[:48]!r}; {_HEADER_FORMAT}", param=HEADER)
        if name == "after_chunks" and "." in number:
            raise InvalidArgumentError(f"after_chunks is a whole number, got {number!r}", param=HEADER)
        if name == "after_chunks":
            fault = replace(fault, after_chunks=int(number))
        elif name == "delay_s":
            fault = replace(fault, delay_s=float(number))
        else:
            fault = replace(fault, retry_after_s=float(number))
    return fault


class Faults:
    """The configured rules and their state: each sequence's place per key, each rule's draws."""

    def __init__(self, rules: Sequence[FaultRule] = ()) -> None:
        self.rules = list(rules)
        self._places: dict[tuple[int, str | None], int] = {}
        # A generator per rule and key, as sequences are: one client's draws never move another's,
        # so a seeded rule gives each key the same faults on every run whatever else runs.
        self._draws: dict[tuple[int, str | None], random.Random] = {}

    def draw(self, model: str, key: str | None) -> Fault | None:
        """The fault for a request of `model` (its routed id) by `key` (its name), if any: the
        header's, else the first matching rule's next one."""
        requested = _requested.get()
        if requested is not None:
            return None if requested.kind == "ok" else requested
        for index, rule in enumerate(self.rules):
            if _matches(rule, model, key):
                kind = self._next(index, rule, key)
                if kind != "ok":
                    log.info("injecting the fault %s (rule %d) for %s", kind, index, model)
                return None if kind == "ok" else Fault.of_rule(kind, rule)
        return None

    def draw_for_embedding(self, model: str, key: str | None) -> Fault | None:
        """As `draw`; a fault an embedding cannot have is a 400 when the header asked for it, and
        no fault when a rule drew it (the rule's other requests may be generations)."""
        fault = self.draw(model, key)
        if fault is None or fault.kind in EMBEDDING_KINDS:
            return fault
        if _requested.get() is not None:
            raise InvalidArgumentError(
                f"{fault.kind} does not apply to embeddings (they can have {', '.join(sorted(EMBEDDING_KINDS))})",
                param=HEADER,
            )
        return None

    def _next(self, index: int, rule: FaultRule, key: str | None) -> FaultKind:
        if rule.sequence is None:
            assert rule.fault is not None  # the rule's validator: one or the other
            draws = self._draws.get((index, key))
            if draws is None:
                seed = None if rule.seed is None else f"{rule.seed}/{key or ''}"
                draws = self._draws[(index, key)] = random.Random(seed)
            return rule.fault if draws.random() < rule.probability else "ok"
        place = self._places.get((index, key), 0)
        self._places[(index, key)] = place + 1
        if rule.repeat:
            place %= len(rule.sequence)
        return rule.sequence[place] if place < len(rule.sequence) else "ok"


def _matches(rule: FaultRule, model: str, key: str | None) -> bool:
    if rule.key is not None and rule.key != key:
        return False
    if rule.model is None:
        return True
    return fnmatchcase(model, rule.model) or fnmatchcase(model.rpartition("/")[2], rule.model)


async def before_answer(fault: Fault | None) -> None:
    """Raise the error a fault answers with before anything is sent (after its delay, for a deadline)."""
    if fault is None:
        return
    if fault.kind == "deadline":
        await asyncio.sleep(fault.delay_s)
        raise DeadlineExceededError(_DEADLINE)
    if fault.kind in ("429", "503", "500"):
        raise _error(fault)


def _error(fault: Fault) -> ApiError:
    error: ApiError
    if fault.kind == "429":
        error = ResourceExhaustedError(_RESOURCE_EXHAUSTED)
    elif fault.kind == "503":
        error = UnavailableError(_UNAVAILABLE)
    else:
        return InternalError(_INTERNAL)
    if fault.retry_after_s > 0:
        _retry_after(error, fault.retry_after_s)
    return error


def _retry_after(error: ApiError, seconds: float) -> None:
    """Retry-After (whole seconds, as HTTP has them) and Gemini's RetryInfo detail (exact); a
    fraction of a second also as `retry-after-ms`, which OpenAI's SDKs read first."""
    error.headers["Retry-After"] = str(math.ceil(seconds))
    if seconds != math.ceil(seconds):
        error.headers["retry-after-ms"] = f"{seconds * 1000:g}"
    error.details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds:g}s"}]


def stage_for(fault: Fault | None, *, streaming: bool) -> FaultStage | None:
    """The response stage a fault needs, if any."""
    if fault is None or fault.kind not in ("stream_error", "slow_first_byte", "slow_chunks", "cut", "safety"):
        return None
    return FaultStage(fault, streaming=streaming)


class FaultStage:
    """A fault applied to the chunks the client gets (the pipeline's last stage). A whole answer is
    one chunk, with no chunks before it: its fault replaces it."""

    def __init__(self, fault: Fault, *, streaming: bool) -> None:
        self._fault = fault
        self._after = fault.after_chunks if streaming else 0
        self._passed = 0
        self._usage: gc.UsageMetadata | None = None
        self._indexes: set[int] = set()  # the candidates of the answer so far
        self.stopped = False

    async def feed(self, chunk: gc.GenerateContentResponse) -> list[gc.GenerateContentResponse]:
        fault = self._fault
        first = self._passed == 0
        if (fault.kind == "slow_first_byte" and first) or (fault.kind == "slow_chunks" and not first):
            await asyncio.sleep(fault.delay_s)
        self._usage = chunk.usage_metadata or self._usage
        self._indexes.update(candidate.index or 0 for candidate in chunk.candidates or [])
        if fault.kind in ("stream_error", "cut") and self._passed >= self._after:
            return self._strike()
        if fault.kind == "safety" and (self._passed >= self._after or _ends(chunk)):
            return self._strike()  # at the latest instead of the chunk that ends the answer
        self._passed += 1
        return [chunk]

    async def finish(self) -> list[gc.GenerateContentResponse]:
        """An answer that ended before its fault struck gets it at its end."""
        if self._fault.kind in ("stream_error", "cut", "safety") and not self.stopped:
            return self._strike()
        return []

    def _strike(self) -> list[gc.GenerateContentResponse]:
        self.stopped = True
        kind = self._fault.kind
        log.debug("the fault %s strikes after %d chunks", kind, self._passed)
        if kind == "cut":
            raise ConnectionCut
        if kind == "stream_error":
            raise InternalError(_INTERNAL)
        return [_blocked(sorted(self._indexes) or [0], self._usage)]


def _ends(chunk: gc.GenerateContentResponse) -> bool:
    return any(candidate.finish_reason is not None for candidate in chunk.candidates or [])


def _blocked(indexes: list[int], usage: gc.UsageMetadata | None) -> gc.GenerateContentResponse:
    """The answer blocked as the safety stage blocks one: no content, finishReason SAFETY, the
    ratings with the blocking category's `blocked: true`."""
    verdict = Verdict({_BLOCKED_CATEGORY: 0.9}, "SAFETY", frozenset({_BLOCKED_CATEGORY}))
    candidates = [
        gc.Candidate(
            index=index,
            finish_reason="SAFETY",
            finish_message=f"The answer was blocked by the safety settings ({_BLOCKED_CATEGORY}).",
            safety_ratings=verdict.safety_ratings(),
        )
        for index in indexes
    ]
    return gc.GenerateContentResponse(candidates=candidates, usage_metadata=usage)
