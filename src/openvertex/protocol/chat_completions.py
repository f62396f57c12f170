"""OpenAI Chat Completions wire types, with Vertex's Gemini extensions (spec §2 to §5).

Requests are lenient (unknown top-level keys are ignored, as Vertex does, and logged);
the `google` extension objects are strict like protobuf JSON (spec §1.4). Responses are
exact: each optional field decides for itself whether it is omitted or sent as null.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from openvertex.protocol import generate_content as gc

log = logging.getLogger(__name__)


def _absent_if_none(value: object) -> bool:
    return value is None


def omit_none(default: Any = None) -> Any:
    """A response field that is left out of the JSON when it has no value."""
    return Field(default, exclude_if=_absent_if_none)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Proto(BaseModel):
    """Gemini extension objects: snake_case or lowerCamelCase keys, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, validate_by_name=True, validate_by_alias=True)


# ---------------------------------------------------------------- extensions (spec §3)


class ThinkingConfig(_Proto):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: Literal["minimal", "low", "medium", "high"] | None = None


class SafetySetting(_Proto):
    category: gc.HarmCategory
    threshold: gc.HarmBlockThreshold
    method: gc.HarmBlockMethod | None = None


class GoogleRequestExtensions(_Proto):
    """`extra_body.google` (or a top-level `google` object)."""

    safety_settings: list[SafetySetting] | None = None
    cached_content: str | None = None
    thinking_config: ThinkingConfig | None = None
    thought_tag_marker: str | None = None
    stream_function_call_arguments: bool | None = None
    tools: list[dict[str, Any]] | None = None
    media_resolution: str | None = None
    labels: dict[str, str] | None = None


class ExtraBody(_Lenient):
    google: GoogleRequestExtensions | None = None


class GoogleContentExtras(_Proto):
    """`extra_content.google` on messages, content parts and tool calls (spec §3.2)."""

    thought: bool | None = None
    thought_signature: str | None = None
    parts: list[dict[str, Any]] | None = None


class ExtraContent(_Lenient):
    google: GoogleContentExtras | None = None


# ---------------------------------------------------------------- request


class ImageUrl(_Lenient):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Lenient):
    data: str
    format: str


class FileRef(_Lenient):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


_PART_FIELD = {"text": "text", "image_url": "image_url", "input_audio": "input_audio", "file": "file"}


class ContentPart(_Lenient):
    type: Literal["text", "image_url", "input_audio", "file"]
    text: str | None = None
    image_url: str | ImageUrl | None = None  # Vertex's examples send a bare string [D V-EX]
    input_audio: InputAudio | None = None
    file: FileRef | None = None
    extra_content: ExtraContent | None = None

    @model_validator(mode="after")
    def _has_payload(self) -> ContentPart:
        if getattr(self, _PART_FIELD[self.type]) is None:
            raise ValueError(f'a part of type "{self.type}" needs a "{_PART_FIELD[self.type]}" field')
        return self


class FunctionCallData(_Lenient):
    name: str
    arguments: str = ""


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallData
    extra_content: ExtraContent | None = None


class Message(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "model", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    function_call: FunctionCallData | None = None  # legacy assistant call
    extra_content: ExtraContent | None = None


class FunctionDefinition(_Lenient):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Lenient):
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    # Any other type is a MIME type passed straight through [D V-OV].
    type: str
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Lenient):
    include_usage: bool | None = None


KNOWN_IGNORED = frozenset(
    # Documented by Vertex as ignored (spec §2.1); accepted without a log line.
    {"user", "logit_bias", "metadata", "store", "prediction", "audio", "service_tier"}
)


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    # Vertex ignores these (logprobs: null); backends that can report them do (spec §2.1).
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, ge=0.0, le=1.0)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required", "validated"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # false: at most one call, where the backend can honour it
    functions: list[FunctionDefinition] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    web_search_options: dict[str, Any] | None = None
    modalities: list[Literal["text", "image", "audio"]] | None = None
    extra_body: ExtraBody | None = None
    google: GoogleRequestExtensions | None = None

    @model_validator(mode="before")
    @classmethod
    def _log_ignored(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - set(cls.model_fields) - KNOWN_IGNORED
            if unknown:
                log.debug("ignoring unknown parameters: %s", ", ".join(sorted(unknown)))
        return data

    @property
    def google_extensions(self) -> GoogleRequestExtensions:
        """`extra_body.google` wins over a top-level `google` object (spec §3.1, [I])."""
        if self.extra_body is not None and self.extra_body.google is not None:
            return self.extra_body.google
        return self.google or _NO_EXTENSIONS


_NO_EXTENSIONS = GoogleRequestExtensions()  # shared by requests without any: read, never written


# ---------------------------------------------------------------- response


class GoogleExtrasOut(BaseModel):
    """`extra_content.google` in responses: only the keys that have a value."""

    thought: bool | None = omit_none()
    thought_signature: str | None = omit_none()
    mime_type: str | None = omit_none()


class ExtraContentOut(BaseModel):
    google: GoogleExtrasOut


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut
    extra_content: ExtraContentOut | None = omit_none()


class AudioOut(BaseModel):
    """Image output rides in `message.audio` (spec §4.1)."""

    data: str
    extra_content: ExtraContentOut | None = omit_none()


class UrlCitation(BaseModel):
    start_index: int  # characters into the message's content
    end_index: int
    url: str
    title: str


class Annotation(BaseModel):
    type: Literal["url_citation"] = "url_citation"
    url_citation: UrlCitation


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = omit_none()
    audio: AudioOut | None = omit_none()
    annotations: list[Annotation] | None = omit_none()  # a grounded answer's citations
    extra_content: ExtraContentOut | None = omit_none()


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class Choice(BaseModel):
    index: int
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None
    message: ResponseMessage


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class GoogleUsageExtras(BaseModel):
    traffic_type: str


class UsageExtraProperties(BaseModel):
    google: GoogleUsageExtras


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = omit_none()
    prompt_tokens_details: PromptTokensDetails | None = omit_none()
    extra_properties: UsageExtraProperties | None = omit_none()


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str = ""
    choices: list[Choice]
    usage: Usage | None = omit_none()


class DeltaToolCall(BaseModel):
    index: int
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut
    extra_content: ExtraContentOut | None = omit_none()


class Delta(BaseModel):
    role: Literal["assistant"] = "assistant"  # repeated on every chunk [D V-EX]
    content: str | None = omit_none()
    tool_calls: list[DeltaToolCall] | None = omit_none()
    audio: AudioOut | None = omit_none()
    annotations: list[Annotation] | None = omit_none()  # on a grounded answer's last chunk
    extra_content: ExtraContentOut | None = omit_none()


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str | None = omit_none()  # absent, not null, until the last chunk [D V-EX]


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str = ""
    choices: list[ChunkChoice]
    usage: Usage | None = omit_none()


class ModelStatus(BaseModel):
    """Whether a local model is in memory (llama-server's router mode says it so)."""

    value: Literal["unloaded", "loading", "loaded"]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    max_output_tokens: int | None = omit_none()  # when the backend declares one
    status: ModelStatus | None = omit_none()  # a model this process holds in memory


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PredictRequest(_Lenient):
    """Vertex AI's predict envelope, as a custom container receives it on AIP_PREDICT_ROUTE: each
    instance a chat request (`@requestFormat: chatCompletions` and other unknown keys ignored)."""

    instances: list[ChatCompletionRequest] = Field(min_length=1, max_length=64)
    parameters: dict[str, Any] | None = None


class PredictResponse(BaseModel):
    predictions: list[ChatCompletion]
    deployedModelId: str | None = None
