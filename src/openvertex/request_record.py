"""What one request did, filled in by the layers that learn it (the key's name by the
authenticator, the model and backend by the generator, the tokens by the answer) and written out
once by the HTTP edge (http/recording.py). The record of the request being handled is found
through a context variable, so no layer passes it along."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    route: str
    key: str | None = None  # the API key's name
    tenant: str | None = None  # whose prompts the key's may share KV with (service/tenants.py)
    models_allowed: tuple[str, ...] | None = None  # globs the key may use; None: any
    model: str | None = None
    backend: str | None = None
    status: int = 0
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    time_to_first_token_ms: float | None = None
    duration_ms: float = 0.0
    on_end: list[Callable[[RequestRecord], None]] = field(default_factory=list)  # once the response is sent

    def fields(self) -> dict[str, object]:
        """What a log line says of the request."""
        return {name: getattr(self, name) for name in _LOGGED}


_LOGGED = (
    "request_id",
    "method",
    "path",
    "route",
    "key",
    "model",
    "backend",
    "status",
    "prompt_tokens",
    "output_tokens",
    "time_to_first_token_ms",
    "duration_ms",
)

# The record of the request being handled; a fresh throwaway one outside any request.
_current: ContextVar[RequestRecord | None] = ContextVar("openvertex_request", default=None)


def current_record() -> RequestRecord:
    record = _current.get()
    return record if record is not None else RequestRecord("", "", "", "")


def start_record(record: RequestRecord) -> Token[RequestRecord | None]:
    """Make `record` the current one (for this task and what it starts); returns the token to end it."""
    return _current.set(record)


def end_record(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)
