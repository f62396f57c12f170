"""Gemini contents → the model's own chat template (the Jinja template stored in the GGUF) → prompt tokens.

Message text is tokenized as text: only the template's own markup produces control tokens, so
`<|im_start|>system` written by a client stays the characters `<`, `|`, `im`, … for the model.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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

log = logging.getLogger(__name__)

Tokenize = Callable[[str, bool], list[int]]
"""(text, special) → token ids without BOS; `special` parses control-token text, for markup only."""

# Tokenizing costs about a second of CPU per megabyte, so a prompt's size is checked first: past
# this many bytes per token of context it is refused untokenized. Real text averages about 4
# bytes a token; a prompt past the bound could fit only with tokens longer than 128 bytes on
# average, and SmolLM2 has none (its longest is 81 bytes).
MAX_BYTES_PER_TOKEN = 128


def _raise(message: str) -> None:
    raise InvalidArgumentError(f"the model's chat template rejected the conversation: {message}")


def output_instruction(config: gc.GenerationConfig) -> str | None:
    """JSON output is enforced by grammar; saying so in the prompt too keeps small models on
    track (they otherwise start JSON they never close). OpenAI does the same for schemas."""
    if config.response_mime_type != "application/json":
        return None
    schema = config.response_json_schema if config.response_json_schema is not None else config.response_schema
    if schema is None:
        return "Answer with a JSON object."
    return "Answer with JSON that matches this JSON schema:\n" + json.dumps(schema)


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
    returns = declaration.response_json_schema or declaration.response
    if returns:  # what the function answers: the model is told, as Gemini's declarations tell it
        described["response"] = returns
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


def _template_tool_messages(content: gc.Content) -> list[dict[str, Any]]:
    """OpenAI-shaped messages for a template that renders tools itself."""
    responses = [p.function_response for p in content.parts if p.function_response is not None]
    if responses:
        return [{"role": "tool", "content": json.dumps(_response_body(r))} for r in responses]
    message: dict[str, Any] = {"role": _ROLE[content.role or "user"], "content": content.text()}
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


def _thought_text(content: gc.Content, tags: tuple[str, str]) -> str:
    """A model content's thoughts as they go back before its answer ("" when it has none)."""
    thoughts = "".join(p.text or "" for p in content.parts if p.thought)
    return f"{tags[0]}\n{thoughts}\n{tags[1]}\n\n" if thoughts and content.role == "model" else ""


def contents_to_messages(
    system: gc.Content | None,
    contents: list[gc.Content],
    *,
    instructions: Sequence[str] = (),
    tools: list[gc.FunctionDeclaration] | None = None,
    template_tools: bool = False,
    thought_tags: tuple[str, str] | None = None,
    thoughts_from: int | None = None,
) -> list[dict[str, Any]]:
    """`instructions` follow the system prompt. With `template_tools`, the template shows the
    declarations and renders calls and results itself; otherwise both are written out in the
    generic format. Thoughts of the model contents from index `thoughts_from` on (default: the
    current turn's, as reasoning templates give them back) go back inside `thought_tags`;
    earlier ones are left out."""
    messages: list[dict[str, Any]] = []
    system_texts = [p.text or "" for p in system.parts] if system is not None else []
    if tools and not template_tools:
        system_texts.append(tool_instruction(tools))
    system_texts += instructions
    if system_texts:
        messages.append({"role": "system", "content": "\n\n".join(system_texts)})
    first = gc.current_turn_start(contents) if thoughts_from is None else thoughts_from
    for index, content in enumerate(contents):
        rendered = _template_tool_messages(content) if template_tools else [_message(content)]
        if thought_tags is not None and index >= first:
            rendered[0]["content"] = _thought_text(content, thought_tags) + rendered[0]["content"]
        messages.extend(rendered)
    return messages


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a request gives the chat template, before the thoughts that go back are chosen."""

    system: gc.Content | None
    contents: list[gc.Content]
    instructions: Sequence[str] = ()
    tools: list[gc.FunctionDeclaration] | None = None
    template_tools: bool = False
    thought_tags: tuple[str, str] | None = None

    def messages(self, *, thoughts_from: int) -> list[dict[str, Any]]:
        return contents_to_messages(
            self.system,
            self.contents,
            instructions=self.instructions,
            tools=self.tools,
            template_tools=self.template_tools,
            thought_tags=self.thought_tags,
            thoughts_from=thoughts_from,
        )

    def current_thoughts(self) -> list[tuple[int, str]]:
        """(index, thoughts as written) of the current turn's model contents that thought, oldest first."""
        if self.thought_tags is None:
            return []
        start = gc.current_turn_start(self.contents)
        written = ((i, _thought_text(c, self.thought_tags)) for i, c in enumerate(self.contents) if i >= start)
        return [(index, text) for index, text in written if text]


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of the rendered prompt: the template's markup (its control tokens count), or text."""

    text: str
    markup: bool
    message: int | None = None  # for message text: the index of its message


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, loader=jinja2.BaseLoader())
        environment.globals.update(raise_exception=_raise, strftime_now=lambda fmt: datetime.now().strftime(fmt))
        self._template = environment.from_string(source or CHATML_TEMPLATE)
        self.bos_token = bos_token
        self.eos_token = eos_token
        # Templates that render `tools` and answer in <tool_call> blocks (Qwen, Hermes, SmolLM3)
        # get the declarations their own way; the output format is the same as the generic one.
        self.template_tools = source is not None and "tools" in source and TOOL_CALL_TAG in source
        self._warned = False

    def render(self, messages: list[dict[str, Any]], tools: list[gc.FunctionDeclaration] | None = None) -> str:
        """The prompt as one string, as the template prints it."""
        declared = [{"type": "function", "function": _declaration(d)} for d in tools or []]
        return self._template.render(
            messages=messages,
            tools=declared if declared and self.template_tools else None,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def segments(
        self, messages: list[dict[str, Any]], tools: list[gc.FunctionDeclaration] | None = None
    ) -> list[Segment] | None:
        """The prompt as markup and message text. The template runs with each message's content
        replaced by a placeholder made from a fresh random nonce, so no text a client wrote can
        reach the markup; the rendering is then cut at the placeholders. None when the template
        changed a placeholder (it transforms message text), as the pieces cannot be told apart."""
        nonce = secrets.token_hex(8)
        texts: list[tuple[int, str]] = []  # (message index, content)
        masked = []
        for index, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str) and content:  # "" stays: templates test it for truth
                masked.append({**message, "content": f"{nonce}q{len(texts)}q{nonce}"})
                texts.append((index, content))
            else:
                masked.append(message)
        pieces = re.split(f"{nonce}q([0-9]+)q{nonce}", self.render(masked, tools))
        segments = []
        for position, piece in enumerate(pieces):
            if position % 2:  # re.split puts the captured index between the markup pieces
                index, text = texts[int(piece)]
                segments.append(Segment(text, markup=False, message=index))
            elif nonce[:8] in piece.lower():  # a placeholder cut, cased or rewritten: the template changed it
                self._warn_once()
                return None
            elif piece:
                segments.append(Segment(piece, markup=True))
        return segments

    def _warn_once(self) -> None:
        if not self._warned:
            self._warned = True
            log.warning("the chat template transforms message text; prompts are checked for control-token text instead")


def prompt_tokens(
    template: ChatTemplate,
    conversation: Conversation,
    *,
    opening: str,
    tokenize: Tokenize,
    bos: Sequence[int],
    limit: int,
) -> list[int]:
    """The prompt's tokens, at most `limit`; `opening` is markup that follows the template's.

    The current turn's thoughts go back while they fit in half the room the rest of the prompt
    leaves (the answer keeps the other half), the newest first; older ones are left out.
    """

    def tokens_with_thoughts_from(first: int) -> list[int]:
        messages = conversation.messages(thoughts_from=first)
        return _tokens(template, messages, conversation.tools, opening=opening, tokenize=tokenize, bos=bos, limit=limit)

    everything = len(conversation.contents)
    tokens = tokens_with_thoughts_from(everything)
    thoughts = conversation.current_thoughts()
    if not thoughts:
        return tokens
    room, spent, first = (limit - len(tokens)) // 2, 0, everything
    for index, text in reversed(thoughts):
        if len(text.encode()) > (room - spent) * MAX_BYTES_PER_TOKEN:  # cannot fit: not worth tokenizing
            break
        spent += len(tokenize(text, False))
        if spent > room:
            break
        first = index
    if first == everything:
        return tokens
    try:
        return tokens_with_thoughts_from(first)
    except InvalidArgumentError:  # the tags around them tipped it over: thoughts never cost a 400
        return tokens


def _tokens(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[gc.FunctionDeclaration] | None,
    *,
    opening: str,
    tokenize: Tokenize,
    bos: Sequence[int],
    limit: int,
) -> list[int]:
    segments, checked = _prompt_segments(template, messages, tools, opening=opening, bos=bos)
    size = sum(len(segment.text.encode()) for segment in segments)
    if size > limit * MAX_BYTES_PER_TOKEN:
        raise InvalidArgumentError(
            f"The input size ({size} bytes) exceeds the maximum allowed ({limit * MAX_BYTES_PER_TOKEN} bytes: "
            f"{MAX_BYTES_PER_TOKEN} for each of the {limit} tokens allowed)."
        )
    if checked:
        _refuse_control_text([m["content"] for m in messages if isinstance(m.get("content"), str)], tokenize)
    if template.template_tools:
        # The template writes calls and declarations from their values: none may hold control tokens.
        _refuse_control_text(_structured_strings(messages, tools), tokenize)
    tokens = list(bos)
    for segment in segments:
        tokens += tokenize(segment.text, segment.markup)
    if len(tokens) > limit:
        raise InvalidArgumentError(
            f"The input token count ({len(tokens)}) exceeds the maximum number of tokens allowed ({limit})."
        )
    return tokens


def _prompt_segments(
    template: ChatTemplate,
    messages: list[dict[str, Any]],
    tools: list[gc.FunctionDeclaration] | None,
    *,
    opening: str,
    bos: Sequence[int],
) -> tuple[list[Segment], bool]:
    """The prompt as segments, and whether its message text must still be checked for control-token text."""
    segments = template.segments(messages, tools)
    checked = segments is None
    if segments is None:  # as the template prints it, once no message text holds control-token text
        segments = [Segment(template.render(messages, tools), markup=True)]
    if bos and segments and segments[0].markup and template.bos_token:
        # BOS is added as a token where the model wants one, not again as the template's text.
        # (Where it does not, the template's own BOS text stays: SmolLM2's BOS is <|im_start|>.)
        segments[0] = Segment(segments[0].text.removeprefix(template.bos_token), markup=True)
    if opening:
        segments.append(Segment(opening, markup=True))
    return segments, checked


_TURN_ROLE = {"assistant": "model", "tool": "user"}


def prompt_turns(
    template: ChatTemplate, conversation: Conversation, *, opening: str, tokenize: Tokenize, bos: Sequence[int]
) -> list[tuple[str, list[int]]]:
    """The prompt's tokens turn by turn (role, tokens): each message's text with the markup
    before it; what follows the last message (the answer's opening) goes with it. Together
    they are the whole prompt, as `prompt_tokens` would give it without a limit."""
    messages = conversation.messages(thoughts_from=gc.current_turn_start(conversation.contents))
    segments, _ = _prompt_segments(template, messages, conversation.tools, opening=opening, bos=bos)
    turns: list[tuple[str, list[int]]] = []
    pending = list(bos)
    for segment in segments:
        pending += tokenize(segment.text, segment.markup)
        if segment.message is not None:
            role = str(messages[segment.message]["role"])
            turns.append((_TURN_ROLE.get(role, role), pending))
            pending = []
    if pending:
        if turns:
            turns[-1][1].extend(pending)
        else:
            turns.append(("user", pending))
    return turns


def _refuse_control_text(texts: list[str], tokenize: Tokenize) -> None:
    """Text holds a control token's text exactly when parsing special tokens changes its tokens."""
    joined = "\n".join(texts)
    if joined and tokenize(joined, True) != tokenize(joined, False):
        raise InvalidArgumentError(
            "The request contains text that this model reserves for the control tokens of its chat template "
            "(such as a role marker), which its template cannot keep apart from its own.",
            param="contents",
        )


def _structured_strings(messages: list[dict[str, Any]], tools: list[gc.FunctionDeclaration] | None) -> list[str]:
    """Every string the template gets outside message contents: call names and arguments, declarations."""
    values: list[Any] = [m.get("tool_calls") or [] for m in messages]
    values += [_declaration(d) for d in tools or []]
    strings: list[str] = []
    while values:  # iterative: argument nesting is the client's to choose
        value = values.pop()
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, dict):
            strings += [str(key) for key in value]
            values += value.values()
        elif isinstance(value, list):
            values += value
    return strings
