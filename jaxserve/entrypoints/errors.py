"""Every failure leaves the server as OpenAI's ``{"error": {message, type, param, code}}``.

A client's mistake is always a 4xx naming the field (``param``) when there is one; only a bug or a
dead engine is a 5xx. Request bodies are decoded here with msgspec directly, not by the framework,
so malformed JSON and wrong types get the same shape and name the offending field.
"""

from __future__ import annotations

import logging
import re
from typing import TypeVar

import msgspec

from jaxserve.entrypoints.protocol import ErrorInfo, ErrorResponse
from jaxserve.json_nesting import nesting_depth
from jaxserve.sampling_params import ParamError

log = logging.getLogger("jaxserve.server")
T = TypeVar("T")

_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 429: "rate_limit_error"}


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


# a \uD800-\uDBFF escape not followed by a low one, or a low one alone (an even run of
# backslashes before it, so it is an escape and not an escaped backslash)
_LONE_SURROGATE = re.compile(
    rb'(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F])'
    rb'|(?<!\\)(?:\\\\)*(?<![0-9a-fA-F]{4})\\u[dD][c-fC-F][0-9a-fA-F]{2}')


def decode_request(body: bytes, type_: type[T], max_depth: int = 128) -> T:
    """A client's JSON body as ``type_``; every way it can fail is a 400."""
    if not body.strip():
        raise bad_request("the request body is empty; expected a JSON object")
    depth = nesting_depth(body, max_depth)
    if depth > max_depth:
        raise bad_request(f"the request body nests {depth} levels deep; the limit is "
                          f"{max_depth} (server.max_nesting_depth)", code="nesting_too_deep")
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
        if _LONE_SURROGATE.search(body):  # msgspec reports it as "Input data was truncated"
            raise bad_request("the request body is not valid JSON: invalid Unicode, a lone "
                              "surrogate escape (\\ud800-\\udfff) in a string") from None
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the decoder meets is the input's fault
        log.warning("a request body failed to decode: %s: %s", type(exc).__name__, exc)
        raise bad_request(f"the request body could not be decoded: {type(exc).__name__}") from None
