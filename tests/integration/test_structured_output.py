"""response_format on the real model: grammar-constrained decoding always yields valid JSON."""

from __future__ import annotations

import json

import jsonschema
import openai
from pydantic import BaseModel

MODEL = "google/gemini-2.5-flash"
EVENT = [
    {"role": "system", "content": "Extract the event information."},
    {"role": "user", "content": "Alice and Bob are going to a science fair on Friday."},
]


class CalendarEvent(BaseModel):
    name: str
    date: str
    participants: list[str]


def test_parse_with_pydantic_model_ten_times(client: openai.OpenAI) -> None:
    for seed in range(10):
        completion = client.chat.completions.parse(
            model=MODEL, messages=EVENT, response_format=CalendarEvent, seed=seed, max_tokens=200
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        assert isinstance(choice.message.parsed, CalendarEvent)


def test_beta_parse_as_in_the_vertex_docs(client: openai.OpenAI) -> None:
    completion = client.beta.chat.completions.parse(
        model=MODEL, messages=EVENT, response_format=CalendarEvent, max_tokens=200
    )
    assert isinstance(completion.choices[0].message.parsed, CalendarEvent)


SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "population": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["big", "small", "coastal"]}},
    },
    "required": ["city", "population", "tags"],
    "additionalProperties": False,
}


def test_json_schema_with_n_and_streaming(client: openai.OpenAI) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "City", "schema": SCHEMA}}
    messages = [{"role": "user", "content": "Describe Paris as JSON."}]
    result = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=response_format, n=3, seed=11, max_tokens=200
    )  # type: ignore[arg-type]
    for choice in result.choices:
        jsonschema.validate(json.loads(choice.message.content or ""), SCHEMA)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, response_format=response_format, n=2, seed=5, max_tokens=200, stream=True
    )  # type: ignore[arg-type]
    texts = ["", ""]
    for chunk in stream:
        texts[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)


def test_json_object_mode(client: openai.OpenAI) -> None:
    for seed in range(3):
        result = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a JSON object about a cat."}],
            response_format={"type": "json_object"},
            seed=seed,
            max_tokens=300,
        )
        assert result.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(result.choices[0].message.content or ""), dict)
