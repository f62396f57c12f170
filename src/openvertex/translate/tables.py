"""The documented mappings, as data. Each table names the spec section it follows.

Spec: shared/spec/vertex-chat-completions.md. Decisions tagged [I] are recorded in
translate/README.md.
"""

from __future__ import annotations

from typing import Final

# §4.3 — Gemini FinishReason → OpenAI finish_reason. STOP with function calls becomes
# "tool_calls" (handled in response translation, it depends on the parts).
FINISH_REASON_TO_OPENAI: Final[dict[str, str]] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MODEL_ARMOR": "content_filter",
}
# Undocumented reasons (MALFORMED_FUNCTION_CALL, OTHER, LANGUAGE, NO_IMAGE, …) [I].
FINISH_REASON_DEFAULT: Final = "stop"

# §2.5 — reasoning_effort → thinking budget in tokens (Vertex budgets; `none` from
# Google's notebook; `minimal` as the Gemini API's 2.5 column) [D V-OV, V-NB, G-OAI].
REASONING_EFFORT_TO_BUDGET: Final[dict[str, int]] = {
    "none": 0,
    "minimal": 1024,
    "low": 1024,
    "medium": 8192,
    "high": 24576,
}

# §2.6 — response_format.type → responseMimeType; other types are MIME types as given.
RESPONSE_FORMAT_TO_MIME: Final[dict[str, str]] = {
    "text": "text/plain",
    "json_object": "application/json",
    "json_schema": "application/json",
}

# §2.3 — input_audio.format shorthands; anything else must already be a MIME type.
AUDIO_FORMAT_TO_MIME: Final[dict[str, str]] = {"wav": "audio/wav", "mp3": "audio/mp3"}

# §2.3 — a URL without a recognisable extension "will default to the image/* MIME-type".
URL_DEFAULT_MIME: Final = "image/*"

# §2.3 — MIME types of file URIs by extension: the types Gemini accepts for fileData [I].
EXTENSION_TO_MIME: Final[dict[str, str]] = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "heic": "image/heic",
    "heif": "image/heif",
    "wav": "audio/wav",
    "mp3": "audio/mp3",
    "aac": "audio/aac",
    "ogg": "audio/ogg",
    "flac": "audio/flac",
    "m4a": "audio/m4a",
    "mp4": "video/mp4",
    "mpeg": "video/mpeg",
    "mov": "video/mov",
    "webm": "video/webm",
    "pdf": "application/pdf",
    "txt": "text/plain",
}

# §2.1 — image `detail` → part-level media resolution [I].
IMAGE_DETAIL_TO_MEDIA_RESOLUTION: Final[dict[str, str]] = {
    "low": "MEDIA_RESOLUTION_LOW",
    "high": "MEDIA_RESOLUTION_HIGH",
}

# §2.7 — tool_choice → FunctionCallingConfig.mode [D V-OV].
TOOL_CHOICE_TO_MODE: Final[dict[str, str]] = {
    "none": "NONE",
    "auto": "AUTO",
    "required": "ANY",
    "validated": "VALIDATED",
}

# §2.1 — modalities → responseModalities.
MODALITY_TO_GEMINI: Final[dict[str, str]] = {"text": "TEXT", "image": "IMAGE", "audio": "AUDIO"}

# §2.2 — OpenAI roles that become Gemini conversation turns.
ROLE_TO_GEMINI: Final[dict[str, str]] = {
    "user": "user",
    "assistant": "model",
    "model": "model",
    "tool": "user",
    "function": "user",
}
SYSTEM_ROLES: Final = frozenset({"system", "developer"})

# §2.4 — function declaration limits [D V-FCREF].
MAX_FUNCTION_DECLARATIONS: Final = 128
FUNCTION_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$"

# §2.4 — Gemini accepts up to five stop sequences [D V-PARAMS].
MAX_STOP_SEQUENCES: Final = 5

# §4.2 — usage.extra_properties.google.traffic_type when the backend reports none [I].
DEFAULT_TRAFFIC_TYPE: Final = "ON_DEMAND"
# thinkingLevel values (any case); a local model turns each into a budget.
THINKING_LEVELS: Final = frozenset({"MINIMAL", "LOW", "MEDIUM", "HIGH", "XHIGH"})
# The one dummy thought signature Vertex accepts in place of a real one [D V-TS].
SKIP_THOUGHT_SIGNATURE: Final = "skip_thought_signature_validator"

# §4.1 — tool call ids look like function-call-<uuid4> [D V-EX].
TOOL_CALL_ID_PREFIX: Final = "function-call-"

# §3.3 — Vertex follows the closing thought tag with a blank line [O V2O].
THOUGHT_CLOSE_SUFFIX: Final = "\n\n"
