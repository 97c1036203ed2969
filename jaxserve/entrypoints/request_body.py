"""A POST body, read and decoded under the server's limits: a JSON content type (or none, as
curl sends by default), a bounded size (the framework's 413) and a bounded nesting depth."""

from __future__ import annotations

from typing import TypeVar

from litestar import Request

from jaxserve.config import ServerConfig
from jaxserve.entrypoints.errors import APIError, decode_request

T = TypeVar("T")


def check_content_type(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and content_type != "application/json" and not content_type.endswith("+json"):
        raise APIError(f"Unsupported Content-Type `{content_type}`; send application/json",
                       status=415, code="unsupported_media_type")


async def read_request(request: Request, type_: type[T], limits: ServerConfig) -> T:
    check_content_type(request)
    return decode_request(await request.body(), type_, limits.max_nesting_depth)
