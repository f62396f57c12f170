"""How much a request lets the local model think, and how earlier thoughts reach its prompt."""

from __future__ import annotations

import pytest

from openvertex.backends.local.prompt import ChatTemplate, contents_to_messages
from openvertex.backends.local.thinking import resolve_mode, thinking_budget
from openvertex.protocol import generate_content as gc
from openvertex.service.signatures import Kind, ThoughtSigner

THINK = gc.ThinkingConfig


@pytest.mark.parametrize(
    ("config", "mode", "budget"),
    [
        (None, "prompted", 0),  # a model without reasoning of its own thinks only when asked
        (None, "native", 512),  # a reasoning model thinks as trained, dynamically
        (THINK(thinking_budget=0), "native", 0),
        (THINK(thinking_budget=64), "prompted", 64),
        (THINK(thinking_budget=-1), "prompted", 512),
        (THINK(include_thoughts=True), "prompted", 512),
        (THINK(include_thoughts=False), "prompted", 0),
        (THINK(thinking_level="low"), "prompted", 1024),
        (THINK(thinking_level="HIGH"), "prompted", 24576),
        (THINK(thinking_budget=64), "off", 0),
    ],
)
def test_budgets(config: gc.ThinkingConfig | None, mode: str, budget: int) -> None:
    assert thinking_budget(config, mode, dynamic=512) == budget  # type: ignore[arg-type]


def test_mode_follows_the_template_unless_set() -> None:
    assert resolve_mode("auto", "{{ '<think>' }}...{{ '</think>' }}") == "native"
    assert resolve_mode("auto", "<|im_start|>{{ m.content }}") == "prompted"
    assert resolve_mode("auto", None) == "prompted"
    assert resolve_mode("off", "...</think>...") == "off"


def test_the_current_turns_thoughts_go_back_inside_the_tags_never_as_answer_text() -> None:
    call = gc.FunctionCall(name="factor", args={"n": 23})
    contents = [
        gc.Content(role="user", parts=[gc.Part(text="Is 21 prime?")]),
        gc.Content(role="model", parts=[gc.Part(text="21 = 3 x 7.", thought=True), gc.Part(text="No.")]),
        gc.Content(role="user", parts=[gc.Part(text="And 23?")]),
        gc.Content(role="model", parts=[gc.Part(text="Factor it.", thought=True), gc.Part(function_call=call)]),
        gc.Content(
            role="user", parts=[gc.Part(function_response=gc.FunctionResponse(name="factor", response={"f": [23]}))]
        ),
    ]
    template = ChatTemplate(None, bos_token="", eos_token="")
    with_tags = template.render(contents_to_messages(None, contents, thought_tags=("<think>", "</think>")))
    assert "<think>\nFactor it.\n</think>\n\n<tool_call>" in with_tags
    assert "21 = 3 x 7." not in with_tags and "No." in with_tags  # an answered turn's thoughts stay out
    dropped = template.render(contents_to_messages(None, contents))
    assert "Factor it." not in dropped and "No." in dropped


def test_a_signature_given_back_restores_its_thoughts() -> None:
    signer = ThoughtSigner(b"secret")
    signature = signer.sign(Kind.TEXT, thoughts="21 = 3 x 7.")
    answer = gc.Content(role="model", parts=[gc.Part(text="No.", thought_signature=signature)])
    signer.check_request([gc.Content(role="user", parts=[gc.Part(text="Is 21 prime?")]), answer], required=True)
    assert answer.parts[0] == gc.Part(text="21 = 3 x 7.", thought=True)
    assert answer.parts[1].text == "No."
    kept = gc.Content(
        role="model", parts=[gc.Part(text="mine", thought=True), gc.Part(text="No.", thought_signature=signature)]
    )
    signer.check_request([kept], required=True)
    assert [p.text for p in kept.parts] == ["mine", "No."]  # thoughts sent along are not doubled
