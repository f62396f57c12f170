"""Function calling the Vertex way on the real embedded model, through the openai SDK."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.support.server import RunningServer

MODEL = "google/gemini-3-flash-preview"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather in a given location",
        "parameters": WEATHER_PARAMETERS,
    },
}
TIME_PARAMETERS = {
    "type": "OBJECT",  # Gemini's OpenAPI spelling is accepted too
    "properties": {"timezone": {"type": "STRING"}, "format": {"type": "STRING", "enum": ["12h", "24h"]}},
    "required": ["timezone", "format"],
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": TIME_PARAMETERS}}
TWO_CITIES = [{"role": "user", "content": "What's the weather like in Boston and in San Francisco?"}]
STREAM_ARGUMENTS = {"extra_body": {"google": {"stream_function_call_arguments": True}}}


def _json_schema(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: (v.lower() if k == "type" else _json_schema(v)) for k, v in schema.items()}
    return schema


def _check_calls(calls: list[Any], schemas: dict[str, Any]) -> None:
    assert calls
    for call in calls:
        assert call.id.startswith("function-call-")
        assert call.function.name in schemas
        arguments = json.loads(call.function.arguments)
        assert call.function.arguments == json.dumps(arguments, separators=(",", ":"))  # compact
        jsonschema.validate(arguments, _json_schema(schemas[call.function.name]))


def test_weather_in_two_cities_with_streamed_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        stream=True,
        seed=0,
        max_tokens=200,
        extra_body=STREAM_ARGUMENTS,
    )
    fragments: dict[str, list[Any]] = {}
    finish_reasons = []
    for chunk in stream:
        for choice in chunk.choices:
            finish_reasons.append(choice.finish_reason)
            for call in choice.delta.tool_calls or []:
                assert call.id and call.type == "function" and call.function and call.function.name
                fragments.setdefault(call.id, []).append(call)
    assert finish_reasons[-1] == "tool_calls"
    assert len(fragments) == 2, fragments  # one call per city
    for position, pieces in enumerate(fragments.values()):
        assert {p.index for p in pieces} == {position}  # one stable index per call
        assert len(pieces) > 2  # really in pieces
        first_extra = (pieces[0].model_extra or {}).get("extra_content")
        assert bool(first_extra) == (position == 0)  # only the step's first call is signed
    calls = [
        openai.types.chat.ChatCompletionMessageToolCall(
            id=call_id,
            type="function",
            function={"name": pieces[0].function.name, "arguments": "".join(p.function.arguments for p in pieces)},
        )
        for call_id, pieces in fragments.items()
    ]
    _check_calls(calls, {"get_current_weather": WEATHER_PARAMETERS})
    cities = " ".join(json.loads(c.function.arguments)["location"] for c in calls)
    assert "Boston" in cities and "San Francisco" in cities


def test_without_the_flag_each_call_arrives_whole(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,
        tools=[WEATHER],
        tool_choice="required",
        stream=True,
        seed=0,
        max_tokens=200,  # type: ignore[arg-type, list-item]
    )
    deltas = [call for chunk in stream for choice in chunk.choices for call in choice.delta.tool_calls or []]
    assert len({d.id for d in deltas}) == len(deltas) == 2
    assert [d.index for d in deltas] == [0, 1]
    _check_calls(deltas, {"get_current_weather": WEATHER_PARAMETERS})


def test_twenty_forced_calls_are_all_valid(client: openai.OpenAI) -> None:
    schemas = {"get_current_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
    for seed in range(20):
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What time is it in Tokyo, and is it raining there?"}],
            tools=[WEATHER, TIME],  # type: ignore[list-item]
            tool_choice="required",
            seed=seed,
            max_tokens=300,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        _check_calls(choice.message.tool_calls or [], schemas)


def test_named_function_and_validated_always_call_what_is_allowed(client: openai.OpenAI) -> None:
    named = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,  # type: ignore[arg-type]
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=200,
    )
    calls = named.choices[0].message.tool_calls or []
    assert {c.function.name for c in calls} == {"get_time"}
    _check_calls(calls, {"get_time": TIME_PARAMETERS})
    validated = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,
        tools=[WEATHER],
        tool_choice="validated",
        max_tokens=200,  # type: ignore[arg-type, list-item]
    )
    _check_calls(validated.choices[0].message.tool_calls or [], {"get_current_weather": WEATHER_PARAMETERS})


def test_none_never_calls_and_auto_answers_in_text_or_valid_calls(client: openai.OpenAI) -> None:
    for seed in range(3):
        none = client.chat.completions.create(
            model=MODEL,
            messages=TWO_CITIES,
            tools=[WEATHER],
            tool_choice="none",
            seed=seed,
            max_tokens=40,  # type: ignore[arg-type, list-item]
        )
        assert none.choices[0].message.tool_calls is None
        assert none.choices[0].message.content
        auto = client.chat.completions.create(
            model=MODEL,
            messages=TWO_CITIES,
            tools=[WEATHER],
            seed=seed,
            max_tokens=120,  # type: ignore[arg-type, list-item]
        )
        message = auto.choices[0].message
        if message.tool_calls:
            assert auto.choices[0].finish_reason == "tool_calls"
            _check_calls(message.tool_calls, {"get_current_weather": WEATHER_PARAMETERS})
        else:
            assert message.content


def _results(message: Any) -> list[dict[str, Any]]:
    return [
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "unit": "celsius"})}
        for call in message.tool_calls
    ]


def test_three_turns_round_trip_signatures_through_the_sdk_objects(client: openai.OpenAI) -> None:
    messages: list[Any] = list(TWO_CITIES)
    first = client.chat.completions.create(
        model=MODEL, messages=messages, tools=[WEATHER, TIME], tool_choice="required", seed=1, max_tokens=200
    )
    messages += [first.choices[0].message, *_results(first.choices[0].message)]  # the SDK's own object
    second = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=200,
    )
    messages += [second.choices[0].message, *_results(second.choices[0].message)]
    third = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER, TIME], max_tokens=60)
    assert third.choices[0].finish_reason in ("stop", "length", "tool_calls")
    text_signature = (third.choices[0].message.model_extra or {}).get("extra_content")
    if third.choices[0].message.tool_calls is None:
        assert text_signature["google"]["thought_signature"]  # type: ignore[index]
    messages += [third.choices[0].message, {"role": "user", "content": "Thanks!"}]
    fourth = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10)
    assert fourth.choices[0].message.content


def _replayed(client: openai.OpenAI, signature: Any) -> list[dict[str, Any]]:
    """A call of the current turn replayed by hand, with `signature` as its extra_content."""
    completion = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,
        tools=[WEATHER],
        tool_choice="required",
        seed=2,
        max_tokens=200,  # type: ignore[arg-type, list-item]
    )
    message = completion.choices[0].message.model_dump(exclude_none=True)
    original = message["tool_calls"][0].pop("extra_content")["google"]["thought_signature"]
    if signature is not None:
        value = signature(original) if callable(signature) else signature
        message["tool_calls"][0]["extra_content"] = {"google": {"thought_signature": value}}
    return [*TWO_CITIES, message, *_results(completion.choices[0].message)]


def _tampered(signature: str) -> str:
    return signature[:5] + ("A" if signature[5] != "A" else "B") + signature[6:]


@pytest.mark.parametrize(
    ("signature", "message"),
    [
        (
            None,
            "function call `default_api:get_current_weather` in the 2. content block is missing a `thought_signature`",
        ),
        (_tampered, "Unable to submit request because Thought signature is not valid."),
        (
            "Zm9yZWlnbiBzaWduYXR1cmUgZnJvbSBlbHNld2hlcmU=",
            "Unable to submit request because Thought signature is not valid.",
        ),
    ],
)
def test_missing_tampered_and_foreign_signatures_are_refused(
    client: openai.OpenAI, signature: Any, message: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL, messages=_replayed(client, signature), tools=[WEATHER], max_tokens=5
        )  # type: ignore[list-item]
    body = raised.value.response.json()
    assert body[0]["error"]["status"] == "INVALID_ARGUMENT"
    assert message in body[0]["error"]["message"]


def test_a_gemini_2_call_needs_no_signature(client: openai.OpenAI) -> None:
    # Clients that drop extra_content (LangChain's ChatOpenAI, LlamaIndex's OpenAILike) send the
    # call back bare: Vertex enforces signatures for Gemini 3 only, and so does openvertex.
    messages = _replayed(client, None)
    completion = client.chat.completions.create(
        model="google/gemini-2.0-flash-001", messages=messages, tools=[WEATHER], max_tokens=5
    )  # type: ignore[list-item]
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tampered = _replayed(client, _tampered)
    with pytest.raises(openai.BadRequestError) as raised:  # a wrong one still is not
        client.chat.completions.create(
            model="google/gemini-2.0-flash-001", messages=tampered, tools=[WEATHER], max_tokens=5
        )  # type: ignore[list-item]
    assert "Thought signature is not valid" in raised.value.response.json()[0]["error"]["message"]


def test_the_dummy_signature_is_accepted(client: openai.OpenAI) -> None:
    messages = _replayed(client, "skip_thought_signature_validator")
    completion = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER], max_tokens=5)  # type: ignore[list-item]
    assert completion.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_multimodal_function_response_is_accepted(local_server: RunningServer) -> None:
    # The Vertex docs' example: a tool returns an image by reference (spec §2.2).
    body = {
        "model": MODEL,
        "max_tokens": 20,
        "messages": [
            {"role": "user", "content": "Show me the green dress."},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "function-call-1",
                        "type": "function",
                        "function": {"name": "get_image", "arguments": '{"item":"green dress"}'},
                        "extra_content": {"google": {"thought_signature": "skip_thought_signature_validator"}},
                    }
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "function-call-1",
                "content": '{"image_ref":{"$ref":"dress.jpg"}}',
                "extra_content": {
                    "google": {
                        "parts": [
                            {
                                "file_data": {
                                    "mime_type": "image/jpeg",
                                    "display_name": "dress.jpg",
                                    "file_uri": "gs://cloud-samples-data/generative-ai/image/dress.jpg",
                                }
                            }
                        ]
                    }
                },
            },
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_image",
                    "parameters": {"type": "object", "properties": {"item": {"type": "string"}}},
                },
            }
        ],
    }
    response = httpx.post(local_server.chat_url, json=body, headers={"Authorization": "Bearer t"}, timeout=60)
    assert response.status_code == 200, response.text


def test_deprecated_functions_and_function_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,  # type: ignore[arg-type]
        functions=[WEATHER["function"]],  # type: ignore[list-item]
        function_call={"name": "get_current_weather"},
        max_tokens=200,
    )
    _check_calls(completion.choices[0].message.tool_calls or [], {"get_current_weather": WEATHER_PARAMETERS})


def test_results_must_answer_every_call_of_the_step(client: openai.OpenAI) -> None:
    skip = {"google": {"thought_signature": "skip_thought_signature_validator"}}
    calls = [
        {
            "id": f"call_{city}",
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": json.dumps({"location": city})},
            "extra_content": skip,
        }
        for city in ("Boston", "San Francisco")
    ]
    answered = {"role": "tool", "tool_call_id": "call_Boston", "content": json.dumps({"temperature": 21})}
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(
            model=MODEL,
            messages=[
                *TWO_CITIES,
                {"role": "assistant", "tool_calls": calls},
                answered,
                {"role": "user", "content": "hm"},
            ],  # type: ignore[list-item]
            max_tokens=5,
        )
    error = raised.value.response.json()[0]["error"]
    assert "number of function response parts is equal to the number of function call parts" in error["message"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_forced_call_ends_the_turn_when_it_is_complete(client: openai.OpenAI, seed: int) -> None:
    # SmolLM2 under a forced call calls again and again; a repeat ends the turn, the limit never
    # leaves a cut call beside complete ones, and no call text reaches the content.
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather like in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=64,
        seed=seed,
    )  # type: ignore[list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert calls and len({(c.function.name, c.function.arguments) for c in calls}) == len(calls)  # none repeated
    _check_calls(calls, {"get_current_weather": WEATHER_PARAMETERS})


def test_a_stop_sequence_never_cuts_a_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What's the weather like in Paris?"}],
        tools=[WEATHER],
        tool_choice="required",
        stop=["\n"],  # the call format has newlines inside its block
        max_tokens=64,
        seed=4,
    )  # type: ignore[list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    _check_calls(choice.message.tool_calls, {"get_current_weather": WEATHER_PARAMETERS})


def test_parallel_tool_calls_false_makes_one_call(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=TWO_CITIES,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=0,
        max_tokens=200,
    )  # type: ignore[list-item]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or []) == 1
