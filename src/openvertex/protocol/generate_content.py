"""Gemini GenerateContent wire types (REST JSON: lowerCamelCase on the wire, snake_case here).

Proto3 JSON leaves unset fields out, so these models serialise with `exclude_none`: for
this format absence and "not set" are the same thing.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class GeminiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Blob(GeminiModel):
    mime_type: str
    data: str  # base64


class FileData(GeminiModel):
    mime_type: str | None = None
    file_uri: str
    display_name: str | None = None


class PartialArg(GeminiModel):
    """One streamed piece of a call's arguments (streamFunctionCallArguments)."""

    json_path: str | None = None  # RFC 9535, e.g. "$.location"
    string_value: str | None = None
    number_value: float | None = None
    bool_value: bool | None = None
    null_value: Literal["NULL_VALUE"] | None = None
    will_continue: bool | None = None  # more of this path's string follows


class FunctionCall(GeminiModel):
    id: str | None = None
    name: str | None = None  # may be left out on a streamed call's later pieces
    args: dict[str, Any] | None = None
    partial_args: list[PartialArg] | None = None
    will_continue: bool | None = None  # more pieces of this call follow


class FunctionResponsePart(GeminiModel):
    inline_data: Blob | None = None
    file_data: FileData | None = None


class FunctionResponse(GeminiModel):
    id: str | None = None
    name: str
    response: dict[str, Any]
    parts: list[FunctionResponsePart] | None = None


class PartMediaResolution(GeminiModel):
    level: str


class Part(GeminiModel):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    media_resolution: PartMediaResolution | None = None


Role = Literal["user", "model"]


class Content(GeminiModel):
    role: Role | None = None
    parts: list[Part]


class ThinkingConfig(GeminiModel):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None


class GenerationConfig(GeminiModel):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    candidate_count: int | None = None
    max_output_tokens: int | None = None
    stop_sequences: list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    response_mime_type: str | None = None
    response_json_schema: dict[str, Any] | None = None
    response_modalities: list[str] | None = None
    response_logprobs: bool | None = None
    logprobs: int | None = None  # how many top candidates per position
    media_resolution: str | None = None
    thinking_config: ThinkingConfig | None = None


class SafetySetting(GeminiModel):
    category: str
    threshold: str
    method: str | None = None


class FunctionDeclaration(GeminiModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # Gemini's OpenAPI 3.0 subset
    parameters_json_schema: dict[str, Any] | None = None


class Tool(GeminiModel):
    # Native tools (googleSearch, codeExecution, urlContext, …) are kept as given.
    model_config = ConfigDict(extra="allow")
    function_declarations: list[FunctionDeclaration] | None = None
    google_search: dict[str, Any] | None = None


class FunctionCallingConfig(GeminiModel):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED"] | None = None
    allowed_function_names: list[str] | None = None
    stream_function_call_arguments: bool | None = None


class ToolConfig(GeminiModel):
    function_calling_config: FunctionCallingConfig | None = None


class GenerateContentRequest(GeminiModel):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    safety_settings: list[SafetySetting] | None = None
    cached_content: str | None = None
    labels: dict[str, str] | None = None
    generation_config: GenerationConfig | None = None


class LogprobsCandidate(GeminiModel):
    token: str | None = None
    token_id: int | None = None
    log_probability: float | None = None


class TopCandidates(GeminiModel):
    candidates: list[LogprobsCandidate] | None = None


class LogprobsResult(GeminiModel):
    top_candidates: list[TopCandidates] | None = None
    chosen_candidates: list[LogprobsCandidate] | None = None


class Candidate(GeminiModel):
    index: int | None = None
    content: Content | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    logprobs_result: LogprobsResult | None = None
    avg_logprobs: float | None = None


class UsageMetadata(GeminiModel):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    cached_content_token_count: int | None = None
    total_token_count: int | None = None
    traffic_type: str | None = None


class PromptFeedback(GeminiModel):
    block_reason: str | None = None
    block_reason_message: str | None = None


class GenerateContentResponse(GeminiModel):
    candidates: list[Candidate] | None = None
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    create_time: str | None = None


def current_turn_start(contents: list[Content]) -> int:
    """Index of the current turn's first content: the one after the last user message that is not
    only function responses (Gemini's rule for thought signatures; Qwen3's template keeps the
    thoughts of this turn alone)."""
    start = 0
    for index, content in enumerate(contents):
        if content.role != "model" and not all(p.function_response is not None for p in content.parts):
            start = index + 1
    return start
