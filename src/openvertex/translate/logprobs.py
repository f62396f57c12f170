"""Gemini logprobsResult → OpenAI choice.logprobs (chosen tokens with their top alternatives)."""

from __future__ import annotations

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc


def _top(candidate: gc.LogprobsCandidate) -> oa.TopLogprob:
    token = candidate.token or ""
    return oa.TopLogprob(token=token, logprob=candidate.log_probability or 0.0, bytes=list(token.encode()))


def logprobs_result_to_openai(result: gc.LogprobsResult | None) -> oa.ChoiceLogprobs | None:
    if result is None or result.chosen_candidates is None:
        return None
    tops = result.top_candidates or []
    content = []
    for position, chosen in enumerate(result.chosen_candidates):
        alternatives = tops[position].candidates or [] if position < len(tops) else []
        base = _top(chosen)
        content.append(oa.TokenLogprob(**base.model_dump(), top_logprobs=[_top(c) for c in alternatives]))
    return oa.ChoiceLogprobs(content=content)
