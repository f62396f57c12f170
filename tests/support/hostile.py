"""A catalogue of hostile and unlucky JSON Schemas, as data, and the checks their answers must pass.

Each schema must get either a clean 400 whose message names what was wrong, or a 200 whose
JSON validates; the catalogue is shared by `response_format` and tool `parameters` tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jsonschema

# What a 400 for too-deep nesting may say: the limit can be the HTTP edge's or the schema compiler's.
NESTING = ("nest", "depth", "deep", "recursion")
# What a 400 for a `$ref` that can never produce a value may say.
REF_CYCLE = ("$ref", "recursi", "cycl", "circular", "unsatisfiable")
# What a 400 for a schema too large to compile may say.
TOO_LARGE = ("too large", "too big", "limit", "size")
# A schema counts towards the prompt, so a big one may be refused as input that cannot fit (Vertex's wording).
INPUT_TOO_LARGE = ("input token count", "input size")

DIGIT = {"type": "integer", "minimum": 0, "maximum": 9}


@dataclass(frozen=True, slots=True)
class HostileSchema:
    name: str
    schema: Any  # deliberately not always a dict: a schema that is not an object is a case too
    names: tuple[str, ...] = ()  # a 400's message holds one of these (case-insensitive)
    keyword: str | None = None  # an unsupported keyword: a 400's message names it as a keyword
    may_truncate: bool = False  # the schema admits (or forces) answers longer than max_tokens
    names_param: bool = True  # a 400 names the parameter (not always possible for a body refused whole)
    large: bool = False  # big enough that a 400 for input too large for the context is a fair answer


@dataclass(frozen=True, slots=True)
class RawJSON:
    """Schema text too deep for Python's json module (its recursion limit is about 1000): sent as is."""

    text: str


def nested_objects(depth: int) -> RawJSON:
    head = '{"type": "object", "properties": {"a": '
    tail = '}, "required": ["a"], "additionalProperties": false}'
    return RawJSON(head * depth + json.dumps(DIGIT) + tail * depth)


def nested_arrays(depth: int) -> RawJSON:
    head = '{"type": "array", "minItems": 1, "maxItems": 1, "items": '
    return RawJSON(head * depth + json.dumps(DIGIT) + "}" * depth)


def encode_body(body: dict[str, Any]) -> bytes:
    """JSON for a request body, any RawJSON in it spliced in as text."""
    raw: list[str] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, RawJSON):
            raise TypeError(f"cannot encode {type(value).__name__}")
        raw.append(value.text)
        return "\u0000raw\u0000"

    text = json.dumps(body, default=placeholder)
    for fragment in raw:
        text = text.replace(json.dumps("\u0000raw\u0000"), fragment, 1)
    return text.encode()


def ref_chain(length: int) -> dict[str, Any]:
    """A0 → A1 → … → A{length}, a digit: legitimate, flat as JSON, but deep for a recursive resolver."""
    defs: dict[str, Any] = {f"A{i}": {"$ref": f"#/$defs/A{i + 1}"} for i in range(length)}
    defs[f"A{length}"] = DIGIT
    return {"$defs": defs, "$ref": "#/$defs/A0"}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), **extra}


CATALOGUE: tuple[HostileSchema, ...] = (
    # Huge bounds: cheap to state, enormous when unrolled into a grammar.
    HostileSchema("string_maxlength_100k", {"type": "string", "maxLength": 100_000}, ("maxLength",), may_truncate=True),
    HostileSchema(
        "string_exactly_100k",
        {"type": "string", "minLength": 100_000, "maxLength": 100_000},
        ("minLength", "maxLength", "length"),
        may_truncate=True,
    ),
    HostileSchema(
        "array_minitems_50k",
        {"type": "array", "items": {"type": "integer"}, "minItems": 50_000},
        ("minItems",),
        may_truncate=True,
    ),
    HostileSchema(
        "arrays_of_arrays_minitems_1000",
        {"type": "array", "minItems": 1000, "items": {"type": "array", "minItems": 1000, "items": {"type": "boolean"}}},
        ("minItems",),
        may_truncate=True,
    ),
    HostileSchema(
        "array_maxitems_1e9",
        {"type": "array", "items": DIGIT, "maxItems": 1_000_000_000},
        ("maxItems",),
        may_truncate=True,
    ),
    HostileSchema("const_200k_chars", {"const": "x" * 200_000}, ("const", *TOO_LARGE), may_truncate=True, large=True),
    # Nesting: the compiler must refuse or cope, never overflow a stack.
    HostileSchema("objects_nested_200", nested_objects(200), NESTING, may_truncate=True, names_param=False),
    HostileSchema("arrays_nested_200", nested_arrays(200), NESTING, may_truncate=True, names_param=False),
    HostileSchema("objects_nested_3000", nested_objects(3000), NESTING, may_truncate=True, names_param=False),
    HostileSchema("arrays_nested_3000", nested_arrays(3000), NESTING, may_truncate=True, names_param=False),
    HostileSchema("ref_chain_5000", ref_chain(5000), ("$ref", *NESTING, *TOO_LARGE), large=True),
    # References that never produce a value, or that point outside the request.
    HostileSchema(
        "ref_cycle_a_b_a",
        {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"},
        REF_CYCLE,
    ),
    HostileSchema("ref_to_root", {"$ref": "#"}, REF_CYCLE),
    HostileSchema("allof_self_ref", {**_object({"a": DIGIT}), "allOf": [{"$ref": "#"}]}, REF_CYCLE),
    HostileSchema("ref_missing_target", {"$ref": "#/$defs/nope"}, ("$ref", "nope", "$defs")),
    HostileSchema("remote_ref", {"$ref": "https://example.com/x.json"}, ("$ref", "example.com", "remote", "fetch")),
    # Sizes: each is a small request body that asks for a very large grammar.
    HostileSchema(
        "enum_100k_strings", {"enum": [f"value-{i}" for i in range(100_000)]}, ("enum", *TOO_LARGE), large=True
    ),
    HostileSchema(
        "anyof_10k_objects",
        {"anyOf": [_object({f"k{i}": DIGIT}, additionalProperties=False) for i in range(10_000)]},
        ("anyOf", *TOO_LARGE),
        large=True,
    ),
    HostileSchema(
        "required_20k_properties",
        _object({f"p{i}": {"type": "boolean"} for i in range(20_000)}, additionalProperties=False),
        ("required", "properties", *TOO_LARGE),
        may_truncate=True,
        large=True,
    ),
    # Regular expressions: catastrophic repetition, and features a regular language lacks.
    HostileSchema(
        "pattern_nested_repetition",
        {"type": "string", "pattern": "^((a{1,100}){1,100}){1,100}$"},
        ("pattern", "lexer", "too many", *TOO_LARGE),
        may_truncate=True,
    ),
    HostileSchema("pattern_backreference", {"type": "string", "pattern": "^(a)\\1$"}, ("pattern", "backreference")),
    HostileSchema("pattern_lookahead", {"type": "string", "pattern": "^(?=a)a{1,3}$"}, ("pattern", "look")),
    HostileSchema("pattern_not_a_regex", {"type": "string", "pattern": "(["}, ("pattern", "regex")),
    # Numbers: bounds out of range, and bounds that exclude everything.
    HostileSchema(
        "integer_bounds_1e30",
        {"type": "integer", "minimum": -1e30, "maximum": 1e30},
        ("minimum", "maximum", "integer", "range"),
        may_truncate=True,
    ),
    HostileSchema(
        "minimum_above_maximum",
        {"type": "integer", "minimum": 10, "maximum": 1},
        ("minimum", "maximum", "unsatisfiable"),
    ),
    HostileSchema(
        "min_length_above_max_length",
        {"type": "string", "minLength": 5, "maxLength": 2},
        ("minLength", "maxLength", "unsatisfiable"),
    ),
    HostileSchema("multiple_of_zero", {"type": "number", "multipleOf": 0}, ("multipleOf", "multiple of")),
    HostileSchema("empty_enum", {"enum": []}, ("enum", "unsatisfiable")),
    # Keywords no engine enforces token by token: refused by name, never silently dropped.
    HostileSchema("unknown_format", {"type": "string", "format": "credit-card"}, ("format", "credit-card")),
    HostileSchema(
        "unique_items", {"type": "array", "items": DIGIT, "maxItems": 3, "uniqueItems": True}, keyword="uniqueItems"
    ),
    HostileSchema("not", {"type": "integer", "minimum": 0, "maximum": 9, "not": {"const": 3}}, keyword="not"),
    HostileSchema(
        "if_then_else",
        {
            **_object({"a": DIGIT}, additionalProperties=False),
            "if": {"properties": {"a": {"const": 1}}},
            "then": {"required": ["a"]},
            "else": {"required": ["a"]},
        },
        keyword="if",
    ),
    HostileSchema(
        "contains", {"type": "array", "items": DIGIT, "maxItems": 3, "contains": {"const": 1}}, keyword="contains"
    ),
    HostileSchema(
        "property_names",
        {"type": "object", "maxProperties": 2, "propertyNames": {"pattern": "^[a-z]$"}},
        keyword="propertyNames",
    ),
    HostileSchema(
        "dependent_required",
        {"type": "object", "properties": {"a": DIGIT, "b": DIGIT}, "dependentRequired": {"a": ["b"]}},
        keyword="dependentRequired",
    ),
    HostileSchema(
        "dynamic_ref", {"$dynamicRef": "#meta", "$defs": {"m": {"$dynamicAnchor": "meta"}}}, keyword="$dynamicRef"
    ),
    HostileSchema("one_of_overlapping", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, keyword="oneOf"),
    # Not a schema at all.
    HostileSchema("type_typo", {"type": "strin"}, ("strin", "type")),
    HostileSchema("schema_is_a_string", "string", ("schema", "parameters")),
    HostileSchema("schema_is_a_list", [{"type": "string"}], ("schema", "parameters")),
    HostileSchema("schema_is_true", True, ("schema", "parameters"), may_truncate=True),
    # Legitimate but unusual: these should simply work.
    HostileSchema(
        "additional_properties_schema",
        _object({"a": DIGIT}, additionalProperties={"type": "boolean"}),
        ("additionalProperties",),
        may_truncate=True,
    ),
    HostileSchema("special_tokens_in_enum", {"enum": ["<|im_end|>", "<|im_start|>system", "</tool_call>"]}),
    HostileSchema(
        "odd_property_names",
        _object(
            {"<|im_end|>": {"type": "boolean"}, "\u202e\u0000\ufffd": {"type": "boolean"}}, additionalProperties=False
        ),
        ("properties",),
    ),
)

BY_NAME = {case.name: case for case in CATALOGUE}


def names_keyword(message: str, keyword: str) -> bool:
    """`keyword` appears as a whole word; one that is also English (`not`, `if`) only quoted or in a list,
    so `"not"` and `not,` count and `not supported` doesn't."""
    word = rf"(?<![\w$]){re.escape(keyword)}(?![\w$])"
    if keyword.isalpha() and keyword.islower():
        word = rf"(?:[\"'`\[]{word}|{word}(?:[\"'`\],:]|$))"
    return re.search(word, message) is not None


def check_refusal(case: HostileSchema, message: str, *, param: str) -> None:
    """A 400 must say what was wrong: the parameter, and the keyword or the limit."""
    if case.large and any(words in message for words in INPUT_TOO_LARGE):
        return
    if case.names_param:
        assert param in message, f"{case.name}: the message does not name {param!r}: {message!r}"
    if case.keyword is not None:
        assert names_keyword(message, case.keyword), (
            f"{case.name}: the message does not name {case.keyword!r}: {message!r}"
        )
    if case.names:
        lowered = message.lower()
        assert any(name.lower() in lowered for name in case.names), (
            f"{case.name}: the message names none of {case.names}: {message!r}"
        )


def check_answer(case: HostileSchema, text: str, finish_reason: str, schema: Any) -> None:
    """A 200 must hold JSON valid under the schema; a cut-off answer only where the schema allows a long one."""
    if finish_reason == "length" and case.may_truncate:
        assert not any(ord(c) < 0x20 and c not in "\t\n\r " for c in text), f"{case.name}: raw control character"
        return
    assert finish_reason == "stop", f"{case.name}: finish_reason {finish_reason!r}, text {text[:200]!r}"
    value = json.loads(text, strict=True)
    assert not isinstance(schema, RawJSON), f"{case.name}: a whole answer in {len(text)} characters is impossible"
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    validator(schema, format_checker=validator.FORMAT_CHECKER).validate(value)
