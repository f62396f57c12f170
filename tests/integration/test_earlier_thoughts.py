"""Earlier thoughts on the real engine: the current turn's go back into the prompt while they
fit; those of turns the user already answered never do, so thinking turns cannot fill the context."""

from __future__ import annotations

from typing import Any

import openai

MODEL = "google/gemini-2.5-flash"
MARKER = {"google": {"thought_tag_marker": "t"}}  # tagged assistant text goes back as thoughts
LONG = "Let me check each divisor carefully before I answer. " * 120  # about 1,300 tokens
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}


def _prompt_tokens(client: openai.OpenAI, messages: list[dict[str, Any]], **fields: Any) -> int:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
        extra_body=MARKER,
        **fields,
    )
    assert completion.usage is not None
    return completion.usage.prompt_tokens


def test_thoughts_of_answered_turns_stay_out_of_the_prompt(client: openai.OpenAI) -> None:
    thought: list[dict[str, Any]] = []
    plain: list[dict[str, Any]] = []
    for number in (15, 21, 33, 35):  # four turns of 1,300 thought tokens: more than the context
        question = {"role": "user", "content": f"Is {number} prime?"}
        thought += [question, {"role": "assistant", "content": f"<t>{LONG}</t>\n\nNo."}]
        plain += [question, {"role": "assistant", "content": "No."}]
    follow_up = {"role": "user", "content": "And 37?"}
    assert _prompt_tokens(client, [*thought, follow_up]) == _prompt_tokens(client, [*plain, follow_up])


def _tool_turn(thought: str | None) -> list[dict[str, Any]]:
    call = {
        "id": "call-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        "extra_content": {"google": {"thought_signature": "skip_thought_signature_validator"}},
    }
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": f"<t>{thought}</t>\n\n" if thought else None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": '{"temp": 21}'},
    ]


def test_the_current_turns_thoughts_go_back_while_they_fit(client: openai.OpenAI) -> None:
    without = _prompt_tokens(client, _tool_turn(None), tools=[WEATHER])
    assert _prompt_tokens(client, _tool_turn("Paris: call get_weather."), tools=[WEATHER]) > without
    # Three times the context: left out rather than refused.
    assert _prompt_tokens(client, _tool_turn(LONG * 10), tools=[WEATHER]) == without


def test_a_signature_gives_back_its_thoughts_only_while_its_turn_lasts(client: openai.OpenAI) -> None:
    question = {"role": "user", "content": "What is the weather in Paris?"}
    first = client.chat.completions.create(
        model=MODEL,
        messages=[question],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=120,
        seed=3,
        extra_body={"google": {"thinking_config": {"thinking_budget": 48}}},
    )
    assert first.usage is not None and first.usage.completion_tokens_details is not None
    reasoning = first.usage.completion_tokens_details.reasoning_tokens or 0
    called = first.choices[0].message
    assert reasoning > 0 and called.tool_calls
    unsigned = called.model_dump(exclude_none=True)  # the same call, its thoughts not sealed with it
    unsigned["tool_calls"][0]["extra_content"] = {"google": {"thought_signature": "skip_thought_signature_validator"}}
    result = {"role": "tool", "tool_call_id": called.tool_calls[0].id, "content": '{"temp": 21}'}
    restored = _prompt_tokens(client, [question, called, result], tools=[WEATHER])  # type: ignore[list-item]
    plain = _prompt_tokens(client, [question, unsigned, result], tools=[WEATHER])
    assert restored - plain >= reasoning // 2  # the turn is still calling: its reasoning is back
    after = [result, {"role": "assistant", "content": "It is 21 degrees."}, {"role": "user", "content": "Thanks!"}]
    answered = _prompt_tokens(client, [question, called, *after], tools=[WEATHER])  # type: ignore[list-item]
    assert answered == _prompt_tokens(client, [question, unsigned, *after], tools=[WEATHER])
