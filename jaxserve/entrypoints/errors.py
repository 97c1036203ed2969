"""Every failure leaves the server as OpenAI's ``{"error": {message, type, param, code}}``.

A client's mistake is always a 4xx naming the field (``param``) when there is one; only a bug or a
dead engine is a 5xx. Request bodies are decoded here with msgspec directly, not by the framework,
so malformed JSON and wrong types get the same shape and name the offending field.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from jaxserve.entrypoints.protocol import ErrorInfo, ErrorResponse
from jaxserve.sampling_params import ParamError

T = TypeVar("T")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    """Raised anywhere in a handler; the app turns it into the error response."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        fallback = "server_error" if self.status >= 500 else "invalid_request_error"
        kind = _TYPES.get(self.status, fallback)
        return ErrorResponse(ErrorInfo(self.message, kind, self.param, self.code))


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(message, status=400, param=param, code=code)


def from_param_error(exc: ParamError) -> APIError:
    """A refused value as a 400; the error carries its field and code."""
    return APIError(str(exc), status=400, param=exc.param, code=exc.code)


def decode_request(body: bytes, type_: type[T]) -> T:
    if not body.strip():
        raise bad_request("the request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        # msgspec says e.g. "Expected `float`, got `str` - at `$.temperature`"
        what, _, where = str(exc).partition(" - at `$")
        param = where.rstrip("`").lstrip(".") or None
        missing = re.match(r"Object missing required field `(.+)`", what)
        if missing:
            param = f"{param}.{missing.group(1)}" if param else missing.group(1)
        message = f"{param}: {what}" if param else what
        raise bad_request(message, param=param) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
