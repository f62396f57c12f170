"""Which earlier thoughts go back into the prompt: the current turn's (as reasoning templates
do it), newest first while they fit; never those of turns the user already answered."""

from __future__ import annotations

from openvertex.backends.local.prompt import (
    ChatTemplate,
    Conversation,
    contents_to_messages,
    prompt_tokens,
)
from openvertex.protocol import generate_content as gc
from openvertex.protocol.generate_content import current_turn_start

TAGS = ("<think>", "</think>")
TEMPLATE = ChatTemplate(None, bos_token="", eos_token="")


def _user(text: str) -> gc.Content:
    return gc.Content(role="user", parts=[gc.Part(text=text)])


def _answer(thought: str, text: str) -> gc.Content:
    return gc.Content(role="model", parts=[gc.Part(text=thought, thought=True), gc.Part(text=text)])


def _call(thought: str) -> gc.Content:
    call = gc.FunctionCall(name="get_weather", args={"city": "Paris"})
    return gc.Content(role="model", parts=[gc.Part(text=thought, thought=True), gc.Part(function_call=call)])


def _result() -> gc.Content:
    response = gc.FunctionResponse(name="get_weather", response={"temp": 21})
    return gc.Content(role="user", parts=[gc.Part(function_response=response)])


# Two finished turns, then a turn still calling functions (two steps so far).
HISTORY = [
    _user("Is 21 prime?"),
    _answer("first turn thought", "No."),
    _user("Weather in Paris, twice?"),
    _call("step one thought"),
    _result(),
    _call("step two thought"),
    _result(),
]


def _chars(text: str, special: bool) -> list[int]:
    return [ord(c) for c in text]  # one token a character: sizes are easy to reason about


def _prompt(contents: list[gc.Content], limit: int) -> str:
    conversation = Conversation(None, contents, thought_tags=TAGS)
    return "".join(map(chr, prompt_tokens(TEMPLATE, conversation, opening="", tokenize=_chars, bos=[], limit=limit)))


def test_the_current_turn_starts_after_the_last_user_text() -> None:
    assert current_turn_start(HISTORY) == 3
    assert current_turn_start(HISTORY[:3]) == 3  # no model content yet
    assert current_turn_start([_result(), _call("t")]) == 0  # only function responses: still one turn


def test_only_the_current_turns_thoughts_go_back_inside_the_tags() -> None:
    prompt = TEMPLATE.render(contents_to_messages(None, HISTORY, thought_tags=TAGS))
    assert "first turn thought" not in prompt and "No." in prompt
    assert "<think>\nstep one thought\n</think>\n\n<tool_call>" in prompt
    assert "<think>\nstep two thought\n</think>\n\n<tool_call>" in prompt
    # A turn the user answered keeps its answer text, never its reasoning.
    finished = [*HISTORY[:2], _user("And 23?")]
    assert "first turn thought" not in TEMPLATE.render(contents_to_messages(None, finished, thought_tags=TAGS))
    assert "thought" not in TEMPLATE.render(contents_to_messages(None, HISTORY))  # no tags: none at all


def test_with_room_every_thought_of_the_current_turn_goes_back() -> None:
    prompt = _prompt(HISTORY, limit=4095)
    assert "step one thought" in prompt and "step two thought" in prompt
    assert "first turn thought" not in prompt


def test_thoughts_that_do_not_fit_are_dropped_oldest_first_never_refused() -> None:
    without = len(_prompt([*HISTORY[:3], _call(""), _result(), _call(""), _result()], limit=4095))
    long = "x" * 300
    contents = [*HISTORY[:3], _call("old " + long), _result(), _call("new " + long), _result()]
    one_thought = len(f"<think>\nnew {long}\n</think>\n\n")
    # Thoughts may take half the room the rest of the prompt leaves: here one, not two.
    prompt = _prompt(contents, limit=without + 2 * one_thought + 50)
    assert "new x" in prompt and "old x" not in prompt
    prompt = _prompt(contents, limit=without + 100)  # not even the newest one
    assert "x" * 10 not in prompt and len(prompt) == without
