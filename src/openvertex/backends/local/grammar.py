"""Constrained decoding: JSON mode and JSON Schema become a GBNF grammar for llama.cpp."""

from __future__ import annotations

import json
from typing import Any

import llama_cpp
from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from openvertex.errors import InvalidArgumentError

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


def check_grammar(vocab: llama_cpp.llama_vocab_p, grammar: str) -> None:
    """llama.cpp returns NULL for a grammar it cannot parse; find out before decoding with it."""
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise InvalidArgumentError("the JSON schema in response_format produced a grammar llama.cpp cannot parse")
    llama_cpp.llama_sampler_free(sampler)
