"""Reject, with a 400 naming the parameter, what the chosen backend cannot honour."""

from __future__ import annotations

from pydantic.alias_generators import to_camel

from openvertex.backends.base import Capabilities
from openvertex.errors import InvalidArgumentError, unsupported
from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.parts import content_part_to_part
from openvertex.translate.tables import MODALITY_TO_GEMINI

# Thresholds that block nothing are honoured by a backend without a safety filter.
_NON_BLOCKING = frozenset({"BLOCK_NONE", "OFF"})


def _media_mime(part: gc.Part) -> str | None:
    if part.inline_data is not None:
        return part.inline_data.mime_type
    if part.file_data is not None:
        return part.file_data.mime_type or "application/octet-stream"
    return None


def _check_media(request: oa.ChatCompletionRequest, caps: Capabilities) -> None:
    for index, message in enumerate(request.messages):
        if not isinstance(message.content, list):
            continue
        for position, part in enumerate(message.content):
            param = f"messages[{index}].content[{position}]"
            mime = _media_mime(content_part_to_part(part, param=param))
            if mime is not None and not mime.startswith(caps.input_mime_prefixes):
                raise unsupported(param, f"{mime} input")


def _check_tools(request: oa.ChatCompletionRequest, caps: Capabilities) -> None:
    if not caps.function_calling:
        for param in ("tools", "functions"):
            if getattr(request, param):
                raise unsupported(param, "function calling")
        if any(m.role in ("tool", "function") or m.tool_calls or m.function_call for m in request.messages):
            raise unsupported("messages", "function calling (tool calls and tool results)")
    for index, tool in enumerate(request.google_extensions.tools or []):
        for name in map(to_camel, tool):
            if name != "functionDeclarations" and name not in caps.native_tools:
                raise unsupported(f"extra_body.google.tools[{index}]", f"the native tool {name!r}")
    if request.web_search_options is not None and "googleSearch" not in caps.native_tools:
        raise unsupported("web_search_options", "web search")


def _check_thinking(config: gc.GenerationConfig, caps: Capabilities, request: oa.ChatCompletionRequest) -> None:
    thinking = config.thinking_config
    if caps.thinking or thinking is None:
        return
    if thinking.thinking_budget == 0 and not thinking.include_thoughts:
        return  # "no thinking" is honoured by any model
    param = "reasoning_effort" if request.reasoning_effort else "extra_body.google.thinking_config"
    raise unsupported(param, "thinking")


def _check_generation(request: oa.ChatCompletionRequest, config: gc.GenerationConfig, caps: Capabilities) -> None:
    count = config.candidate_count or 1
    if count > caps.max_candidates:
        raise InvalidArgumentError(
            f"candidateCount must be between 1 and {caps.max_candidates} but the entered value was {count}", param="n"
        )
    for modality in request.modalities or []:
        if MODALITY_TO_GEMINI[modality] not in caps.output_modalities:
            raise unsupported("modalities", f"{modality} output")
    mime = config.response_mime_type
    if mime is not None and caps.response_mime_types is not None and mime not in caps.response_mime_types:
        raise unsupported("response_format.type", f"{mime} output")
    _check_thinking(config, caps, request)


def check_capabilities(
    request: oa.ChatCompletionRequest, translated: gc.GenerateContentRequest, caps: Capabilities
) -> None:
    _check_generation(request, translated.generation_config or gc.GenerationConfig(), caps)
    _check_tools(request, caps)
    _check_media(request, caps)
    google = request.google_extensions
    if google.cached_content is not None and not caps.cached_content:
        raise unsupported("extra_body.google.cached_content", "context caching")
    if not caps.safety_filtering:
        for index, setting in enumerate(google.safety_settings or []):
            if setting.threshold not in _NON_BLOCKING:
                raise unsupported(
                    f"extra_body.google.safety_settings[{index}].threshold", f"safety filtering ({setting.threshold})"
                )
