"""Grammar compile time on the embedded model's vocabulary: typical schemas, the worst cases
llguidance still accepts, and how fast it refuses hostile ones (each a cold compile: the
cache is bypassed by a unique `$comment`).

    .venv/bin/python benchmarks/grammar_compile.py [--repeat 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median
from typing import Any

import llama_cpp
from llama_cpp._internals import LlamaModel

from openvertex.backends.local.grammar import GrammarCompiler, GrammarLimits
from openvertex.backends.local.model import resolve_model_path
from openvertex.errors import InvalidArgumentError
from openvertex.protocol import generate_content as gc


def _person() -> dict[str, Any]:
    address = {
        "type": "object",
        "properties": {"street": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
        "required": ["street", "zip"],
    }
    return {
        "$defs": {"Address": address},
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "born": {"type": "string", "format": "date"},
            "kind": {"enum": ["a", "b", "c"]},
            "addresses": {"type": "array", "items": {"$ref": "#/$defs/Address"}, "maxItems": 2},
        },
        "required": ["name", "age", "born", "kind", "addresses"],
    }


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


SCHEMAS: dict[str, dict[str, Any]] = {
    "typical: int range": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 5}}},
    "typical: pydantic with $defs": _person(),
    "large: enum of 10k strings": {"enum": [f"item-{i}" for i in range(10_000)]},
    "large: 2000 properties": {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(2000)}},
    "large: nesting 40 objects": _nested(40),
    "large: string maxLength 100000": {"type": "string", "maxLength": 100_000},
    "hostile: enum of 60k strings": {"enum": [f"value-{i}" for i in range(60_000)]},
    "hostile: anyOf of 10k objects": {
        "anyOf": [{"type": "object", "properties": {f"k{i}": {"type": "integer"}}} for i in range(10_000)]
    },
    "hostile: $ref cycle": {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"},
}


def _tools(count: int) -> list[gc.FunctionDeclaration]:
    return [gc.FunctionDeclaration(name=f"tool_{i}", parameters_json_schema=_person()) for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/grammar_compile.json"))
    args = parser.parse_args()
    model = LlamaModel(
        path_model=str(resolve_model_path("smollm2")), params=llama_cpp.llama_model_default_params(), verbose=False
    )
    started = time.perf_counter()
    eog = [t for t in range(model.n_vocab()) if llama_cpp.llama_vocab_is_eog(model.vocab, t)]
    compiler = GrammarCompiler(model.vocab, eog, GrammarLimits(max_schema_bytes=4 << 20))
    results: dict[str, Any] = {"tokenizer_build_s": time.perf_counter() - started, "schemas": {}}
    print(f"{'tokenizer build':>34}: {results['tokenizer_build_s'] * 1000:8.1f} ms (once per model)")
    cases: dict[str, Any] = {name: ("schema", schema) for name, schema in SCHEMAS.items()}
    cases |= {"tools: 5 forced calls": ("tools", 5), "tools: 50 lazy calls": ("tools", 50)}
    for name, (kind, value) in cases.items():
        times, outcome = [], "compiled"
        for attempt in range(args.repeat):
            began = time.perf_counter()
            try:
                if kind == "schema":
                    compiler.response("application/json", {**value, "$comment": f"{attempt}"}, param="schema")
                else:
                    declarations = _tools(value)
                    declarations[0].name = f"tool_{attempt}_0"  # a new grammar text each time
                    compiler.tool_calls(declarations, lazy=value > 10)
            except InvalidArgumentError as error:
                outcome = "refused: " + error.message[:80]
            times.append(time.perf_counter() - began)
        results["schemas"][name] = {"median_ms": median(times) * 1000, "max_ms": max(times) * 1000, "outcome": outcome}
        print(f"{name:>34}: {median(times) * 1000:8.1f} ms median, {max(times) * 1000:8.1f} max  {outcome}")
    model.close()  # type: ignore[no-untyped-call]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
