"""The native surfaces' JSON ↔ the internal GenerateContentRequest/Response (pure).

Requests arrive in lowerCamelCase or snake_case (the protocol models take both) and carry
bytes in either base64 alphabet; inside, bytes are standard base64. Responses go out in
camelCase with what each dialect adds: Vertex's `createTime` and `trafficType`, usage per modality.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import UTC, datetime
from typing import Any

from pydantic.alias_generators import to_camel

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import enums
from openvertex.protocol import generate_content as gc
from openvertex.translate.schema import check_not_recursive
from openvertex.translate.tables import (
    FUNCTION_NAME_PATTERN,
    MAX_FUNCTION_DECLARATIONS,
    MAX_STOP_SEQUENCES,
    SKIP_THOUGHT_SIGNATURE,
    THINKING_LEVELS,
)

_NAME = re.compile(FUNCTION_NAME_PATTERN)
JSON_MIME = "application/json"


def format_time(seconds: float) -> str:
    """RFC 3339 in UTC, as Google writes timestamps."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def standard_base64(value: str, *, field: str) -> str:
    """Bytes as standard, padded base64; URL-safe or unpadded input is accepted (proto3 JSON)."""
    text = value.strip().replace("-", "+").replace("_", "/")
    text += "=" * (-len(text) % 4)
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(
            f"Invalid value at '{field}' (TYPE_BYTES), Base64 decoding failed for \"{value[:64]}\""
        ) from None
    return text


def _signature(value: str, *, field: str) -> str:
    if value == SKIP_THOUGHT_SIGNATURE:
        return value
    text = standard_base64(value, field=field)
    # The SDK sends bytes: the dummy signature arrives base64-encoded.
    return SKIP_THOUGHT_SIGNATURE if base64.b64decode(text) == SKIP_THOUGHT_SIGNATURE.encode() else text


def _normalize_parts(parts: list[gc.Part], path: str) -> None:
    for position, part in enumerate(parts):
        field = f"{path}.parts[{position}]"
        if part.thought_signature:
            part.thought_signature = _signature(part.thought_signature, field=f"{field}.thought_signature")
        if part.inline_data is not None:
            part.inline_data.data = standard_base64(part.inline_data.data, field=f"{field}.inline_data.data")
        response = part.function_response
        for index, media in enumerate(response.parts or [] if response else []):
            if media.inline_data is not None:
                media.inline_data.data = standard_base64(
                    media.inline_data.data, field=f"{field}.function_response.parts[{index}].inline_data.data"
                )


def _check_schemas(config: gc.GenerationConfig) -> None:
    if config.response_schema is not None and config.response_json_schema is not None:
        raise InvalidArgumentError(
            "response_schema and response_json_schema cannot both be set", param="generationConfig.responseJsonSchema"
        )
    schema = config.response_json_schema if config.response_json_schema is not None else config.response_schema
    if schema is None:
        return
    name = "responseJsonSchema" if config.response_json_schema is not None else "responseSchema"
    if config.response_mime_type != JSON_MIME:
        raise InvalidArgumentError(
            f"{name} requires responseMimeType {JSON_MIME!r}", param="generationConfig.responseMimeType"
        )
    check_not_recursive(schema, param=f"generationConfig.{name}")


def _check_tools(tools: list[gc.Tool]) -> set[str]:
    names: set[str] = set()
    count = 0
    for index, tool in enumerate(tools):
        for position, declaration in enumerate(tool.function_declarations or []):
            path = f"tools[{index}].functionDeclarations[{position}]"
            if not _NAME.fullmatch(declaration.name):
                raise InvalidArgumentError(
                    "a function name must start with a letter or underscore, use only a-z, A-Z, 0-9, _, . and -,"
                    " and be at most 64 characters",
                    param=f"{path}.name",
                )
            if declaration.parameters is not None and declaration.parameters_json_schema is not None:
                raise InvalidArgumentError(
                    "parameters and parameters_json_schema cannot both be set", param=f"{path}.parametersJsonSchema"
                )
            schema = declaration.parameters_json_schema or declaration.parameters
            if schema is not None:
                check_not_recursive(schema, param=f"{path}.parameters")
            names.add(declaration.name)
            count += 1
    if count > MAX_FUNCTION_DECLARATIONS:
        raise InvalidArgumentError(
            f"at most {MAX_FUNCTION_DECLARATIONS} function declarations are allowed", param="tools"
        )
    return names


# generationConfig fields with Gemini's ranges: (low, high, high included).
_RANGES = {
    "temperature": (0.0, 2.0, True),
    "top_p": (0.0, 1.0, True),
    "top_k": (1, 1 << 31, False),
    "candidate_count": (1, 1 << 31, False),
    "max_output_tokens": (1, 1 << 31, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "logprobs": (0, 20, True),
}


def _check_ranges(config: gc.GenerationConfig) -> None:
    for name, (low, high, inclusive) in _RANGES.items():
        value = getattr(config, name)
        if value is not None and not (low <= value <= high if inclusive else low <= value < high):
            bound = f"{high}]" if inclusive else f"{high})"
            raise InvalidArgumentError(
                f"must be in [{low}, {bound}, got {value}", param=f"generationConfig.{to_camel(name)}"
            )
    if len(config.stop_sequences or []) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(
            f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed", param="generationConfig.stopSequences"
        )
    if any(not sequence for sequence in config.stop_sequences or []):
        raise InvalidArgumentError("stop sequences must not be empty", param="generationConfig.stopSequences")
    thinking = config.thinking_config
    if thinking is None:
        return
    if thinking.thinking_budget is not None and thinking.thinking_budget < -1:
        raise InvalidArgumentError(
            "must be -1 (dynamic), 0 (off) or a positive token count",
            param="generationConfig.thinkingConfig.thinkingBudget",
        )
    if thinking.thinking_level is not None and thinking.thinking_level.upper() not in THINKING_LEVELS:
        raise InvalidArgumentError(
            f"must be one of {', '.join(sorted(THINKING_LEVELS))}, got {thinking.thinking_level!r}",
            param="generationConfig.thinkingConfig.thinkingLevel",
        )
    if thinking.thinking_level is not None and thinking.thinking_budget is not None:
        raise InvalidArgumentError(
            "thinking_level and thinking_budget cannot both be set", param="generationConfig.thinkingConfig"
        )


def check_native_request(request: gc.GenerateContentRequest, *, contents_required: bool = True) -> None:
    """Bytes to standard base64, and the rules Gemini enforces on native requests (400s naming the
    field). A context cache may hold no contents; a request on one may add none."""
    if not request.contents and contents_required and request.cached_content is None:
        raise InvalidArgumentError("contents is not specified", param="contents")
    for index, content in enumerate(request.contents):
        if not content.parts:
            raise InvalidArgumentError(
                "Unable to submit request because it must include at least one parts field, which describes the "
                "prompt input.",
                param=f"contents[{index}].parts",
            )
        _normalize_parts(content.parts, f"contents[{index}]")
    if request.system_instruction is not None:
        _normalize_parts(request.system_instruction.parts, "system_instruction")
    names = _check_tools(request.tools or [])
    config = request.generation_config
    if config is not None:
        _check_schemas(config)
        _check_ranges(config)
    calling = request.tool_config.function_calling_config if request.tool_config else None
    for name in (calling.allowed_function_names or []) if calling else []:
        if name not in names and request.cached_content is None:  # a cache may declare them
            raise InvalidArgumentError(
                f"names a function that is not declared: {name!r}",
                param="toolConfig.functionCallingConfig.allowedFunctionNames",
            )


def count_tokens_request(body: gc.CountTokensRequest) -> gc.GenerateContentRequest:
    if body.generate_content_request is not None:
        given = body.model_dump(exclude_none=True, exclude={"generate_content_request", "model"})
        if given:
            raise InvalidArgumentError(
                f"set generateContentRequest or {', '.join(map(to_camel, sorted(given)))}, not both",
                param="generateContentRequest",
            )
        return body.generate_content_request
    return gc.GenerateContentRequest(
        contents=body.contents or [],
        system_instruction=body.system_instruction,
        tools=body.tools,
        generation_config=body.generation_config,
    )


def _text_tokens(count: int | None) -> list[gc.ModalityTokenCount] | None:
    return [gc.ModalityTokenCount(modality="TEXT", token_count=count)] if count else None


def render_response(
    response: gc.GenerateContentResponse,
    *,
    dialect: gc.Dialect,
    model_version: str,
    response_id: str,
    create_time: str,
) -> dict[str, Any]:
    """One response (or stream chunk) as the dialect writes it."""
    response.model_version = model_version
    response.response_id = response_id
    response.create_time = create_time if dialect == "vertex" else None
    if dialect == "vertex":  # proto3 JSON leaves a zero out: Vertex writes no index for the first candidate
        for candidate in response.candidates or []:
            if candidate.index == 0:
                candidate.index = None
    usage = response.usage_metadata
    if usage is not None:
        for name in _COUNTS:  # zero counts are left out too, as Google writes them
            if getattr(usage, name) == 0:
                setattr(usage, name, None)
        usage.prompt_tokens_details = usage.prompt_tokens_details or _text_tokens(usage.prompt_token_count)
        usage.cache_tokens_details = usage.cache_tokens_details or _text_tokens(usage.cached_content_token_count)
        usage.candidates_tokens_details = usage.candidates_tokens_details or _text_tokens(usage.candidates_token_count)
        if dialect == "gemini":
            usage.traffic_type = None
    return response.to_json_dict()


_COUNTS = (
    "prompt_token_count",
    "candidates_token_count",
    "thoughts_token_count",
    "cached_content_token_count",
    "total_token_count",
)


def billable_characters(request: gc.GenerateContentRequest) -> int:
    """Vertex's `totalBillableCharacters`: the prompt's text (system instruction included) without
    its whitespace, as Vertex counts it (a recorded countTokens of a 30- and a 26-character text
    answered 47)."""
    system = [request.system_instruction] if request.system_instruction is not None else []
    return sum(
        len(part.text) - sum(map(str.isspace, part.text))
        for content in [*system, *request.contents]
        for part in content.parts
        if part.text
    )


def wants_enum_numbers(alt: str | None) -> bool:
    """`$alt=json;enum-encoding=int`, as Google's generated REST clients ask for answers."""
    return alt is not None and "enum-encoding=int" in alt.replace(" ", "").split(";")


def with_enum_numbers(body: dict[str, Any], dialect: gc.Dialect) -> dict[str, Any]:
    """A rendered answer (or countTokens answer) with its enums as numbers, in `dialect`'s numbering."""
    for candidate in body.get("candidates") or []:
        _number(candidate, "finishReason", enums.FINISH_REASON[dialect])
        _ratings_numbered(candidate.get("safetyRatings"), dialect)
    feedback = body.get("promptFeedback")
    if isinstance(feedback, dict):
        _number(feedback, "blockReason", enums.BLOCK_REASON[dialect])
        _ratings_numbered(feedback.get("safetyRatings"), dialect)
    usage = body.get("usageMetadata")
    for holder in (usage, body):
        if not isinstance(holder, dict):
            continue
        _number(holder, "trafficType", enums.TRAFFIC_TYPE)
        for key in (
            "promptTokensDetails",
            "cacheTokensDetails",
            "candidatesTokensDetails",
            "toolUsePromptTokensDetails",
        ):
            for detail in holder.get(key) or []:
                _number(detail, "modality", enums.TOKEN_MODALITY)
    return body


def _ratings_numbered(ratings: Any, dialect: gc.Dialect) -> None:
    for rating in ratings or []:
        _number(rating, "category", enums.HARM_CATEGORY[dialect])
        _number(rating, "probability", enums.HARM_PROBABILITY)
        _number(rating, "severity", enums.HARM_SEVERITY)


def _number(holder: Any, key: str, table: enums.Table) -> None:
    if isinstance(holder, dict) and key in holder:
        holder[key] = enums.number_of(holder[key], table)
