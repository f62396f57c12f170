"""Thinking on the real embedded model (a prompted reasoning phase), through the openai SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

MODEL = "google/gemini-2.5-flash"
QUESTION = [{"role": "user", "content": "Is 17 a prime number? Answer yes or no."}]
# Something the model reasons about at length, so a budget has to cut it short.
TRIP = [{"role": "user", "content": "Plan a three-day trip to Rome with a budget of 500 euros."}]


def _google(**fields: Any) -> dict[str, Any]:
    return {"extra_body": {"google": fields}}


def test_the_vertex_docs_request_streams_tagged_thoughts_then_the_answer(client: openai.OpenAI) -> None:
    # The Vertex docs' example, with max_tokens to keep a 135M model's reasoning short.
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        max_tokens=160,
        seed=1,
        extra_body=_google(
            thinking_config={"include_thoughts": True, "thinking_budget": 10000}, thought_tag_marker="think"
        ),
    )
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(contents)
    assert contents[0].startswith("<think>")  # the opening tag rides with the first thought
    assert text.count("<think>") == 1 and text.count("</think>\n\n") == 1
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert 0 < (usage.completion_tokens_details.reasoning_tokens or 0) <= 10000
    assert (
        usage.total_tokens
        == usage.prompt_tokens + usage.completion_tokens + usage.completion_tokens_details.reasoning_tokens
    )  # type: ignore[operator]


@pytest.mark.parametrize("budget", [0, 64, 256])
def test_reasoning_tokens_stay_within_the_budget(client: openai.OpenAI, budget: int) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=TRIP,  # type: ignore[arg-type]
        max_tokens=400,
        seed=2,
        extra_body=_google(thinking_config={"thinking_budget": budget, "include_thoughts": True}),
    )
    usage = completion.usage
    assert usage is not None
    reasoning = (usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0) or 0
    assert reasoning <= budget
    assert (reasoning > 0) == (budget > 0)
    assert usage.completion_tokens > 0  # an answer follows the reasoning
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens + reasoning


def test_a_budget_that_runs_out_closes_the_reasoning_and_the_answer_follows(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=TRIP,  # type: ignore[arg-type]
        max_tokens=200,
        seed=1,
        extra_body=_google(thinking_config={"thinking_budget": 16, "include_thoughts": True}, thought_tag_marker="t"),
    )
    usage = completion.usage
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 16  # cut at the budget, not before
    content = completion.choices[0].message.content or ""
    thoughts, answer = content.removeprefix("<t>").split("</t>\n\n")
    assert thoughts.strip() and answer.strip()


@pytest.mark.parametrize(("effort", "budget"), [("none", 0), ("low", 1024), ("medium", 8192), ("high", 24576)])
def test_reasoning_effort_levels(client: openai.OpenAI, effort: str, budget: int) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        reasoning_effort=effort,  # type: ignore[arg-type]
        max_tokens=120,
        seed=3,
    )
    usage = completion.usage
    assert usage is not None
    reasoning = (usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else 0) or 0
    assert reasoning <= budget
    assert (reasoning > 0) == (budget > 0)
    assert usage.completion_tokens + reasoning <= 120  # max_tokens counts the thinking too, as on Vertex


def test_both_knobs_are_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,  # type: ignore[arg-type]
            reasoning_effort="low",
            extra_body=_google(thinking_config={"thinking_budget": 64}),
        )
    assert "cannot be used together" in raised.value.response.json()[0]["error"]["message"]


def test_untagged_thoughts_are_flagged_in_the_stream(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        stream=True,
        max_tokens=200,
        seed=4,
        extra_body=_google(thinking_config={"include_thoughts": True, "thinking_budget": 48}),
    )
    deltas = [c.choices[0].delta for c in stream if c.choices]
    flagged = [d for d in deltas if (d.model_extra or {}).get("extra_content", {}).get("google", {}).get("thought")]
    assert flagged and all(d.content for d in flagged)
    assert "<think>" not in "".join(d.content or "" for d in deltas)
    answer = [d for d in deltas if d.content and d not in flagged]
    assert answer and deltas.index(answer[0]) > deltas.index(flagged[-1])  # thoughts come first


def test_thoughts_are_only_returned_when_asked(client: openai.OpenAI) -> None:
    hidden = client.chat.completions.create(
        model=MODEL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=200,
        seed=5,
        extra_body=_google(thinking_config={"thinking_budget": 48}, thought_tag_marker="think"),
    )
    assert hidden.usage is not None and hidden.usage.completion_tokens_details is not None
    assert hidden.usage.completion_tokens_details.reasoning_tokens
    assert "<think>" not in (hidden.choices[0].message.content or "")


def test_tagged_thoughts_sent_back_are_thoughts_again(client: openai.OpenAI) -> None:
    marker = _google(thought_tag_marker="think")
    history = [
        *QUESTION,
        {"role": "assistant", "content": "<think>17 has no divisors but 1 and itself.</think>\n\nYes."},
        {"role": "user", "content": "And 21?"},
    ]
    tagged = client.chat.completions.create(model=MODEL, messages=history, max_tokens=1, extra_body=marker)  # type: ignore[arg-type]
    untagged = client.chat.completions.create(model=MODEL, messages=history, max_tokens=1)  # type: ignore[arg-type]
    # Same text either way; with the marker it is split into a thought and the answer, and the
    # thought of a turn already answered stays out of the prompt, as reasoning templates do.
    assert tagged.usage is not None and untagged.usage is not None
    assert tagged.usage.prompt_tokens < untagged.usage.prompt_tokens
