"""Constrained decoding on the real vocabulary: what a compiled grammar admits and refuses,
and the 400s for schemas that cannot be enforced."""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest
from llama_cpp._internals import LlamaModel

from openvertex.backends.local.grammar import Grammar, GrammarCompiler, GrammarLimits
from openvertex.backends.local.sampling import Sampling, SequenceSampler
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc


@pytest.fixture(scope="module")
def compiler(model: LlamaModel) -> GrammarCompiler:
    eog = [t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(model.vocab, t)]
    return GrammarCompiler(model.vocab, eog, GrammarLimits(max_schema_bytes=64 * 1024))


def admits(grammar: Grammar, text: str) -> bool:
    """The whole text is allowed and the grammar may end after it."""
    matcher = grammar.matcher()
    tokens = grammar.tokenizer.tokenize_str(text)
    return matcher.try_consume_tokens(tokens) == len(tokens) and matcher.is_accepting()


def schema_grammar(compiler: GrammarCompiler, schema: dict[str, Any]) -> Grammar:
    grammar = compiler.response("application/json", schema, param="response_format")
    assert grammar is not None
    return grammar


def test_numeric_bounds_and_strict_strings_are_enforced(compiler: GrammarCompiler) -> None:
    grammar = schema_grammar(
        compiler,
        {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}}, "required": ["n"]},
    )
    assert admits(grammar, '{"n": 3}')
    assert not admits(grammar, '{"n": 123}')
    assert not admits(grammar, '{"n": -1}')
    text = schema_grammar(compiler, {"type": "string", "maxLength": 5})
    assert admits(text, '"ab\\tc"')
    assert not admits(text, '"ab\tc"')  # a raw control character is not JSON
    assert not admits(text, '"abcdef"')


def test_objects_are_closed_unless_the_schema_opens_them(compiler: GrammarCompiler) -> None:
    closed = schema_grammar(compiler, {"type": "object", "properties": {"a": {"type": "integer"}}})
    assert admits(closed, '{"a": 1}')
    assert not admits(closed, '{"a": 1, "b": 2}')
    opened = schema_grammar(
        compiler, {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": True}
    )
    assert admits(opened, '{"a": 1, "b": 2}')


def test_a_property_named_like_a_keyword_is_a_name(compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"nullable": {"type": "boolean"}, "properties": {"type": "integer"}}}
    grammar = schema_grammar(compiler, schema)
    assert admits(grammar, '{"nullable": true, "properties": 2}')


def test_gemini_openapi_types_and_refs(compiler: GrammarCompiler) -> None:
    grammar = schema_grammar(
        compiler,
        {
            "type": "OBJECT",
            "properties": {"city": {"type": "STRING", "nullable": True}, "home": {"$ref": "#/$defs/Place"}},
            "required": ["city", "home"],
            "$defs": {"Place": {"type": "object", "properties": {"zip": {"type": "string"}}, "required": ["zip"]}},
        },
    )
    assert admits(grammar, '{"city": null, "home": {"zip": "75001"}}')
    assert not admits(grammar, '{"city": null, "home": {"zip": 75001}}')


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "array", "uniqueItems": True}, "`uniqueItems` at $.uniqueItems"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "`not` at $.properties.a.not"),
        ({"type": "string", "format": "credit-card"}, "`format` at $.format"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "minimum (5) is greater than maximum (1)"),
        ({"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}, "no value can"),
        ({"type": "string", "pattern": "^(?=a)b$"}, "regex"),
        ({"type": "strin"}, "strin"),
        ({"enum": [f"value-{i}" for i in range(5000)]}, "over the limit of 65536 bytes"),
    ],
)
def test_what_cannot_be_enforced_is_a_400_naming_it(
    compiler: GrammarCompiler, schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        compiler.response("application/json", schema, param="response_format")
    assert raised.value.message.startswith("response_format: ")
    assert named in raised.value.message


def test_a_schema_is_compiled_once(compiler: GrammarCompiler) -> None:
    schema = {"type": "object", "properties": {"once": {"type": "string"}}}
    assert schema_grammar(compiler, schema) is schema_grammar(compiler, dict(schema))


def test_tool_calls_name_only_allowed_functions(compiler: GrammarCompiler) -> None:
    declarations = [
        gc.FunctionDeclaration(
            name="get_weather",
            parameters={"type": "OBJECT", "properties": {"city": {"type": "STRING", "nullable": True}}},
        ),
        gc.FunctionDeclaration(name="no_parameters"),
    ]
    forced = compiler.tool_calls(declarations[:1], lazy=False)
    assert admits(forced, '<tool_call>\n{"name": "get_weather", "arguments": {"city": null}}\n</tool_call>')
    assert not admits(forced, '<tool_call>\n{"name": "no_parameters", "arguments": {}}\n</tool_call>')
    assert not admits(forced, "Sure, here is the weather.")
    both = compiler.tool_calls(declarations, lazy=False)
    two = '<tool_call>\n{"name": "no_parameters", "arguments": {}}\n</tool_call>'
    assert admits(both, two + "\n" + two)


def test_a_lazy_grammar_holds_everything_after_the_trigger(compiler: GrammarCompiler) -> None:
    grammar = compiler.tool_calls([gc.FunctionDeclaration(name="f")], lazy=True)
    assert admits(grammar, "Just text, no call.")
    assert not admits(grammar, "Use <tool_call>, then JSON.")
    assert not admits(grammar, '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
    assert admits(grammar, 'Sure.\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>')


def test_text_after_the_reasoning_keeps_only_what_the_grammar_takes(
    model: LlamaModel, compiler: GrammarCompiler
) -> None:
    grammar = schema_grammar(compiler, {"type": "object", "properties": {"a": {"type": "integer"}}})
    sampling = Sampling(
        temperature=0.0,
        top_p=1.0,
        top_k=40,
        min_p=0.0,
        repeat_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        seed=1,
        max_tokens=8,
        stop=(),
        grammar=grammar,
    )
    sampler = SequenceSampler(model.vocab, model.n_vocab(), sampling, 1)
    try:
        assert sampler.begin_answer(' {"a": 1') == '{"a": 1'
    finally:
        sampler.free()
    sampler = SequenceSampler(model.vocab, model.n_vocab(), sampling, 1)
    try:
        assert sampler.begin_answer("Sure! {") == ""  # free text never reaches the answer
    finally:
        sampler.free()


def test_nullable_makes_null_one_more_choice_whatever_the_schema(compiler: GrammarCompiler) -> None:
    either = {"anyOf": [{"type": "integer"}, {"type": "string"}], "nullable": True}
    grammar = schema_grammar(compiler, {"type": "object", "properties": {"a": either}, "required": ["a"]})
    assert admits(grammar, '{"a": null}') and admits(grammar, '{"a": 1}')
    listed = schema_grammar(compiler, {"type": ["STRING", "INTEGER"], "nullable": True})
    assert admits(listed, "null") and admits(listed, "7")


def test_a_clients_x_guidance_cannot_loosen_the_output(compiler: GrammarCompiler) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "x-guidance": {"key_separator": " = ", "lenient": True},
    }
    grammar = schema_grammar(compiler, schema)
    assert admits(grammar, '{"a": 1}')
    assert not admits(grammar, '{"a" = 1}')
    with pytest.raises(InvalidArgumentError, match="uniqueItems"):
        compiler.response("application/json", {**schema, "uniqueItems": True}, param="response_format")


def test_gemini_formats_are_held(compiler: GrammarCompiler) -> None:
    # The JS SDK writes a string enum as `format: "enum"`; the numeric formats bound the number.
    colour = schema_grammar(compiler, {"type": "STRING", "format": "enum", "enum": ["red", "blue"]})
    assert admits(colour, '"red"') and not admits(colour, '"green"')
    small = schema_grammar(compiler, {"type": "INTEGER", "format": "int32"})
    assert admits(small, "2147483647") and not admits(small, "2147483648") and not admits(small, "-2147483649")
    bounded = schema_grammar(compiler, {"type": "INTEGER", "format": "int32", "minimum": 5, "maximum": 10**12})
    assert admits(bounded, "5") and not admits(bounded, "4") and not admits(bounded, "2147483648")
    unsigned = schema_grammar(compiler, {"type": "INTEGER", "format": "uint32"})
    assert admits(unsigned, "0") and not admits(unsigned, "-1")
