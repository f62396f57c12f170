"""Gemini contents → the model's own chat template (the Jinja template stored in the GGUF)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from openvertex.backends.local.grammar import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TOOL_CALL_TAG, parameters_schema
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc

# Used when a GGUF carries no template: ChatML, the most common instruct format.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ROLE = {"user": "user", "model": "assistant"}


def _raise(message: str) -> None:
    raise InvalidArgumentError(f"the model's chat template rejected the conversation: {message}")


def output_instruction(config: gc.GenerationConfig) -> str | None:
    """JSON output is enforced by grammar; saying so in the prompt too keeps small models on
    track (they otherwise start JSON they never close). OpenAI does the same for schemas."""
    if config.response_mime_type != "application/json":
        return None
    if config.response_json_schema is None:
        return "Answer with a JSON object."
    return "Answer with JSON that matches this JSON schema:\n" + json.dumps(config.response_json_schema)


def tool_instruction(declarations: list[gc.FunctionDeclaration]) -> str:
    """The generic function-calling format (Hermes-style, as Qwen and SmolLM3 were trained):
    declarations in <tools>, calls as <tool_call> JSON, results as <tool_response> JSON."""
    listed = "\n".join(json.dumps(_declaration(d)) for d in declarations)
    return (
        "You can call functions to answer. Each function is described by a JSON object in <tools>:\n"
        f"<tools>\n{listed}\n</tools>\n"
        "To call functions, reply with one block per call:\n"
        f'{TOOL_CALL_OPEN}{{"name": <function name>, "arguments": <arguments as a JSON object>}}{TOOL_CALL_CLOSE}\n'
        "Results come back in <tool_response> blocks."
    )


def _declaration(declaration: gc.FunctionDeclaration) -> dict[str, Any]:
    described: dict[str, Any] = {"name": declaration.name}
    if declaration.description:
        described["description"] = declaration.description
    described["parameters"] = parameters_schema(declaration)
    return described


def _call_text(call: gc.FunctionCall) -> str:
    body = json.dumps({"name": call.name, "arguments": call.args or {}})
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _response_body(response: gc.FunctionResponse) -> dict[str, Any]:
    body: dict[str, Any] = {"name": response.name, "response": response.response}
    if response.parts:
        # A text-only model cannot see media; it is told what is there, never left unaware.
        body["attachments"] = [_attachment(part) for part in response.parts]
    return body


def _response_text(response: gc.FunctionResponse) -> str:
    return f"<tool_response>\n{json.dumps(_response_body(response))}\n</tool_response>"


def _attachment(part: gc.FunctionResponsePart) -> dict[str, str]:
    if part.file_data is not None:
        name = part.file_data.display_name or part.file_data.file_uri
        return {"name": name, "mime_type": part.file_data.mime_type or "application/octet-stream"}
    assert part.inline_data is not None
    return {"name": "inline data", "mime_type": part.inline_data.mime_type}


def _native_messages(content: gc.Content) -> list[dict[str, Any]]:
    """OpenAI-shaped messages for a template that renders tools itself."""
    responses = [p.function_response for p in content.parts if p.function_response is not None]
    if responses:
        return [{"role": "tool", "content": json.dumps(_response_body(r))} for r in responses]
    text = "".join(p.text for p in content.parts if p.text and not p.thought)
    message: dict[str, Any] = {"role": _ROLE[content.role or "user"], "content": text}
    calls = [p.function_call for p in content.parts if p.function_call is not None]
    if calls:
        message["tool_calls"] = [
            {"type": "function", "function": {"name": c.name, "arguments": c.args or {}}} for c in calls
        ]
    return [message]


def _message(content: gc.Content) -> dict[str, str]:
    pieces = []
    for part in content.parts:
        if part.function_call is not None:
            pieces.append(_call_text(part.function_call))
        elif part.function_response is not None:
            pieces.append(_response_text(part.function_response))
        elif part.text and not part.thought:
            pieces.append(part.text)
    separator = "\n" if any(p.function_call or p.function_response for p in content.parts) else ""
    return {"role": _ROLE[content.role or "user"], "content": separator.join(pieces)}


def contents_to_messages(
    system: gc.Content | None,
    contents: list[gc.Content],
    *,
    instructions: Sequence[str] = (),
    tools: list[gc.FunctionDeclaration] | None = None,
    native_tools: bool = False,
    thought_tags: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """`instructions` follow the system prompt. With `native_tools`, the template shows the
    declarations and renders calls and results itself; otherwise both are written out in the
    generic format. Earlier thoughts go back inside `thought_tags`, or are left out."""
    messages: list[dict[str, Any]] = []
    system_texts = [p.text or "" for p in system.parts] if system is not None else []
    if tools and not native_tools:
        system_texts.append(tool_instruction(tools))
    system_texts += instructions
    if system_texts:
        messages.append({"role": "system", "content": "\n\n".join(system_texts)})
    for content in contents:
        rendered = _native_messages(content) if native_tools else [_message(content)]
        thoughts = "".join(p.text or "" for p in content.parts if p.thought)
        if thought_tags is not None and thoughts and content.role == "model":
            opening, closing = thought_tags
            rendered[0]["content"] = f"{opening}\n{thoughts}\n{closing}\n\n{rendered[0]['content']}"
        messages.extend(rendered)
    return messages


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        environment.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self._template = environment.from_string(source or CHATML_TEMPLATE)
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Templates that render `tools` and answer in <tool_call> blocks (Qwen, Hermes, SmolLM3)
        # get the declarations their own way; the output format is the same as the generic one.
        self.native_tools = source is not None and "tools" in source and TOOL_CALL_TAG in source

    def render(self, messages: list[dict[str, Any]], tools: list[gc.FunctionDeclaration] | None = None) -> str:
        declared = [{"type": "function", "function": _declaration(d)} for d in tools or []]
        text = self._template.render(
            messages=messages,
            tools=declared if declared and self.native_tools else None,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )
        # The tokenizer adds BOS itself where the model wants one.
        return text.removeprefix(self.bos_token) if self.bos_token else text
