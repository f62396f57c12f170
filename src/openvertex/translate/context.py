"""What response translation needs from outside: ids, the clock and the echoed model string."""

from __future__ import annotations

import base64
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from openvertex.translate.tables import TOOL_CALL_ID_PREFIX


def new_response_id() -> str:
    """22 base64url characters, like Gemini's responseId (spec §4.1)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")


def new_tool_call_id() -> str:
    return f"{TOOL_CALL_ID_PREFIX}{uuid.uuid4()}"


_CALL_IDS = uuid.UUID("7d3c5a1e-2b6f-4c8e-9a0d-5f1e3b7c9d24")  # the namespace of ids made from an answer's


def answer_tool_call_id(response_id: str, candidate: int, call: int) -> str:
    """The id of an answer's call, made from the answer's own responseId (its backend's, or a
    recording's) where it has one: the same answer translates to the same ids, so a replayed
    answer is the same bytes on the OpenAI surface too [I]."""
    return f"{TOOL_CALL_ID_PREFIX}{uuid.uuid5(_CALL_IDS, f'{response_id}/{candidate}/{call}')}"


@dataclass(frozen=True, slots=True)
class ResponseContext:
    model: str  # the request's model string, echoed verbatim (spec §1.3)
    response_id: str = field(default_factory=new_response_id)
    created: int = field(default_factory=lambda: int(time.time()))
    tool_call_id: Callable[[], str] = new_tool_call_id
    thought_marker: str | None = None


def answer_created(create_time: str | None, ctx: ResponseContext) -> int:
    """`created` of a chat completion: the answer's createTime where its backend gave one (Gemini's
    own, a recording's: Vertex's facade reports its GenerateContent's time) [I], else the context's."""
    if create_time:
        try:
            return int(datetime.fromisoformat(create_time.replace("Z", "+00:00")).timestamp())
        except ValueError:
            pass
    return ctx.created
