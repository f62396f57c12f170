"""Gemini GenerateContent wire types (REST JSON: lowerCamelCase on the wire, snake_case here).

Proto3 JSON leaves unset fields out, so these models serialise with `exclude_none`: for
this format absence and "not set" are the same thing.
"""

from __future__ import annotations

import json
import types
import typing
from functools import cache
from typing import Any, Literal, Self

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

from openvertex.protocol import enums

# The two native dialects: Vertex AI (also behind the OpenAI-compatible surface) and the Gemini
# Developer API. They differ in resource names, a few response fields and some error texts.
Dialect = Literal["vertex", "gemini"]


def enum_names(*fields: str, table: enums.Table | typing.Mapping[Dialect, enums.Table]) -> Any:
    """A validator taking `fields` (or lists of them) as enum numbers too, in the request's dialect."""

    def named(cls: type, value: Any, info: ValidationInfo) -> Any:
        chosen = table if isinstance(table, tuple) else table[(info.context or {}).get("dialect", "vertex")]
        return [enums.name_of(v, chosen) for v in value] if isinstance(value, list) else enums.name_of(value, chosen)

    return field_validator(*fields, mode="before")(named)


def _is_list(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return typing.get_origin(annotation) is list


def _model_in(annotation: Any) -> type[GeminiModel] | None:
    """The message type a field holds (alone, in a list, or optional), if any."""
    if isinstance(annotation, type) and issubclass(annotation, GeminiModel):
        return annotation
    return next((found for arg in typing.get_args(annotation) if (found := _model_in(arg)) is not None), None)


class GeminiModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")

    @classmethod
    def from_wire(cls, data: Any, *, dialect: Dialect = "vertex") -> Self:
        """Validate JSON as Google's parser reads it: it takes a lone value where a list is expected
        (Vertex's own curl examples send `"contents": {...}`, `"parts": {...}`), and enums as their
        numbers in `dialect`'s numbering. For what clients send; answers and what openvertex
        builds itself go through plain validation."""
        return cls.model_validate(_lists_where_expected(cls, data), context={"dialect": dialect})

    @classmethod
    @cache
    def _wire_fields(cls) -> dict[str, tuple[bool, type[GeminiModel] | None]]:
        """Each key (either spelling): whether it holds a list, and the message type inside."""
        return {
            key: (_is_list(field.annotation), _model_in(field.annotation))
            for name, field in cls.model_fields.items()
            for key in (name, field.alias or name)
        }

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _lists_where_expected(model: type[GeminiModel], data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    fields = model._wire_fields()
    return {key: _as_expected(value, *fields.get(key, (False, None))) for key, value in data.items()}


def _as_expected(value: Any, is_list: bool, inner: type[GeminiModel] | None) -> Any:
    if value is None:
        return None
    if is_list and not isinstance(value, list):
        value = [value]
    if inner is None:
        return value
    if isinstance(value, list):
        return [_lists_where_expected(inner, item) for item in value]
    return _lists_where_expected(inner, value)


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
    will_continue: bool | None = None
    scheduling: str | None = None

    _named = enum_names("scheduling", table=enums.SCHEDULING)


class PartMediaResolution(GeminiModel):
    level: str

    _named = enum_names("level", table=enums.PART_MEDIA_RESOLUTION)


class Part(GeminiModel):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None
    media_resolution: PartMediaResolution | None = None
    executable_code: dict[str, Any] | None = None
    code_execution_result: dict[str, Any] | None = None
    video_metadata: dict[str, Any] | None = None

    # Where a client's request held this part when it was not written natively (an OpenAI
    # message part, `messages[0].content[1].image_url`): errors about its media name that. Kept
    # in pydantic's private slot without declaring a which would give every Part an
    # initialisation hook (Parts are built for each chunk a stream relays).
    def origin(self) -> str | None:
        private = self.__pydantic_private__
        return None if private is None else private.get("origin")

    def with_origin(self, param: str) -> Part:
        object.__setattr__(self, "__pydantic_private__", {"origin": param})
        return self


Role = Literal["user", "model"]


class Content(GeminiModel):
    role: Role | None = None
    # Gemini leaves it out where nothing is left to say: `{"role": "model"}`.
    parts: list[Part] = Field(default_factory=list, exclude_if=lambda parts: not parts)

    def text(self) -> str:
        """Its text parts joined, thoughts left out."""
        return "".join(part.text for part in self.parts if part.text and not part.thought)

    @field_validator("role", mode="before")
    @classmethod
    def _lower(cls, role: Any) -> Any:
        return role.lower() if isinstance(role, str) else role  # "USER" is taken too


class ThinkingConfig(GeminiModel):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = None

    _named = enum_names("thinking_level", table=enums.THINKING_LEVEL)


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
    response_schema: dict[str, Any] | None = None  # Gemini's OpenAPI 3.0 subset (types in capitals)
    response_modalities: list[str] | None = None
    response_logprobs: bool | None = None
    logprobs: int | None = None  # how many top candidates per position
    media_resolution: str | None = None
    thinking_config: ThinkingConfig | None = None
    # Accepted so a request that sets them gets a 400 naming them where the backend cannot honour them.
    routing_config: dict[str, Any] | None = None
    audio_timestamp: bool | None = None
    speech_config: dict[str, Any] | None = None
    image_config: dict[str, Any] | None = None
    model_selection_config: dict[str, Any] | None = Field(
        None, validation_alias=AliasChoices("modelConfig", "model_config"), serialization_alias="modelConfig"
    )
    enable_enhanced_civic_answers: bool | None = None
    enable_affective_dialog: bool | None = None

    _modalities = enum_names("response_modalities", table=enums.RESPONSE_MODALITY)
    _resolution = enum_names("media_resolution", table=enums.MEDIA_RESOLUTION)

    @field_validator("response_schema", mode="before")
    @classmethod
    def _types_named(cls, schema: Any) -> Any:
        return enums.schema_with_names(schema)


HarmCategory = Literal[
    "HARM_CATEGORY_UNSPECIFIED",
    "HARM_CATEGORY_HARASSMENT",
    "HARM_CATEGORY_HATE_SPEECH",
    "HARM_CATEGORY_SEXUALLY_EXPLICIT",
    "HARM_CATEGORY_DANGEROUS_CONTENT",
    "HARM_CATEGORY_CIVIC_INTEGRITY",
    "HARM_CATEGORY_JAILBREAK",
    "HARM_CATEGORY_IMAGE_HATE",
    "HARM_CATEGORY_IMAGE_DANGEROUS_CONTENT",
    "HARM_CATEGORY_IMAGE_HARASSMENT",
    "HARM_CATEGORY_IMAGE_SEXUALLY_EXPLICIT",
]
# The request enums below list their names in their proto numbering (the same in both dialects).
HarmBlockThreshold = Literal[
    "HARM_BLOCK_THRESHOLD_UNSPECIFIED",
    "BLOCK_LOW_AND_ABOVE",
    "BLOCK_MEDIUM_AND_ABOVE",
    "BLOCK_ONLY_HIGH",
    "BLOCK_NONE",
    "OFF",
]
HarmBlockMethod = Literal["HARM_BLOCK_METHOD_UNSPECIFIED", "SEVERITY", "PROBABILITY"]
HarmProbability = Literal["NEGLIGIBLE", "LOW", "MEDIUM", "HIGH"]


class SafetySetting(GeminiModel):
    category: HarmCategory
    threshold: HarmBlockThreshold
    method: HarmBlockMethod | None = None

    _category = enum_names("category", table=enums.HARM_CATEGORY)
    _threshold = enum_names("threshold", table=typing.get_args(HarmBlockThreshold))
    _method = enum_names("method", table=typing.get_args(HarmBlockMethod))


class SafetyRating(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    category: str | None = None
    probability: str | None = None
    probability_score: float | None = None
    severity: str | None = None
    severity_score: float | None = None
    blocked: bool | None = None


class FunctionDeclaration(GeminiModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # Gemini's OpenAPI 3.0 subset
    parameters_json_schema: dict[str, Any] | None = None
    response: dict[str, Any] | None = None  # what the function returns: documentation for the model
    response_json_schema: dict[str, Any] | None = None
    behavior: str | None = None

    _named = enum_names("behavior", table=enums.BEHAVIOR)

    @field_validator("parameters", "response", mode="before")
    @classmethod
    def _types_named(cls, schema: Any) -> Any:
        return enums.schema_with_names(schema)


class Tool(GeminiModel):
    # Native tools (googleSearch, codeExecution, urlContext, …) are kept as given.
    model_config = ConfigDict(extra="allow")
    function_declarations: list[FunctionDeclaration] | None = None
    google_search: dict[str, Any] | None = None


class FunctionCallingConfig(GeminiModel):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED"] | None = None
    allowed_function_names: list[str] | None = None
    stream_function_call_arguments: bool | None = None

    _named = enum_names("mode", table=enums.FUNCTION_CALLING_MODE)


class ToolConfig(GeminiModel):
    function_calling_config: FunctionCallingConfig | None = None
    retrieval_config: dict[str, Any] | None = None
    include_server_side_tool_invocations: bool | None = None


class GenerateContentRequest(GeminiModel):
    contents: list[Content]
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    safety_settings: list[SafetySetting] | None = None
    cached_content: str | None = None
    labels: dict[str, str] | None = None
    generation_config: GenerationConfig | None = None
    model: str | None = None  # the resource name; the URL's is the one used
    model_armor_config: dict[str, Any] | None = None
    service_tier: str | None = None

    def user_texts(self) -> list[str]:
        """The text of each user turn that has some (thoughts left out), in order."""
        return [text for content in self.contents if content.role in (None, "user") and (text := content.text())]

    # The OpenAI surface's `parallel_tool_calls: false`: at most one call. Gemini has no such field
    # (Vertex ignores the parameter); a backend that can honour it does. Kept in pydantic's private
    # slot (model_copy keeps it), as Part.origin is.
    def one_call(self) -> bool:
        private = self.__pydantic_private__
        return bool(private and private.get("one_call"))

    def with_one_call(self) -> GenerateContentRequest:
        object.__setattr__(self, "__pydantic_private__", {"one_call": True})
        return self


class LogprobsCandidate(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    token: str | None = None
    token_id: int | None = None
    log_probability: float | None = None


class TopCandidates(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    candidates: list[LogprobsCandidate] | None = None


class LogprobsResult(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    top_candidates: list[TopCandidates] | None = None
    chosen_candidates: list[LogprobsCandidate] | None = None


class Candidate(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    index: int | None = None
    content: Content | None = None
    finish_reason: str | None = None
    finish_message: str | None = None
    safety_ratings: list[SafetyRating] | None = None
    grounding_metadata: dict[str, Any] | None = None  # as Gemini gives it (REST JSON names)
    logprobs_result: LogprobsResult | None = None
    avg_logprobs: float | None = None

    def index_at(self, position: int) -> int:
        """Its index, or, where it names none, its position among the response's candidates."""
        return self.index if self.index is not None else position

    def content_parts(self) -> list[Part]:
        return self.content.parts if self.content is not None else []

    def text(self) -> str:
        """Its answer's text, thoughts left out."""
        return self.content.text() if self.content is not None else ""


class ModalityTokenCount(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    modality: str | None = None
    token_count: int = 0  # proto3 JSON leaves a zero out


class UsageMetadata(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    cached_content_token_count: int | None = None
    total_token_count: int | None = None
    prompt_tokens_details: list[ModalityTokenCount] | None = None
    cache_tokens_details: list[ModalityTokenCount] | None = None
    candidates_tokens_details: list[ModalityTokenCount] | None = None
    traffic_type: str | None = None


class PromptFeedback(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    block_reason: str | None = None
    block_reason_message: str | None = None
    safety_ratings: list[SafetyRating] | None = None


class GenerateContentResponse(GeminiModel):
    model_config = ConfigDict(extra="allow")  # an answer's fields openvertex does not model pass through
    candidates: list[Candidate] | None = None
    prompt_feedback: PromptFeedback | None = None
    usage_metadata: UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    create_time: str | None = None


class CountTokensRequest(GeminiModel):
    """Vertex sends the request's fields at the top level; the Gemini API may nest a whole
    GenerateContentRequest instead."""

    contents: list[Content] | None = None
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    generation_config: GenerationConfig | None = None
    model: str | None = None
    generate_content_request: GenerateContentRequest | None = None


class CountTokensResponse(GeminiModel):
    total_tokens: int
    cached_content_token_count: int | None = None
    total_billable_characters: int | None = None
    prompt_tokens_details: list[ModalityTokenCount] | None = None


class ComputeTokensRequest(GeminiModel):
    contents: list[Content] | None = None
    model: str | None = None


class TokensInfo(GeminiModel):
    tokens: list[str]  # each token's bytes, base64
    token_ids: list[str]  # int64 as JSON strings
    role: str


class ComputeTokensResponse(GeminiModel):
    tokens_info: list[TokensInfo]


class CachedContentUsage(GeminiModel):
    total_token_count: int | None = None
    text_count: int | None = None


class CachedContent(GeminiModel):
    """A context cache. contents, systemInstruction, tools, toolConfig and ttl are input only."""

    name: str | None = None
    display_name: str | None = None
    model: str | None = None
    contents: list[Content] | None = None
    system_instruction: Content | None = None
    tools: list[Tool] | None = None
    tool_config: ToolConfig | None = None
    ttl: str | None = None  # a duration: "3600s"
    expire_time: str | None = None  # RFC 3339
    create_time: str | None = None
    update_time: str | None = None
    usage_metadata: CachedContentUsage | None = None
    encryption_spec: dict[str, Any] | None = None


class ListCachedContentsResponse(GeminiModel):
    cached_contents: list[CachedContent]
    next_page_token: str | None = None


class ModelInfo(GeminiModel):
    """A model as both dialects describe it (Vertex reads versionId, the Gemini API version)."""

    name: str
    display_name: str | None = None
    description: str | None = None
    version: str | None = None
    version_id: str | None = None
    input_token_limit: int | None = None
    output_token_limit: int | None = None
    supported_generation_methods: list[str] | None = None
    thinking: bool | None = None


def current_turn_start(contents: list[Content]) -> int:
    """Index of the current turn's first content: the one after the last user message that is not
    only function responses (Gemini's rule for thought signatures; Qwen3's template keeps the
    thoughts of this turn alone)."""
    start = 0
    for index, content in enumerate(contents):
        if content.role != "model" and not all(p.function_response is not None for p in content.parts):
            start = index + 1
    return start


def upstream_answer(raw: bytes) -> GenerateContentResponse:
    """An upstream Gemini's answer (JSON). A field a newer Gemini added passes through where a
    message keeps extras, and is dropped where it keeps none (a request gets a 400 for one);
    an answer with only known fields costs one validation. An error event (`{"error": …}`)
    reads as an answer whose extras hold it. Raises ValueError (ValidationError included)."""
    try:
        return GenerateContentResponse.model_validate_json(raw)
    except ValidationError as error:
        unknown = [detail["loc"] for detail in error.errors() if detail["type"] == "extra_forbidden"]
        if len(unknown) < error.error_count():
            raise
        data = json.loads(raw)
        try:
            for *path, key in unknown:
                parent = data
                for step in path:
                    parent = parent[step]
                del parent[key]
        except (KeyError, IndexError, TypeError):
            raise error from None
    return GenerateContentResponse.model_validate(data)
