"""Engine events → GenerateContentResponse chunks: text, thoughts and function calls per candidate,
logprobs, and the usage so far on every chunk."""

from __future__ import annotations

import itertools
from dataclasses import replace

from openvertex.backends.local.calls import CallReader, FunctionCalling
from openvertex.backends.local.jobs import CandidateDone, Event, TextDelta, TokenLogprob
from openvertex.protocol import generate_content as gc


class ChunkBuilder:
    """One job's answer: each event becomes a chunk carrying the usage so far."""

    def __init__(
        self,
        *,
        model: str,
        prompt_tokens: int,
        candidates: int,
        tools: FunctionCalling | None,
        streaming: bool,
        min_reused: int = 0,
    ) -> None:
        """`min_reused`: the fewest prompt tokens whose KV was reused that usage reports as cached
        (Gemini reports implicit cache hits only from its minimum cacheable size)."""
        self._model, self._prompt_tokens = model, prompt_tokens
        self._min_reused = min_reused
        # Arguments arrive in pieces only in a stream that asked for them (spec §3.5).
        self._readers = (
            [
                CallReader(
                    stream_arguments=streaming and tools.stream_arguments,
                    names=frozenset(d.name for d in tools.allowed),
                    forced=not tools.lazy,
                    one_call=tools.one_call,
                )
                for _ in range(candidates)
            ]
            if tools is not None
            else None
        )
        self._cached: int | None = None  # prompt tokens reported as reused, once known
        self._counts: dict[int, tuple[int, int]] = {}  # per candidate: answer and reasoning tokens so far

    def settled(self, candidate: int) -> bool:
        """The candidate's answer is complete though it decodes on: a forced call repeated, or the
        one call allowed was made."""
        return self._readers is not None and self._readers[candidate].settled

    def end(self, candidate: int) -> gc.GenerateContentResponse:
        """The last chunk of a settled candidate whose decoding is stopped here."""
        tokens, thoughts = self._counts.get(candidate, (0, 0))
        return self.feed(CandidateDone(candidate, "STOP", tokens, _UNKNOWN_REUSE, thoughts))

    def feed(self, event: TextDelta | CandidateDone) -> gc.GenerateContentResponse:
        if isinstance(event, CandidateDone):
            self._counts[event.candidate] = (event.tokens, event.thought_tokens)
            # The first candidate's reuse is the prompt's: a later wave's reuses the first wave's KV.
            if self._cached is None and event.cached_tokens != _UNKNOWN_REUSE:
                self._cached = event.cached_tokens if event.cached_tokens >= self._min_reused else 0
        else:
            self._counts[event.candidate] = (event.tokens, event.thoughts)
        # Every chunk has the usage so far, as Gemini's do: a stream cut short (a client that
        # left, a blocked answer) is still counted.
        generated, thoughts = map(sum, zip(*self._counts.values(), strict=True))
        usage = usage_metadata(self._prompt_tokens, generated, self._cached or 0, thoughts)
        made = parts(event, self._readers)
        if isinstance(event, TextDelta) and event.logprobs and self.settled(event.candidate):
            event = replace(event, logprobs=())  # tokens of text that is dropped
        if isinstance(event, CandidateDone):
            event = self._finish_reason(event)
        return chunk(event, made, self._model, usage)

    def _finish_reason(self, done: CandidateDone) -> CandidateDone:
        """A candidate whose complete calls end its answer finished (STOP), though the limit cut
        off a further call nobody saw (or, settled, text that is dropped): only an announced call
        cut midway is MAX_TOKENS."""
        reader = self._readers[done.candidate] if self._readers is not None else None
        if reader is None or done.finish_reason != "MAX_TOKENS" or reader.cut:
            return done
        if reader.settled or (reader.forced and reader.calls):
            return replace(done, finish_reason="STOP")
        return done


_UNKNOWN_REUSE = -1  # a candidate ended here, before the engine said how much of the prompt it reused


def usage_metadata(prompt_tokens: int, generated: int, cached: int, thoughts: int) -> gc.UsageMetadata:
    return gc.UsageMetadata(
        prompt_token_count=prompt_tokens,
        cached_content_token_count=cached or None,
        candidates_token_count=generated,
        thoughts_token_count=thoughts or None,
        total_token_count=prompt_tokens + generated + thoughts,
        traffic_type="ON_DEMAND",
    )


def logprobs_result(logprobs: tuple[TokenLogprob, ...]) -> gc.LogprobsResult | None:
    if not logprobs:
        return None

    def candidate(token_id: int, token: str, logprob: float) -> gc.LogprobsCandidate:
        return gc.LogprobsCandidate(token=token, token_id=token_id, log_probability=logprob)

    return gc.LogprobsResult(
        chosen_candidates=[candidate(lp.token_id, lp.token, lp.logprob) for lp in logprobs],
        top_candidates=[gc.TopCandidates(candidates=[candidate(*top) for top in lp.top]) for lp in logprobs],
    )


def parts(event: TextDelta | CandidateDone, readers: list[CallReader] | None) -> list[gc.Part]:
    reader = readers[event.candidate] if readers is not None else None
    if isinstance(event, CandidateDone):
        return reader.finish() if reader is not None else []
    if event.thought:
        return [gc.Part(text=event.text, thought=True)] if event.text else []
    if reader is not None:
        return reader.feed(event.text)
    return [gc.Part(text=event.text)] if event.text else []


def chunk(
    event: TextDelta | CandidateDone, parts: list[gc.Part], model: str, usage: gc.UsageMetadata | None
) -> gc.GenerateContentResponse:
    if isinstance(event, TextDelta):
        candidate = gc.Candidate(
            index=event.candidate,
            content=gc.Content(role="model", parts=parts),
            logprobs_result=logprobs_result(event.logprobs),
        )
    else:
        # Gemini's last chunk keeps its content, without parts where nothing is left to say
        # (`{"role": "model"}`): a client reading `candidates[0].content.parts` finds it.
        content = gc.Content(role="model", parts=parts)
        candidate = gc.Candidate(index=event.candidate, content=content, finish_reason=event.finish_reason)
    return gc.GenerateContentResponse(candidates=[candidate], usage_metadata=usage, model_version=model)


def merge_text(events: list[Event]) -> list[Event]:
    """Runs of text for the same candidate and kind become one delta (joined once: linear)."""
    merged: list[Event] = []
    for key, run in itertools.groupby(events, key=_text_run):
        if key is None:
            merged.extend(run)
            continue
        deltas = [event for event in run if isinstance(event, TextDelta)]
        if len(deltas) == 1:  # the common case while the reader keeps up: nothing to join
            merged.append(deltas[0])
            continue
        text = "".join(delta.text for delta in deltas)
        logprobs = tuple(logprob for delta in deltas for logprob in delta.logprobs)
        last = deltas[-1]
        merged.append(TextDelta(last.candidate, text, logprobs, last.thought, last.tokens, last.thoughts))
    return merged


def _text_run(event: Event) -> tuple[int, bool] | None:
    return (event.candidate, event.thought) if isinstance(event, TextDelta) else None
