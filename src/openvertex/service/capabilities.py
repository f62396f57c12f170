"""Reject, with a 400 naming the field, what the chosen backend cannot honour.

One check serves both surfaces: it reads the internal GenerateContentRequest and names fields
by their native JSON path (`generationConfig.candidateCount`); the OpenAI-compatible surface
passes a namer that turns those paths into its own parameters (`n`, translate/params.py).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic.alias_generators import to_camel, to_snake

from openvertex.backends.base import OPTIONAL_FIELDS, Capabilities
from openvertex.errors import InvalidArgumentError, unsupported
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.parts import content_part_to_part

Namer = Callable[[str], str]

# Thresholds that block nothing are honoured by a backend without a safety filter.
# Where each optional field lives on the internal request (attribute names).
_OPTIONAL_ATTRIBUTES = {
    "generationConfig.routingConfig": ("generation_config", "routing_config"),
    "generationConfig.audioTimestamp": ("generation_config", "audio_timestamp"),
    "generationConfig.speechConfig": ("generation_config", "speech_config"),
    "generationConfig.imageConfig": ("generation_config", "image_config"),
    "generationConfig.modelConfig": ("generation_config", "model_selection_config"),
    "generationConfig.enableEnhancedCivicAnswers": ("generation_config", "enable_enhanced_civic_answers"),
    "generationConfig.enableAffectiveDialog": ("generation_config", "enable_affective_dialog"),
    "toolConfig.retrievalConfig": ("tool_config", "retrieval_config"),
    "toolConfig.includeServerSideToolInvocations": ("tool_config", "include_server_side_tool_invocations"),
    "modelArmorConfig": ("model_armor_config",),
}
# Fields of parts and declarations, checked where they sit.
_NESTED_OPTIONAL = frozenset(
    {"functionDeclarations.behavior", "functionResponse.willContinue", "functionResponse.scheduling"}
)
assert set(_OPTIONAL_ATTRIBUTES) | _NESTED_OPTIONAL == OPTIONAL_FIELDS


def native_name(path: str) -> str:
    return path


def media_mime(part: gc.Part) -> str | None:
    if part.inline_data is not None:
        return part.inline_data.mime_type
    if part.file_data is not None:
        return part.file_data.mime_type or "application/octet-stream"
    return None


def check_openai_media(request: oa.ChatCompletionRequest, caps: Capabilities) -> None:
    """Media in OpenAI messages, named by message and part (contents do not map one to one)."""
    for index, message in enumerate(request.messages):
        if not isinstance(message.content, list):
            continue
        for position, part in enumerate(message.content):
            param = f"messages[{index}].content[{position}]"
            mime = media_mime(content_part_to_part(part, param=param))
            if mime is not None and not mime.startswith(caps.input_mime_prefixes):
                raise unsupported(param, f"{mime} input")


def _check_generation(config: gc.GenerationConfig, caps: Capabilities, name: Namer) -> None:
    count = config.candidate_count or 1
    if count > caps.max_candidates:
        raise InvalidArgumentError(
            f"candidateCount must be between 1 and {caps.max_candidates} but the entered value was {count}",
            param=name("generationConfig.candidateCount"),
        )
    for modality in config.response_modalities or []:
        if modality.upper() not in caps.output_modalities:
            raise unsupported(name("generationConfig.responseModalities"), f"{modality.lower()} output")
    mime = config.response_mime_type
    if mime is not None and caps.response_mime_types is not None and mime not in caps.response_mime_types:
        raise unsupported(name("generationConfig.responseMimeType"), f"{mime} output")
    thinking = config.thinking_config
    if thinking is not None and not caps.thinking and (thinking.thinking_budget != 0 or thinking.include_thoughts):
        raise unsupported(name("generationConfig.thinkingConfig"), "thinking")  # "no thinking" any model honours


def _check_optional(request: gc.GenerateContentRequest, caps: Capabilities, name: Namer) -> None:
    for path, attributes in _OPTIONAL_ATTRIBUTES.items():
        value: object = request
        for attribute in attributes:
            value = getattr(value, attribute, None)
        if value is not None and path not in caps.optional_fields:
            raise unsupported(name(path), f"`{path.rpartition('.')[2]}`")


def _check_tools(request: gc.GenerateContentRequest, caps: Capabilities, name: Namer) -> None:
    for index, tool in enumerate(request.tools or []):
        if tool.function_declarations and not caps.function_calling:
            raise unsupported(name(f"tools[{index}].functionDeclarations"), "function calling")
        for position, declaration in enumerate(tool.function_declarations or []):
            if declaration.behavior is not None and "functionDeclarations.behavior" not in caps.optional_fields:
                path = f"tools[{index}].functionDeclarations[{position}].behavior"
                raise unsupported(name(path), "`behavior` (the Live API's non-blocking functions)")
        native = list(tool.model_extra or {}) + (["googleSearch"] if tool.google_search is not None else [])
        for key in map(to_camel, native):
            if key not in caps.google_tools:
                raise unsupported(name(f"tools[{index}].{key}"), f"the native tool {key!r}")


def _check_contents(request: gc.GenerateContentRequest, caps: Capabilities, name: Namer) -> None:
    system = request.system_instruction
    for position, part in enumerate(system.parts if system is not None else []):
        if part.text is None:  # Vertex and the Gemini API: "currently, text only"
            path = f"systemInstruction.parts[{position}]"
            raise InvalidArgumentError("a system instruction takes text parts only", param=name(path))
    for index, content in enumerate(request.contents):
        for position, part in enumerate(content.parts):
            path = f"contents[{index}].parts[{position}]"
            if (part.function_call or part.function_response) and not caps.function_calling:
                raise unsupported(name("contents"), "function calling (tool calls and tool results)")
            if (part.executable_code or part.code_execution_result) and "codeExecution" not in caps.google_tools:
                raise unsupported(name(path), "code execution")
            mime = media_mime(part)
            if mime is not None and not mime.startswith(caps.input_mime_prefixes):
                raise unsupported(name(path), f"{mime} input")
            if part.video_metadata is not None and not "video/".startswith(caps.input_mime_prefixes):
                raise unsupported(name(f"{path}.videoMetadata"), "video input")
            response = part.function_response
            for field in ("willContinue", "scheduling"):
                value = getattr(response, to_snake(field), None) if response is not None else None
                if value is not None and f"functionResponse.{field}" not in caps.optional_fields:
                    raise unsupported(name(f"{path}.functionResponse.{field}"), f"`{field}` (the Live API's)")


def check_generates(caps: Capabilities) -> None:
    """An embedding model is asked to write: a 400 that says what it answers instead."""
    if not caps.generation:
        raise InvalidArgumentError(
            "This is an embedding model: it answers embedContent, batchEmbedContents, :predict and OpenAI "
            "embeddings, not generateContent or chat completions.",
            field="model",
        )


def check_capabilities(request: gc.GenerateContentRequest, caps: Capabilities, name: Namer = native_name) -> None:
    _check_generation(request.generation_config or gc.GenerationConfig(), caps, name)
    _check_optional(request, caps, name)
    _check_tools(request, caps, name)
    _check_contents(request, caps, name)
    if request.cached_content is not None and not caps.cached_content:
        raise unsupported(name("cachedContent"), "context caching")
