"""Errors the platform raises on purpose: each says what was wrong, where, and what to do next."""

from __future__ import annotations


class SmartCareError(Exception):
    """Base of expected failures. ``status`` is the HTTP status the API answers with."""

    status = 400
    code = "error"

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.hint = hint

    def to_dict(self) -> dict:
        body: dict = {"error": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        if self.hint:
            body["hint"] = self.hint
        return body


class InvalidInput(SmartCareError):
    status = 422
    code = "invalid_input"


class NotFound(SmartCareError):
    status = 404
    code = "not_found"


class Conflict(SmartCareError):
    status = 409
    code = "conflict"


class Unauthorized(SmartCareError):
    status = 401
    code = "unauthorized"


class Forbidden(SmartCareError):
    status = 403
    code = "forbidden"


class PayloadTooLarge(SmartCareError):
    status = 413
    code = "payload_too_large"


class RateLimited(SmartCareError):
    status = 429
    code = "rate_limited"
    #: seconds until a retry can succeed: the API answers it as ``Retry-After``
    retry_after: float | None = None


class Unavailable(SmartCareError):
    """Busy for a moment (e.g. a rebuild holds the tables): try again shortly."""

    status = 503
    code = "unavailable"


class ConfigurationError(SmartCareError):
    status = 500
    code = "configuration"
