"""Every response's ``x-request-id``, and one ``jaxserve.access`` log line per request.

The id is the client's own ``X-Request-Id`` when it sent one (as vLLM does), else the body's
``request_id``, else a generated one; a completion's ``id`` is ``chatcmpl-<id>`` / ``cmpl-<id>``
with the same id, so the OpenAI SDK's ``response._request_id`` names the completion. The wrapper
sits around Litestar's whole handler, so unknown routes and refusals carry the header too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from litestar import Request

from jaxserve.entrypoints.errors import bad_request
from jaxserve.entrypoints.state import random_id
from jaxserve.outputs import RequestOutput

access_log = logging.getLogger("jaxserve.access")
_KEY = "jaxserve_request"


@dataclass
class RequestRecord:
    """What the access line reports; the handlers fill in the tokens as they learn them."""

    request_id: str
    from_client: bool  # the id came in the X-Request-Id header
    started: float  # time.monotonic() at arrival
    status: int = 0
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    first_token_at: float | None = None

    def observe(self, out: RequestOutput) -> None:
        """A RequestStream's observer: counts the tokens and notes when the first came."""
        new = sum(len(c.token_ids) for c in out.outputs)
        if new and self.first_token_at is None:
            self.first_token_at = time.monotonic()
        self.output_tokens = (self.output_tokens or 0) + new

    def line(self, method: str, path: str) -> str:
        parts = [method, path, str(self.status), f"request_id={self.request_id}"]
        if self.prompt_tokens is not None:
            parts.append(f"prompt_tokens={self.prompt_tokens}")
        if self.output_tokens is not None:
            parts.append(f"output_tokens={self.output_tokens}")
        if self.first_token_at is not None:
            parts.append(f"ttft={self.first_token_at - self.started:.3f}s")
        parts.append(f"total={time.monotonic() - self.started:.3f}s")
        return " ".join(parts)


def record_of(request: Request) -> RequestRecord:
    return request.scope["state"][_KEY]


def resolve_request_id(request: Request, body_id: str | None) -> str:
    """The id a completion is named by: the header's, else the body's, else the generated one
    (the body's length was checked against server.max_request_id_length with the body)."""
    if body_id and not (body_id.isascii() and body_id.isprintable()):
        # it goes out in the x-request-id header, which carries printable ASCII only
        raise bad_request("request_id must be printable ASCII", param="request_id")
    record = record_of(request)
    if body_id and not record.from_client:
        record.request_id = body_id
    return record.request_id


def _header_id(scope, max_length: int) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1").strip()
            return given if 0 < len(given) <= max_length else None
    return None


class RequestLog:
    """ASGI wrapper: the record in the scope's state, the header on the response, the line."""

    def __init__(self, app, enabled: bool, max_id_length: int):
        """max_id_length: a longer X-Request-Id header is replaced by a generated id."""
        self.app = app
        self.enabled = enabled
        self.max_id_length = max_id_length

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header_id(scope, self.max_id_length)
        record = RequestRecord(given or random_id(), given is not None, time.monotonic())
        scope.setdefault("state", {})[_KEY] = record
        logged = False

        def log_once() -> None:
            nonlocal logged
            if self.enabled and not logged:
                access_log.info("%s", record.line(scope["method"], scope["path"]))
            logged = True

        async def stamped(message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()),
                                      (b"x-request-id", record.request_id.encode("latin-1"))]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                log_once()

        try:
            await self.app(scope, receive, stamped)
        finally:
            log_once()  # the client left before the last byte
