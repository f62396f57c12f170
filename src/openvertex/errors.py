"""The one exception tree; raised anywhere, rendered once at the HTTP edge.

ApiError                       (http_status, google_status, message)
├── InvalidArgumentError       400 INVALID_ARGUMENT   (carries the parameter path)
├── FailedPreconditionError    400 FAILED_PRECONDITION
├── UnauthenticatedError       401 UNAUTHENTICATED
├── PermissionDeniedError      403 PERMISSION_DENIED
├── NotFoundError              404 NOT_FOUND
├── ResourceExhaustedError     429 RESOURCE_EXHAUSTED
├── CancelledError             499 CANCELLED
├── InternalError              500 INTERNAL
├── UnavailableError           503 UNAVAILABLE
└── DeadlineExceededError      504 DEADLINE_EXCEEDED
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """An error with a Google canonical status; `message` is safe to show the client."""

    http_status: ClassVar[int] = 500
    google_status: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        """`retry_after_s`: when to try again (a 429's or a 503's Retry-After)."""
        super().__init__(message)
        self.message = message
        self.headers: dict[str, str] = {}
        if retry_after_s is not None:
            self.headers["Retry-After"] = str(retry_after_s)
        self.details: list[dict[str, Any]] | None = None  # an upstream's own; else derived when rendered


class InvalidArgumentError(ApiError):
    http_status = 400
    google_status = "INVALID_ARGUMENT"

    def __init__(self, message: str, *, param: str | None = None, field: str | None = None) -> None:
        # The parameter path leads the message, so SDK users (whose error object keeps only
        # the body text) see which field was wrong; `field` names it for the error's details
        # only, where the message names it already.
        super().__init__(f"{param}: {message}" if param else message)
        self.param = param or field
        self.detail = message  # without the parameter
        self.named = param is not None  # the parameter leads the message


class FailedPreconditionError(ApiError):
    http_status = 400
    google_status = "FAILED_PRECONDITION"


class UnauthenticatedError(ApiError):
    http_status = 401
    google_status = "UNAUTHENTICATED"


class PermissionDeniedError(ApiError):
    http_status = 403
    google_status = "PERMISSION_DENIED"


class NotFoundError(ApiError):
    http_status = 404
    google_status = "NOT_FOUND"


class AlreadyExistsError(ApiError):
    http_status = 409
    google_status = "ALREADY_EXISTS"


class ResourceExhaustedError(ApiError):
    http_status = 429
    google_status = "RESOURCE_EXHAUSTED"


class CancelledError(ApiError):
    http_status = 499
    google_status = "CANCELLED"


class InternalError(ApiError):
    http_status = 500
    google_status = "INTERNAL"


class UnavailableError(ApiError):
    http_status = 503
    google_status = "UNAVAILABLE"


class DeadlineExceededError(ApiError):
    http_status = 504
    google_status = "DEADLINE_EXCEEDED"


def unsupported(param: str, what: str) -> InvalidArgumentError:
    """The 400 for a documented feature that the chosen backend cannot honour."""
    return InvalidArgumentError(f"{what} is not supported by this model's backend", param=param)


_BY_STATUS: dict[str, type[ApiError]] = {
    cls.google_status: cls
    for cls in (
        InvalidArgumentError,
        FailedPreconditionError,
        UnauthenticatedError,
        PermissionDeniedError,
        NotFoundError,
        ResourceExhaustedError,
        CancelledError,
        InternalError,
        UnavailableError,
        DeadlineExceededError,
    )
}
_BY_CODE: dict[int, type[ApiError]] = {
    400: InvalidArgumentError,
    401: UnauthenticatedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: ResourceExhaustedError,
    499: CancelledError,
    503: UnavailableError,
    504: DeadlineExceededError,
}


def error_for(code: int, status: str | None, message: str) -> ApiError:
    """An upstream's Google error as ours: the same status and message."""
    cls: type[ApiError] = _BY_STATUS.get(status or "") or _BY_CODE.get(code, InternalError)
    return cls(message)
