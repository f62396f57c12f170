"""Sampling, length, output format and thinking parameters → generationConfig (spec §2.1, §2.5, §2.6)."""

from __future__ import annotations

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.schema import check_not_recursive
from openvertex.translate.tables import (
    MAX_STOP_SEQUENCES,
    MODALITY_TO_GEMINI,
    REASONING_EFFORT_TO_BUDGET,
    RESPONSE_FORMAT_TO_MIME,
)


def stop_to_sequences(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    sequences = [stop] if isinstance(stop, str) else stop
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise InvalidArgumentError(
            f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed, got {len(sequences)}", param="stop"
        )
    for index, sequence in enumerate(sequences):
        if not sequence:
            raise InvalidArgumentError(
                "stop sequences must not be empty", param="stop" if isinstance(stop, str) else f"stop[{index}]"
            )
    return sequences or None


def _apply_response_format(config: gc.GenerationConfig, response_format: oa.ResponseFormat) -> None:
    kind = response_format.type
    mime = RESPONSE_FORMAT_TO_MIME.get(kind, kind)
    if "/" not in mime:
        raise InvalidArgumentError(f"unknown response format type {kind!r}", param="response_format.type")
    config.response_mime_type = mime
    if kind != "json_schema":
        return
    if response_format.json_schema is None or response_format.json_schema.schema_ is None:
        raise InvalidArgumentError(
            "a json_schema response format needs json_schema.schema", param="response_format.json_schema"
        )
    schema = response_format.json_schema.schema_
    check_not_recursive(schema, param="response_format.json_schema.schema")
    config.response_json_schema = schema


def _thinking_config(request: oa.ChatCompletionRequest) -> gc.ThinkingConfig | None:
    thinking = request.google_extensions.thinking_config
    if request.reasoning_effort is not None:
        if thinking is not None:
            raise InvalidArgumentError(
                "reasoning_effort and extra_body.google.thinking_config cannot be used together",
                param="reasoning_effort",
            )
        return gc.ThinkingConfig(thinking_budget=REASONING_EFFORT_TO_BUDGET[request.reasoning_effort])
    if thinking is None:
        return None
    if thinking.thinking_budget is not None and thinking.thinking_budget < -1:
        raise InvalidArgumentError(
            "must be -1 (dynamic), 0 (off) or a positive token count",
            param="extra_body.google.thinking_config.thinking_budget",
        )
    return gc.ThinkingConfig.model_validate(thinking.model_dump(exclude_none=True))


def request_to_generation_config(request: oa.ChatCompletionRequest) -> gc.GenerationConfig:
    # max_completion_tokens wins when both are sent (spec §2.1 [I]).
    max_tokens = request.max_completion_tokens if request.max_completion_tokens is not None else request.max_tokens
    config = gc.GenerationConfig(
        temperature=request.temperature,
        top_p=request.top_p,
        candidate_count=request.n,
        max_output_tokens=max_tokens,
        stop_sequences=stop_to_sequences(request.stop),
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        seed=request.seed,
        media_resolution=request.google_extensions.media_resolution,
        thinking_config=_thinking_config(request),
    )
    if request.response_format is not None:
        _apply_response_format(config, request.response_format)
    if request.logprobs:
        config.response_logprobs = True
        config.logprobs = request.top_logprobs
    if request.modalities is not None:
        config.response_modalities = [MODALITY_TO_GEMINI[m] for m in request.modalities]
    return config
