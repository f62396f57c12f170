"""Proto3 enums by number, for clients that write them as numbers (proto3 JSON allows it; the REST
transports of google-cloud-aiplatform and google-ai-generativelanguage send
`$alt=json;enum-encoding=int` and numbers). The two dialects number some enums differently.

Source: the generated types of google-cloud-aiplatform 2.7.0 (`aiplatform_v1`, `v1beta1` for
Type.NULL) and google-ai-generativelanguage 0.12.1 (`generativelanguage_v1beta`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

Dialect = Literal["vertex", "gemini"]
Table = tuple[str, ...]  # names by number; "" where a number is not used


def _numbered(*names: tuple[int, str]) -> Table:
    table = [""] * (max(number for number, _ in names) + 1)
    for number, name in names:
        table[number] = name
    return tuple(table)


def _listed(*names: str) -> Table:
    return names


TYPE = _listed("TYPE_UNSPECIFIED", "STRING", "NUMBER", "INTEGER", "BOOLEAN", "ARRAY", "OBJECT", "NULL")
RESPONSE_MODALITY = _listed("MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "AUDIO")
TOKEN_MODALITY = _listed("MODALITY_UNSPECIFIED", "TEXT", "IMAGE", "VIDEO", "AUDIO", "DOCUMENT")
MEDIA_RESOLUTION = _listed(
    "MEDIA_RESOLUTION_UNSPECIFIED", "MEDIA_RESOLUTION_LOW", "MEDIA_RESOLUTION_MEDIUM", "MEDIA_RESOLUTION_HIGH"
)
PART_MEDIA_RESOLUTION = (*MEDIA_RESOLUTION, "MEDIA_RESOLUTION_ULTRA_HIGH")
THINKING_LEVEL = _listed("THINKING_LEVEL_UNSPECIFIED", "LOW", "MEDIUM", "HIGH", "MINIMAL")
HARM_PROBABILITY = _listed("HARM_PROBABILITY_UNSPECIFIED", "NEGLIGIBLE", "LOW", "MEDIUM", "HIGH")
HARM_SEVERITY = _listed(
    "HARM_SEVERITY_UNSPECIFIED",
    "HARM_SEVERITY_NEGLIGIBLE",
    "HARM_SEVERITY_LOW",
    "HARM_SEVERITY_MEDIUM",
    "HARM_SEVERITY_HIGH",
)
BEHAVIOR = _listed("UNSPECIFIED", "BLOCKING", "NON_BLOCKING")
SCHEDULING = _listed("SCHEDULING_UNSPECIFIED", "SILENT", "WHEN_IDLE", "INTERRUPT")
TRAFFIC_TYPE = _numbered(
    (0, "TRAFFIC_TYPE_UNSPECIFIED"),
    (1, "ON_DEMAND"),
    (2, "PROVISIONED_THROUGHPUT"),
    (3, "ON_DEMAND_PRIORITY"),
    (4, "ON_DEMAND_FLEX"),
)

# The enums numbered differently by the two dialects.
FUNCTION_CALLING_MODE: Mapping[Dialect, Table] = {
    "vertex": _numbered((0, "MODE_UNSPECIFIED"), (1, "AUTO"), (2, "ANY"), (3, "NONE"), (5, "VALIDATED")),
    "gemini": _listed("MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"),
}
HARM_CATEGORY: Mapping[Dialect, Table] = {
    "vertex": _listed(
        "HARM_CATEGORY_UNSPECIFIED",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_CIVIC_INTEGRITY",
        "HARM_CATEGORY_JAILBREAK",
    ),
    "gemini": _listed(
        "HARM_CATEGORY_UNSPECIFIED",
        "HARM_CATEGORY_DEROGATORY",
        "HARM_CATEGORY_TOXICITY",
        "HARM_CATEGORY_VIOLENCE",
        "HARM_CATEGORY_SEXUAL",
        "HARM_CATEGORY_MEDICAL",
        "HARM_CATEGORY_DANGEROUS",
        "HARM_CATEGORY_HARASSMENT",
        "HARM_CATEGORY_HATE_SPEECH",
        "HARM_CATEGORY_SEXUALLY_EXPLICIT",
        "HARM_CATEGORY_DANGEROUS_CONTENT",
        "HARM_CATEGORY_CIVIC_INTEGRITY",
    ),
}
FINISH_REASON: Mapping[Dialect, Table] = {
    "vertex": _listed(
        "FINISH_REASON_UNSPECIFIED",
        "STOP",
        "MAX_TOKENS",
        "SAFETY",
        "RECITATION",
        "OTHER",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "MALFORMED_FUNCTION_CALL",
        "MODEL_ARMOR",
    ),
    "gemini": _numbered(
        (0, "FINISH_REASON_UNSPECIFIED"),
        (1, "STOP"),
        (2, "MAX_TOKENS"),
        (3, "SAFETY"),
        (4, "RECITATION"),
        (5, "OTHER"),
        (6, "LANGUAGE"),
        (7, "BLOCKLIST"),
        (8, "PROHIBITED_CONTENT"),
        (9, "SPII"),
        (10, "MALFORMED_FUNCTION_CALL"),
        (11, "IMAGE_SAFETY"),
        (12, "UNEXPECTED_TOOL_CALL"),
        (13, "TOO_MANY_TOOL_CALLS"),
        (14, "IMAGE_PROHIBITED_CONTENT"),
        (15, "IMAGE_OTHER"),
        (16, "NO_IMAGE"),
        (17, "IMAGE_RECITATION"),
    ),
}
# An embedding's task type: the Gemini API's TaskType, Vertex's EmbedContentRequest.EmbeddingTaskType.
TASK_TYPE = _listed(
    "TASK_TYPE_UNSPECIFIED",
    "RETRIEVAL_QUERY",
    "RETRIEVAL_DOCUMENT",
    "SEMANTIC_SIMILARITY",
    "CLASSIFICATION",
    "CLUSTERING",
    "QUESTION_ANSWERING",
    "FACT_VERIFICATION",
    "CODE_RETRIEVAL_QUERY",
)
EMBEDDING_TASK_TYPE_VERTEX = _numbered(
    (0, "UNSPECIFIED"),
    (2, "RETRIEVAL_QUERY"),
    (3, "RETRIEVAL_DOCUMENT"),
    (4, "SEMANTIC_SIMILARITY"),
    (5, "CLASSIFICATION"),
    (6, "CLUSTERING"),
    (7, "QUESTION_ANSWERING"),
    (8, "FACT_VERIFICATION"),
    (9, "CODE_RETRIEVAL_QUERY"),
)
BLOCK_REASON: Mapping[Dialect, Table] = {
    "vertex": _listed(
        "BLOCKED_REASON_UNSPECIFIED", "SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "MODEL_ARMOR", "JAILBREAK"
    ),
    "gemini": _listed("BLOCK_REASON_UNSPECIFIED", "SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"),
}


def name_of(value: Any, table: Table) -> Any:
    """A number as its enum name; anything else (a name, a number no enum value has) as it is, for
    validation to judge."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(table) and table[value]:
        return table[value]
    return value


def number_of(name: Any, table: Table) -> Any:
    """An enum name as its number; a name the table lacks stays a name (proto3 JSON reads both)."""
    return table.index(name) if isinstance(name, str) and name and name in table else name


def schema_with_names(schema: Any) -> Any:
    """Gemini's Schema (OpenAPI 3.0 subset) with numbered `type`s named, however deep."""
    if isinstance(schema, list):
        return [schema_with_names(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {
        key: name_of(value, TYPE) if key == "type" and isinstance(value, int) else schema_with_names(value)
        for key, value in schema.items()
    }
