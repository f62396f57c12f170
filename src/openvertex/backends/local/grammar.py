"""Constrained decoding: JSON mode, JSON Schema and function calls become llguidance grammars,
compiled once per schema (off the engine thread) and copied for each sequence.

llguidance enforces every keyword it knows and refuses the rest with a message, so a schema is
either enforced or a 400 naming what cannot be; its limits bound compile time and memory
(shared/spec/constrained-decoding.md has the measurements behind the choices here).

A grammar is built on the grammar builders' own threads (GRAMMAR_BUILDS, bounded), never on the
threads the request path needs; a build past its queue is a 429 that says so.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import llama_cpp
import llguidance
import llguidance.llamacpp
import llguidance.numpy

from openvertex.errors import InvalidArgumentError
from openvertex.executors import BoundedExecutor, cores
from openvertex.protocol import generate_content as gc

JSON_MIME = "application/json"
TEXT_MIME = "text/plain"
SUPPORTED_MIME_TYPES = frozenset({JSON_MIME, TEXT_MIME})

# With tool_choice auto the grammar applies from where TOOL_CALL_TAG first appears.
TOOL_CALL_TAG = "<tool_call>"
TOOL_CALL_END_TAG = "</tool_call>"
TOOL_CALL_OPEN = TOOL_CALL_TAG + "\n"  # as the grammar and the prompt write them
TOOL_CALL_CLOSE = "\n" + TOOL_CALL_END_TAG

# A 135M model left free to choose its whitespace pads values with newlines until max_tokens;
# this allows pretty-printed JSON and nothing more. Every option is the server's: a schema's own
# "x-guidance" is dropped, so a client cannot make output that is not JSON (other separators)
# or have keywords ignored (`lenient`, `coerce_one_of`).
_JSON_OPTIONS: Any = {
    "whitespace_pattern": r"[ \t]{0,2}|\n[ \t]{0,24}",
    "item_separator": ",",
    "key_separator": ":",
    "coerce_one_of": False,
    "lenient": False,
}
_ANY_JSON_OBJECT = {"type": "object"}
# llguidance names what it refuses in a few shapes; these find the keyword to point at.
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: \[([^\]]*)\]")
_UNKNOWN_FORMAT = re.compile(r"Unknown format: (\S+)")
_MAX_MESSAGE = 400

# Builds drop the GIL and take tens of milliseconds under the lexer's fuel: half the cores build,
# and a burst of new schemas waits a little rather than being refused.
_BUILDERS = max(1, cores() // 2)
GRAMMAR_BUILDS = BoundedExecutor("grammar builds", workers=_BUILDERS, queue=8 * _BUILDERS)


@dataclass(frozen=True, slots=True)
class GrammarLimits:
    """What one schema may cost: its JSON text, the lexer's build budget, the grammar's size."""

    max_schema_bytes: int = 1 << 20
    lexer_fuel: int = 1_000_000  # about 20 ms of lexer construction
    max_grammar_size: int = 500_000  # symbols in the grammar's productions
    cache_size: int = 64  # compiled grammars kept, least recently used dropped


class Grammar:
    """A compiled grammar; each sequence decodes under a copy of its matcher."""

    def __init__(self, matcher: llguidance.LLMatcher, tokenizer: llguidance.LLTokenizer) -> None:
        self._prototype = matcher
        self.tokenizer = tokenizer

    def matcher(self) -> llguidance.LLMatcher:
        return self._prototype.deep_copy()


class GrammarCompiler:
    """Compiles grammars for one model's vocabulary and caches them by grammar text."""

    def __init__(self, vocab: llama_cpp.llama_vocab_p, eog_tokens: list[int], limits: GrammarLimits) -> None:
        # Every end-of-generation token ends a grammar where it may end (SmolLM2 has three).
        with warnings.catch_warnings():  # llguidance's adapter calls a llama.cpp alias it deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            self.tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(vocab, eos_token=eog_tokens)
        self.limits = limits
        self._parser_limits = llguidance.LLParserLimits(
            initial_lexer_fuel=limits.lexer_fuel, max_grammar_size=limits.max_grammar_size, verbose_errors=False
        )
        self._cache: OrderedDict[bytes, Grammar] = OrderedDict()
        self._lock = threading.Lock()

    def response(self, mime_type: str | None, schema: dict[str, Any] | None, *, param: str) -> Grammar | None:
        """The grammar for a response format, or None for free text."""
        if mime_type != JSON_MIME:
            return None
        converted = _json_schema(schema) if schema is not None else _ANY_JSON_OBJECT
        text = self._schema_text(converted, param=param)
        return self._compile(llguidance.LLMatcher.grammar_from_json_schema(text, overrides=_JSON_OPTIONS), param, text)

    def tool_calls(self, declarations: list[gc.FunctionDeclaration], *, lazy: bool) -> Grammar:
        """One or more `<tool_call>{"name": …, "arguments": …}</tool_call>` blocks, each a call to one
        of `declarations` whose arguments validate against its parameters. `lazy`: free text until
        the model writes `<tool_call>`; from there on it must be a call."""
        bodies = []
        for index, declaration in enumerate(declarations):
            arguments = {**parameters_schema(declaration), "$id": f"urn:openvertex:tool:{index}"}
            call = {
                "type": "object",
                "properties": {"name": {"const": declaration.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": False,
                "x-guidance": _JSON_OPTIONS,
            }
            bodies.append(f"call_{index}: %json {self._schema_text(call, param='tools')}")
        block = f'"{_lark(TOOL_CALL_TAG)}" "\\n" body "{_lark(TOOL_CALL_CLOSE)}"'
        if lazy:
            # A lazy lexeme matches free text up to the first trigger, then the call is forced.
            head = f'start: call* TEXT\nTEXT: /(.|\\n)*/\ncall_head[lazy]: TEXT "{_lark(TOOL_CALL_TAG)}"\n'
            head += f'call: call_head "\\n" body "{_lark(TOOL_CALL_CLOSE)}"\n'
        else:
            head = f'start: call ("\\n" call)*\ncall: {block}\n'
        body = "body: " + " | ".join(f"call_{i}" for i in range(len(declarations))) + "\n"
        lark = "%llguidance {}\n" + head + body + "\n".join(bodies) + "\n"
        return self._compile(llguidance.LLMatcher.grammar_from_lark(lark), "tools", lark)

    def _schema_text(self, schema: Any, *, param: str) -> str:
        try:
            text = json.dumps(schema)
        except (RecursionError, ValueError) as error:
            raise InvalidArgumentError(f"the schema cannot be read: {error}", param=param) from None
        if len(text) > self.limits.max_schema_bytes:
            raise InvalidArgumentError(
                f"the schema is {len(text)} bytes, over the limit of {self.limits.max_schema_bytes} bytes", param=param
            )
        return text

    def _compile(self, grammar: str, param: str, source: str) -> Grammar:
        key = hashlib.sha256(grammar.encode()).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        compiled = GRAMMAR_BUILDS.call(self._build, grammar, param, source)
        with self._lock:
            self._cache[key] = compiled
            while len(self._cache) > self.limits.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _build(self, grammar: str, param: str, source: str) -> Grammar:
        # Building the matcher drops the GIL: compiling here never stalls the engine thread.
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, limits=self._parser_limits, log_level=0)
        if not matcher.is_error():
            # A schema no value can even begin (a bare $ref cycle) compiles, and fails at its
            # first mask; one that only recurses without end is enforced as written.
            bitmask = llguidance.numpy.allocate_token_bitmask(1, self.tokenizer.vocab_size)
            llguidance.numpy.fill_next_token_bitmask(matcher, bitmask)
        if matcher.is_error():
            raise InvalidArgumentError(_explain(matcher.get_error(), source), param=param)
        return Grammar(matcher, self.tokenizer)


def _lark(text: str) -> str:
    """`text` inside a Lark string literal."""
    return json.dumps(text)[1:-1]


def _explain(error: str, source: str) -> str:
    """llguidance's message, with the keyword and where it sits in the schema when it names one."""
    message = " ".join(error.split()).removeprefix("Error: ")[:_MAX_MESSAGE] or "invalid schema"
    if "NoExtensionBias" in message:  # the first mask found no way to begin a value
        message = "no value can satisfy it (a $ref cycle, or constraints that exclude everything)"
    keyword = None
    if unimplemented := _UNIMPLEMENTED.search(message):
        keyword = unimplemented.group(1).split(",")[0].strip().strip("\"'")
    elif _UNKNOWN_FORMAT.search(message):
        keyword = "format"
    if keyword is not None:
        try:
            schema = json.loads(source)
        except ValueError:  # a Lark grammar: the message names the keyword already
            schema = None
        where = next(_keyword_paths(schema, keyword, "$"), None) if schema is not None else None
        if where is not None:
            message = f"{message} (keyword `{keyword}` at {where})"
    return f"the schema cannot be enforced: {message}"


def _keyword_paths(node: Any, keyword: str, path: str) -> Iterator[str]:
    """JSON paths where `keyword` is used as a schema keyword (not as a property name)."""
    stack: list[tuple[Any, str, bool]] = [(node, path, False)]
    while stack:
        current, where, is_names = stack.pop()
        if isinstance(current, dict):
            if keyword in current and not is_names:
                yield f"{where}.{keyword}"
            for key, value in reversed(current.items()):
                # The keys of `properties`, `$defs`, … are names, not keywords.
                names = not is_names and key in ("properties", "$defs", "definitions", "patternProperties")
                stack.append((value, f"{where}.{key}", names))
        elif isinstance(current, list):
            stack.extend((item, f"{where}[{i}]", False) for i, item in reversed(list(enumerate(current))))


def _json_schema(schema: Any) -> Any:
    """Gemini's OpenAPI subset as JSON Schema (`type: "OBJECT"` → "object", `nullable` → null),
    with objects closed: a missing `additionalProperties` means none, as in OpenAI's strict mode
    and Gemini (JSON Schema's "anything goes" lets a small model copy the schema into extra keys
    until max_tokens). Members of `allOf` stay open, where closing would make them unsatisfiable."""
    return _convert(schema, close=True)


_NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
# google-genai sends Gemini's Schema with its pydantic field names (`max_items`, `any_of`, …).
_SNAKE_KEYWORDS = {
    "any_of": "anyOf",
    "max_items": "maxItems",
    "min_items": "minItems",
    "max_length": "maxLength",
    "min_length": "minLength",
    "max_properties": "maxProperties",
    "min_properties": "minProperties",
    "property_ordering": "propertyOrdering",
}
_ANNOTATIONS = frozenset({"example", "x-guidance"})  # OpenAPI's example says nothing to enforce


def _convert(schema: Any, *, close: bool) -> Any:
    if isinstance(schema, list):
        return [_convert(item, close=close) for item in schema]
    if not isinstance(schema, dict):
        return schema
    converted: dict[str, Any] = {}
    for written, value in schema.items():
        key = str(_SNAKE_KEYWORDS.get(written, written))
        if key in _ANNOTATIONS:
            continue
        if key in ("enum", "const", "nullable") or not isinstance(value, dict | list):
            converted[key] = value
        elif key in _NAME_MAPS and isinstance(value, dict):  # names → schemas
            converted[key] = {prop: _convert(inner, close=True) for prop, inner in value.items()}
        else:
            converted[key] = _convert(value, close=key != "allOf")
    kind = converted.get("type")
    if isinstance(kind, str | list):
        converted["type"] = (
            kind.lower() if isinstance(kind, str) else [k.lower() if isinstance(k, str) else k for k in kind]
        )
    _formats_as_bounds(converted)
    ordering = converted.pop("propertyOrdering", None)
    properties = converted.get("properties")
    if isinstance(ordering, list) and isinstance(properties, dict):  # Gemini's: the order they are written in
        first = {name: properties[name] for name in ordering if isinstance(name, str) and name in properties}
        converted["properties"] = first | properties
    if close and "properties" in converted and not {"additionalProperties", "patternProperties"} & converted.keys():
        converted["additionalProperties"] = False
    return _with_null(converted) if converted.pop("nullable", None) is True else converted


# Gemini's Schema formats that JSON Schema validators do not hold: a number's range, written as
# the bounds they mean. `enum` (a STRING's, as the JS SDK writes it) only says that `enum` is set.
_FORMAT_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
    "float": (-3.4028234663852886e38, 3.4028234663852886e38),
}


def _formats_as_bounds(schema: dict[str, Any]) -> None:
    written = schema.get("format")
    if written == "enum":
        del schema["format"]
        return
    bounds = _FORMAT_RANGES.get(written) if isinstance(written, str) else None
    if bounds is None:
        return
    del schema["format"]
    low, high = bounds
    for key, bound, tighter in (("minimum", low, max), ("maximum", high, min)):
        given = schema.get(key, bound)
        if isinstance(given, int | float) and not isinstance(given, bool):
            schema[key] = tighter(given, bound)


def _with_null(schema: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI's `nullable`: null is one more choice, whatever the schema says otherwise."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    if isinstance(kind, list):
        return {**schema, "type": kind if "null" in kind else [*kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}  # anyOf, $ref, enum…


def parameters_schema(declaration: gc.FunctionDeclaration) -> dict[str, Any]:
    schema = declaration.parameters_json_schema or declaration.parameters
    if not schema:
        return {"type": "object", "properties": {}}
    converted: dict[str, Any] = _json_schema(schema)
    return converted
