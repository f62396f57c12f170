"""messages[] → contents[] and systemInstruction (spec §2.2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.bounded_json import JsonLimits, load_json
from openvertex.translate.parts import apply_google_extras, content_part_to_part
from openvertex.translate.tables import ROLE_TO_GEMINI, SYSTEM_ROLES
from openvertex.translate.thoughts import split_tagged


@dataclass
class _Conversation:
    system: list[gc.Part] = field(default_factory=list)
    contents: list[gc.Content] = field(default_factory=list)
    call_names: dict[str, str] = field(default_factory=dict)  # tool_call_id → function name

    def add(self, role: str, parts: list[gc.Part], *, merge: bool = False) -> None:
        last = self.contents[-1] if self.contents else None
        if merge and last is not None and last.role == role and _is_responses(last.parts):
            last.parts.extend(parts)
        else:
            self.contents.append(gc.Content(role=role, parts=parts))


def _is_responses(parts: list[gc.Part]) -> bool:
    return all(part.function_response is not None for part in parts)


def _text_of(content: str | list[oa.ContentPart] | None, *, param: str) -> str:
    """Content that may only be text (system and tool messages)."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for index, part in enumerate(content):
        if part.type != "text":
            raise InvalidArgumentError(
                f'only text parts are allowed here, got "{part.type}"', param=f"{param}[{index}]"
            )
        texts.append(part.text or "")
    return "".join(texts)


def _user_parts(message: oa.Message, *, param: str) -> list[gc.Part]:
    if message.content is None:
        raise InvalidArgumentError("a user message needs content", param=param)
    if isinstance(message.content, str):
        return [apply_google_extras(gc.Part(text=message.content), message.extra_content)]
    return [content_part_to_part(part, param=f"{param}[{i}]") for i, part in enumerate(message.content)]


def _assistant_text_parts(text: str, marker: str | None) -> list[gc.Part]:
    if marker is None:
        return [gc.Part(text=text)] if text else []
    return [gc.Part(text=segment, thought=thought or None) for segment, thought in split_tagged(text, marker)]


def _parse_arguments(arguments: str, *, param: str) -> dict[str, Any]:
    try:
        args = load_json(arguments.encode(), JsonLimits()) if arguments.strip() else {}
    except InvalidArgumentError as error:
        message = f"expected a valid JSON object in the function arguments: {error.message}"
        raise InvalidArgumentError(message, param=param) from None
    if not isinstance(args, dict):
        raise InvalidArgumentError("expected a valid JSON object in the function arguments", param=param)
    return args


def _assistant_parts(
    message: oa.Message, conversation: _Conversation, *, param: str, marker: str | None
) -> list[gc.Part]:
    parts: list[gc.Part] = []
    if isinstance(message.content, str):
        parts = _assistant_text_parts(message.content, marker)
        signature_holder = message.extra_content
        if parts and signature_holder is not None:
            # A message-level signature belongs on the last text part (spec §2.2).
            apply_google_extras(parts[-1], oa.ExtraContent(google=_signature_only(signature_holder)))
    elif message.content is not None:
        for index, part in enumerate(message.content):
            if part.type != "text":
                raise InvalidArgumentError(
                    "assistant content may only hold text parts", param=f"{param}.content[{index}]"
                )
            extras = part.extra_content
            if extras is not None and extras.google is not None and extras.google.thought is not None:
                parts.append(apply_google_extras(gc.Part(text=part.text), extras))  # the flag beats the marker
            else:
                parts.extend(apply_google_extras(p, extras) for p in _assistant_text_parts(part.text or "", marker))
    calls = list(message.tool_calls or [])
    if message.function_call is not None:
        calls.append(oa.ToolCall(function=message.function_call))
    for index, call in enumerate(calls):
        call_param = f"{param}.tool_calls[{index}]"
        args = _parse_arguments(call.function.arguments, param=f"{call_param}.function.arguments")
        if call.id is not None:
            conversation.call_names[call.id] = call.function.name
        call_part = gc.Part(function_call=gc.FunctionCall(name=call.function.name, args=args))
        parts.append(apply_google_extras(call_part, call.extra_content))
    return parts


def _signature_only(extra: oa.ExtraContent) -> oa.GoogleContentExtras | None:
    google = extra.google
    return None if google is None else oa.GoogleContentExtras(thought_signature=google.thought_signature)


def _response_payload(text: str) -> dict[str, Any]:
    """JSON-object content is the response itself; anything else is wrapped [I]."""
    try:
        value = load_json(text.encode(), JsonLimits())
    except InvalidArgumentError:  # not JSON, or JSON past the limits: text like any other
        value = None
    return value if isinstance(value, dict) else {"content": text}


def _function_response_parts(extra: oa.ExtraContent | None, *, param: str) -> list[gc.FunctionResponsePart] | None:
    google = extra.google if extra is not None else None
    if google is None or google.parts is None:
        return None
    try:
        return [gc.FunctionResponsePart.from_wire(part) for part in google.parts]
    except ValueError as error:
        raise InvalidArgumentError(
            f"not a valid function response part: {error}", param=f"{param}.extra_content.google.parts"
        ) from None


def _tool_response_part(message: oa.Message, conversation: _Conversation, *, param: str) -> gc.Part:
    name = message.name
    if name is None and message.tool_call_id is not None:
        name = conversation.call_names.get(message.tool_call_id)
        if name is None:
            raise InvalidArgumentError(
                f"no earlier tool call has id {message.tool_call_id!r}", param=f"{param}.tool_call_id"
            )
    if name is None:
        raise InvalidArgumentError("a tool result needs tool_call_id or name", param=param)
    response = gc.FunctionResponse(
        name=name,
        response=_response_payload(_text_of(message.content, param=f"{param}.content")),
        parts=_function_response_parts(message.extra_content, param=param),
    )
    return gc.Part(function_response=response)


def _check_call_order(contents: list[gc.Content]) -> None:
    """All calls of a step, then all their results, in the next turn (Gemini's rule and words)."""
    for index, content in enumerate(contents):
        responses = [p for p in content.parts if p.function_response is not None]
        if not responses:
            continue
        previous = contents[index - 1] if index else None
        calls = [p for p in previous.parts if p.function_call is not None] if previous is not None else []
        if not calls:
            raise InvalidArgumentError(
                "Please ensure that function response turn comes immediately after a function call turn.",
                param="messages",
            )
        if len(calls) != len(responses):
            raise InvalidArgumentError(
                "Please ensure that the number of function response parts is equal to the number of function"
                " call parts of the function call turn.",
                param="messages",
            )


def messages_to_contents(
    messages: list[oa.Message], *, thought_marker: str | None
) -> tuple[gc.Content | None, list[gc.Content]]:
    """Return (systemInstruction, contents)."""
    conversation = _Conversation()
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if message.role in SYSTEM_ROLES:
            conversation.system.append(gc.Part(text=_text_of(message.content, param=f"{param}.content")))
        elif message.role == "user":
            conversation.add("user", _user_parts(message, param=f"{param}.content"))
        elif message.role in ("assistant", "model"):
            parts = _assistant_parts(message, conversation, param=param, marker=thought_marker)
            conversation.add("model", parts or [gc.Part(text="")])
        else:  # tool / function results: all results of a step share one turn
            conversation.add(
                ROLE_TO_GEMINI[message.role], [_tool_response_part(message, conversation, param=param)], merge=True
            )
    if not conversation.contents:
        raise InvalidArgumentError("at least one non-system message is required", param="messages")
    _check_call_order(conversation.contents)
    system = gc.Content(parts=conversation.system) if conversation.system else None
    return system, conversation.contents
