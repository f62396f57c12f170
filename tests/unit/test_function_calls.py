"""Reading calls out of generated text, and streamed arguments that concatenate exactly."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from openvertex.backends.local.calls import CallReader, json_path
from openvertex.backends.local.prompt import ChatTemplate, contents_to_messages
from openvertex.protocol import generate_content as gc
from openvertex.translate.arguments import compact_json, parse_json_path
from openvertex.translate.context import ResponseContext
from openvertex.translate.response import PartTranslator


def _random_value(rng: random.Random, depth: int) -> Any:
    kinds = ["string", "int", "float", "bool", "null"] + (["object", "array"] if depth < 3 else [])
    makers: dict[str, Any] = {
        "string": lambda: "".join(rng.choice('ab c"\\\n/é✓\t') for _ in range(rng.randint(0, 8))),
        "int": lambda: rng.randint(-1000, 1000),
        "float": lambda: rng.choice([0.5, -2.25, 1e-3, 3.0]),
        "bool": lambda: rng.random() < 0.5,
        "null": lambda: None,
        "array": lambda: [_random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
        "object": lambda: {
            f"k{i} {rng.choice(['', 'x', 'é'])}": _random_value(rng, depth + 1) for i in range(rng.randint(0, 3))
        },
    }
    return makers[rng.choice(kinds)]()


def _reassemble(text: str, step: int, *, stream_arguments: bool) -> tuple[list[gc.Part], dict[str, str]]:
    reader = CallReader(stream_arguments=stream_arguments)
    translator = PartTranslator(ResponseContext(model="m"))
    parts: list[gc.Part] = []
    arguments: dict[str, str] = {}
    for start in range(0, len(text), step):
        parts += reader.feed(text[start : start + step])
    parts += reader.finish()
    for part in parts:
        delta = translator.translate(part)
        for call in (delta.tool_calls or []) if delta is not None else []:
            arguments[call.id] = arguments.get(call.id, "") + call.function.arguments
    return parts, arguments


@pytest.mark.parametrize("seed", range(40))
def test_streamed_fragments_concatenate_to_the_whole_arguments(seed: int) -> None:
    rng = random.Random(seed)
    calls = [
        {"name": f"f{i}", "arguments": {f"p{j}": _random_value(rng, 1) for j in range(rng.randint(0, 4))}}
        for i in range(rng.randint(1, 3))
    ]
    text = "\n".join(
        f"<tool_call>\n{json.dumps(call, ensure_ascii=rng.random() < 0.5)}\n</tool_call>" for call in calls
    )
    for step in (1, 3, 7, len(text)):
        parts, arguments = _reassemble(text, step, stream_arguments=True)
        assert list(arguments.values()) == [compact_json(call["arguments"]) for call in calls]
        finals = [p.function_call for p in parts if p.function_call is not None and not p.function_call.will_continue]
        assert [(f.name, f.args) for f in finals] == [(c["name"], c["arguments"]) for c in calls]


def test_whole_calls_and_the_text_before_them() -> None:
    text = (
        'Let me look.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
        '<tool_call>\n{"name": "b", "arguments": {}}\n</tool_call>'
    )
    parts, arguments = _reassemble(text, 2, stream_arguments=False)
    assert "".join(p.text or "" for p in parts) == "Let me look."
    assert [p.function_call.name for p in parts if p.function_call] == ["a", "b"]
    assert list(arguments.values()) == ['{"x":1}', "{}"]


@pytest.mark.parametrize("stream_arguments", [False, True])
def test_a_string_argument_may_hold_the_closing_tag(stream_arguments: bool) -> None:
    text = '<tool_call>\n{"name": "say", "arguments": {"text": "a </tool_call> b"}}\n</tool_call>'
    _, arguments = _reassemble(text, 3, stream_arguments=stream_arguments)
    assert list(arguments.values()) == ['{"text":"a </tool_call> b"}']


def test_text_that_only_looks_like_a_tag_is_kept() -> None:
    parts, arguments = _reassemble("a <tool_ and <tool_calls> b", 1, stream_arguments=False)
    assert "".join(p.text or "" for p in parts) == "a <tool_ and <tool_calls> b"
    assert arguments == {}


def test_a_call_cut_off_by_the_token_limit_is_dropped() -> None:
    parts, _ = _reassemble('ok <tool_call>\n{"name": "a", "argum', 4, stream_arguments=False)
    assert [p.function_call for p in parts if p.function_call] == []


@pytest.mark.parametrize("steps", [["a"], ["a", 0, "b c"], ["it's", "x\\y", 3], []])
def test_json_paths_round_trip(steps: list[str | int]) -> None:
    assert parse_json_path(json_path(steps)) == steps


# A tool-aware template in the style of Qwen / Hermes (written for this test).
NATIVE_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>
Answer with <tool_call> blocks.<|im_end|>
{% endif %}
{%- for m in messages %}{% if m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.role != 'system' or not tools %}<|im_start|>{{ m.role }}
{{ m.content }}{% for c in m.tool_calls or [] %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% endif %}{% endfor %}<|im_start|>assistant
"""

HISTORY = [
    gc.Content(role="user", parts=[gc.Part(text="Weather in Paris?")]),
    gc.Content(
        role="model", parts=[gc.Part(function_call=gc.FunctionCall(name="get_weather", args={"city": "Paris"}))]
    ),
    gc.Content(
        role="user",
        parts=[
            gc.Part(
                function_response=gc.FunctionResponse(
                    name="get_weather",
                    response={"temp": 21},
                    parts=[
                        gc.FunctionResponsePart(
                            file_data=gc.FileData(
                                mime_type="image/png", file_uri="gs://b/map.png", display_name="map.png"
                            )
                        )
                    ],
                )
            )
        ],
    ),
]
WEATHER = gc.FunctionDeclaration(
    name="get_weather", description="Weather now", parameters_json_schema={"type": "object"}
)


@pytest.mark.parametrize("source", [None, NATIVE_TEMPLATE])
def test_declarations_calls_and_results_reach_the_prompt(source: str | None) -> None:
    template = ChatTemplate(source, bos_token="", eos_token="<|im_end|>")
    assert template.template_tools == (source is not None)
    system = gc.Content(parts=[gc.Part(text="Be brief.")])
    messages = contents_to_messages(system, HISTORY, tools=[WEATHER], template_tools=template.template_tools)
    prompt = template.render(messages, tools=[WEATHER])
    assert prompt.count("Be brief.") == 1
    tools = prompt[prompt.index("<tools>") : prompt.index("</tools>")]
    assert '"get_weather"' in tools and '"Weather now"' in tools  # the declaration
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>" in prompt and '"temp": 21' in prompt
    assert '"name": "map.png", "mime_type": "image/png"' in prompt  # media described, not dropped


@pytest.mark.parametrize("text", ["Use <tool_call>, then the JSON.", "<tool_call> is the tag", "a <tool_call>) b"])
def test_a_tag_not_followed_by_a_call_object_is_text(text: str) -> None:
    for stream_arguments in (False, True):
        parts, arguments = _reassemble(text, 2, stream_arguments=stream_arguments)
        assert arguments == {}
        assert "".join(p.text or "" for p in parts).replace(" ", "") == text.replace(" ", "")


def test_a_whole_call_object_counts_without_its_closing_tag() -> None:
    _, arguments = _reassemble('<tool_call>\n{"name": "a", "arguments": {"x": [1]}}', 4, stream_arguments=True)
    assert list(arguments.values()) == ['{"x":[1]}']


def test_an_announced_call_cut_off_still_closes_its_json() -> None:
    _, arguments = _reassemble('<tool_call>\n{"name": "a", "arguments": {"x": "abc', 3, stream_arguments=True)
    assert list(arguments.values()) == ['{"x":"abc"}']


def test_big_integers_stream_as_the_doubles_gemini_holds() -> None:
    text = '<tool_call>\n{"name": "a", "arguments": {"n": 12345678901234567890, "m": 3}}\n</tool_call>'
    _, arguments = _reassemble(text, 5, stream_arguments=True)
    assert list(arguments.values()) == ['{"n":1.2345678901234567e+19,"m":3}']


def test_arguments_nested_past_the_limit_are_not_a_call() -> None:
    deep = "[" * 100 + "]" * 100
    text = f'<tool_call>\n{{"name": "f", "arguments": {{"a": {deep}}}}}\n</tool_call>'
    reader = CallReader(stream_arguments=False)
    parts = reader.feed(text) + reader.finish()
    assert [p.function_call for p in parts if p.function_call] == []
    assert "".join(p.text or "" for p in parts) == text


def test_a_forced_reader_keeps_no_text_and_ends_at_a_repeated_call() -> None:
    call = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    other = '<tool_call>\n{"name": "f", "arguments": {"x": 2}}\n</tool_call>'
    reader = CallReader(stream_arguments=False, forced=True)
    parts = reader.feed(call + "\n" + other + "\n" + call + "\n<tool_")
    assert [p.function_call.args for p in parts if p.function_call] == [{"x": 1}, {"x": 2}]
    assert all(p.function_call for p in parts) and reader.settled
    assert reader.feed("\nmore") == [] and reader.finish() == []
    cut = CallReader(stream_arguments=False, forced=True)
    assert [p.function_call.name for p in cut.feed(call + "\n<tool_ca") if p.function_call] == ["f"]
    assert cut.finish() == [] and not cut.cut  # the cut tag was the format's, never content
    free = CallReader(stream_arguments=False)  # not forced: a repeat is a call like any other
    assert len(free.feed(call + "\n" + call)) == 2 and not free.settled
    single = CallReader(stream_arguments=False, one_call=True)  # parallel_tool_calls: false
    assert [p.function_call.args for p in single.feed(call + "\n" + other) if p.function_call] == [{"x": 1}]
    assert single.settled and single.finish() == []
