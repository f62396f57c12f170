"""Native field paths → the OpenAI-compatible parameters they came from, for error messages.

The capability check names what it refuses by its place in the GenerateContentRequest; a
client of the OpenAI surface sent something else, and the 400 must name that.
"""

from __future__ import annotations

import re

from pydantic.alias_generators import to_snake

from openvertex.errors import InvalidArgumentError
from openvertex.protocol import chat_completions as oa

_TOOL = re.compile(r"tools\[(\d+)\](?:\..*)?")
_SAFETY = re.compile(r"safetySettings\[(\d+)\]\.(\w+)")


def _tool_param(index: int, request: oa.ChatCompletionRequest) -> str:
    declared = 1 if request.tools or request.functions else 0  # the declarations come first, as one tool
    if index < declared:
        return "tools" if request.tools else "functions"
    native = index - declared
    if native < len(request.google_extensions.tools or []):
        return f"extra_body.google.tools[{native}]"
    return "web_search_options"  # last, when present


def openai_param(path: str, request: oa.ChatCompletionRequest) -> str:
    if path == "generationConfig.thinkingConfig":
        return "reasoning_effort" if request.reasoning_effort is not None else "extra_body.google.thinking_config"
    fixed = {
        "generationConfig.candidateCount": "n",
        "generationConfig.responseJsonSchema": "response_format",
        "generationConfig.responseSchema": "response_format",
        "generationConfig.maxOutputTokens": "max_tokens",
        "generationConfig.stopSequences": "stop",
        "generationConfig.logprobs": "top_logprobs",
        "generationConfig.responseModalities": "modalities",
        "generationConfig.responseMimeType": "response_format.type",
        "cachedContent": "extra_body.google.cached_content",
    }
    if path in fixed:
        return fixed[path]
    if match := _TOOL.fullmatch(path):
        return _tool_param(int(match[1]), request)
    if match := _SAFETY.fullmatch(path):
        return f"extra_body.google.safety_settings[{match[1]}].{to_snake(match[2])}"
    if path.startswith("contents"):
        return "messages"
    return path


def renamed(error: InvalidArgumentError, request: oa.ChatCompletionRequest) -> InvalidArgumentError:
    """An error raised with a native path, as the OpenAI surface names the parameter."""
    if not error.named or error.param is None:
        return error
    return InvalidArgumentError(error.detail, param=openai_param(error.param, request))
