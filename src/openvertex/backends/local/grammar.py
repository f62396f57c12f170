"""Constrained decoding: JSON mode and JSON Schema become a GBNF grammar for llama.cpp."""

from __future__ import annotations

import json
import re
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc

JSON_MIME = "application/json"
TEXT_MIME = "text/plain"
SUPPORTED_MIME_TYPES = frozenset({JSON_MIME, TEXT_MIME})


def grammar_for(mime_type: str | None, schema: dict[str, Any] | None) -> str | None:
    """The GBNF text enforcing the requested output, or None for free text."""
    if mime_type != JSON_MIME:
        return None
    if schema is None:
        return JSON_GBNF
    try:
        return str(json_schema_to_gbnf(json.dumps(schema)))
    except Exception as error:  # the converter raises bare Exceptions on unsupported schemas
        raise InvalidArgumentError(f"the JSON schema in response_format cannot be enforced: {error}") from None


def check_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str, *, param: str) -> None:
    """llama.cpp returns NULL for a grammar it cannot parse; find out before decoding with it."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidArgumentError("the schema produced a grammar llama.cpp cannot parse", param=param)
    llama_cpp.llama_sampler_free(sampler)


# ---------------------------------------------------------------------------- function calls

# With tool_choice auto the grammar applies from where TOOL_CALL_TAG first appears.
TOOL_CALL_TAG = "<tool_call>"
TOOL_CALL_END_TAG = "</tool_call>"
TOOL_CALL_OPEN = TOOL_CALL_TAG + "\n"  # as the grammar and the prompt write them
TOOL_CALL_CLOSE = "\n" + TOOL_CALL_END_TAG


def _json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI subset as JSON Schema: `type: "OBJECT"` → "object", `nullable` → null."""
    if isinstance(schema, list):
        return [_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted = {key: _json_schema(value) for key, value in schema.items() if key != "nullable"}
    kind = converted.get("type")
    if isinstance(kind, str):
        converted["type"] = kind.lower()
    if schema.get("nullable") is True and isinstance(converted.get("type"), str):
        converted["type"] = [converted["type"], "null"]
    return converted


def parameters_schema(declaration: gc.FunctionDeclaration) -> dict[str, Any]:
    schema = declaration.parameters_json_schema or declaration.parameters
    if not schema:
        return {"type": "object", "properties": {}}
    converted: dict[str, Any] = _json_schema(schema)
    return converted


def tool_call_grammar(declarations: list[gc.FunctionDeclaration]) -> str:
    """GBNF for one or more `<tool_call>{"name": …, "arguments": …}</tool_call>` blocks, each a
    call to one of `declarations` whose arguments validate against its parameters."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": d.name}, "arguments": parameters_schema(d)},
            "required": ["name", "arguments"],
        }
        for d in declarations
    ]
    try:
        rules = str(json_schema_to_gbnf(json.dumps({"anyOf": calls})))
    except Exception as error:  # the converter raises bare Exceptions on unsupported schemas
        raise InvalidArgumentError(f"a function's parameters cannot be enforced: {error}", param="tools") from None
    rules = re.sub(r"^root ::=", "tool-call-object ::=", rules, flags=re.MULTILINE)
    # Strict JSON strings (no raw control characters), so a string never holds the closing tag.
    rules = rules.replace('char ::= [^"\\\\]', 'char ::= [^"\\\\\\x00-\\x1F]')
    call = f"{_literal(TOOL_CALL_OPEN)} tool-call-object {_literal(TOOL_CALL_CLOSE)}"
    return f'root ::= {call} ( "\\n" {call} )*\n{rules}'


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF string literal escapes like JSON
