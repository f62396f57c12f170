"""Gemini contents → the model's own chat template (the Jinja template stored in the GGUF)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

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


def _visible_text(content: gc.Content) -> str:
    # Thoughts are dropped: this model's template has no place for them (issue: thinking).
    return "".join(part.text or "" for part in content.parts if not part.thought)


def output_instruction(config: gc.GenerationConfig) -> str | None:
    """JSON output is enforced by grammar; saying so in the prompt too keeps small models on
    track (they otherwise start JSON they never close). OpenAI does the same for schemas."""
    if config.response_mime_type != "application/json":
        return None
    if config.response_json_schema is None:
        return "Answer with a JSON object."
    return "Answer with JSON that matches this JSON schema:\n" + json.dumps(config.response_json_schema)


def contents_to_messages(
    system: gc.Content | None, contents: list[gc.Content], *, output_format: str | None = None
) -> list[dict[str, str]]:
    messages: list[dict[str, str]] = []
    instructions = [p.text or "" for p in system.parts] if system is not None else []
    if output_format is not None:
        instructions.append(output_format)
    if instructions:
        messages.append({"role": "system", "content": "\n\n".join(instructions)})
    for content in contents:
        messages.append({"role": _ROLE[content.role or "user"], "content": _visible_text(content)})
    return messages


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        environment.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self._template = environment.from_string(source or CHATML_TEMPLATE)
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        text = self._template.render(
            messages=messages, add_generation_prompt=True, bos_token=self.bos_token, eos_token=self.eos_token
        )
        # The tokenizer adds BOS itself where the model wants one.
        return text.removeprefix(self.bos_token) if self.bos_token else text
