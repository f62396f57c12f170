"""UsageMetadata → usage (spec §4.2): completion_tokens excludes thinking, unlike OpenAI."""

from __future__ import annotations

from openvertex.protocol import chat_completions as oa
from openvertex.protocol import generate_content as gc
from openvertex.translate.tables import DEFAULT_TRAFFIC_TYPE


def usage_metadata_to_usage(metadata: gc.UsageMetadata) -> oa.Usage:
    prompt = metadata.prompt_token_count or 0
    completion = metadata.candidates_token_count or 0
    thoughts = metadata.thoughts_token_count or 0
    cached = metadata.cached_content_token_count or 0
    return oa.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=metadata.total_token_count or prompt + completion + thoughts,
        completion_tokens_details=oa.CompletionTokensDetails(reasoning_tokens=thoughts) if thoughts else None,
        prompt_tokens_details=oa.PromptTokensDetails(cached_tokens=cached) if cached else None,
        extra_properties=oa.UsageExtraProperties(
            google=oa.GoogleUsageExtras(traffic_type=metadata.traffic_type or DEFAULT_TRAFFIC_TYPE)
        ),
    )
