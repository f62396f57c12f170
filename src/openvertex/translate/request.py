"""ChatCompletionRequest → GenerateContentRequest: the spine's first half."""

from __future__ import annotations

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.config import request_to_generation_config
from openvertex.translate.messages import messages_to_contents
from openvertex.translate.tools import request_to_tool_config, request_to_tools


def chat_request_to_generate_content(request: oa.ChatCompletionRequest) -> gc.GenerateContentRequest:
    google = request.google_extensions
    system, contents = messages_to_contents(request.messages, thought_marker=google.thought_tag_marker)
    safety = [gc.SafetySetting.model_validate(s.model_dump(exclude_none=True)) for s in google.safety_settings or []]
    translated = gc.GenerateContentRequest(
        contents=contents,
        system_instruction=system,
        tools=request_to_tools(request),
        tool_config=request_to_tool_config(request),
        safety_settings=safety or None,
        cached_content=google.cached_content,
        labels=google.labels,
        generation_config=request_to_generation_config(request),
    )
    return translated.with_one_call() if request.parallel_tool_calls is False else translated
