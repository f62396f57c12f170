"""Pure translation rules beyond the golden files: thought tags, schemas, error paths."""

from __future__ import annotations

from typing import Any

import pytest

from openvertex.errors import InvalidArgumentError
from openvertex.http.body import format_path, parse_json
from openvertex.protocol import chat_completions as oa
from openvertex.translate.request import chat_request_to_generate_content
from openvertex.translate.schema import check_not_recursive
from openvertex.translate.thoughts import split_tagged


def test_split_tagged_round_trips_vertex_format() -> None:
    assert split_tagged("<think>a\nb</think>\n\nanswer", "think") == [("a\nb", True), ("answer", False)]
    assert split_tagged("pre<m>x</m>mid<m>y</m>", "m") == [("pre", False), ("x", True), ("mid", False), ("y", True)]
    assert split_tagged("<think>unclosed", "think") == [("<think>unclosed", False)]
    assert split_tagged("no tags", "think") == [("no tags", False)]


@pytest.mark.parametrize(
    "schema",
    [
        {"$ref": "#"},
        {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"properties": {"x": {"$ref": "#/$defs/a"}}}}, "$ref": "#/$defs/a"},
        {
            "definitions": {"n": {"type": "array", "items": {"$ref": "#/definitions/n"}}},
            "properties": {"n": {"$ref": "#/definitions/n"}},
        },
    ],
)
def test_recursive_schemas_are_rejected(schema: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError, match="recursive"):
        check_not_recursive(schema, param="response_format.json_schema.schema")


def test_shared_non_recursive_refs_are_fine() -> None:
    address = {"type": "object", "properties": {"city": {"type": "string"}}}
    schema = {
        "$defs": {"address": address},
        "properties": {"home": {"$ref": "#/$defs/address"}, "work": {"$ref": "#/$defs/address"}},
    }
    check_not_recursive(schema, param="p")
    with pytest.raises(InvalidArgumentError, match="does not resolve"):
        check_not_recursive({"$ref": "#/$defs/missing"}, param="p")


def test_error_paths_drop_union_labels() -> None:
    assert (
        format_path(("messages", 2, "content", "list[function-after[_has_payload(), ContentPart]]", 0, "text"))
        == "messages[2].content[0].text"
    )
    assert format_path(("tool_choice", "NamedToolChoice", "function")) == "tool_choice.function"
    assert format_path(("stop", "str")) == "stop"


def test_parse_names_the_deepest_problem() -> None:
    body = (
        b'{"messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": [{"type": "text", "text": 1}]}]}'
    )
    with pytest.raises(InvalidArgumentError) as raised:
        parse_json(body, oa.ChatCompletionRequest)
    assert raised.value.param == "messages[1].content[0].text"


def _translate(**fields: Any) -> dict[str, Any]:
    request = oa.ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **fields})
    return chat_request_to_generate_content(request).to_json_dict()


def test_extra_body_google_wins_over_top_level_google() -> None:
    translated = _translate(
        google={"thinking_config": {"thinking_budget": 1}},
        extra_body={"google": {"thinking_config": {"thinking_budget": 2}}},
    )
    assert translated["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2}


@pytest.mark.parametrize(
    ("effort", "budget"), [("none", 0), ("minimal", 1024), ("low", 1024), ("medium", 8192), ("high", 24576)]
)
def test_reasoning_effort_budgets(effort: str, budget: int) -> None:
    assert _translate(reasoning_effort=effort)["generationConfig"]["thinkingConfig"] == {"thinkingBudget": budget}


@pytest.mark.parametrize(
    ("choice", "mode"), [("none", "NONE"), ("auto", "AUTO"), ("required", "ANY"), ("validated", "VALIDATED")]
)
def test_tool_choice_modes(choice: str, mode: str) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert _translate(tools=tools, tool_choice=choice)["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


def test_an_answers_call_ids_come_from_its_own_response_id() -> None:
    """A replayed answer (same responseId) translates to the same ids; one without an id gets new ones."""
    from openvertex.protocol import generate_content as gc
    from openvertex.translate.context import ResponseContext
    from openvertex.translate.response import generate_content_to_completion

    def answer(response_id: str | None) -> gc.GenerateContentResponse:
        calls = [gc.Part(function_call=gc.FunctionCall(name="f", args={"n": n})) for n in range(2)]
        content = gc.Content(role="model", parts=calls)
        return gc.GenerateContentResponse(candidates=[gc.Candidate(content=content)], response_id=response_id)

    def ids(response_id: str | None) -> list[str]:
        completion = generate_content_to_completion(answer(response_id), ResponseContext(model="m"))
        return [call.id for call in completion.choices[0].message.tool_calls or []]

    first = ids("resp-1")
    assert first == ids("resp-1") and len(set(first)) == 2
    assert all(call_id.startswith("function-call-") for call_id in first)
    assert set(first).isdisjoint(ids("resp-2"))
    assert ids(None) != ids(None)
